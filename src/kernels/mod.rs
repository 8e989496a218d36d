//! Plain reference kernels over f32 activations: the obvious loops, used by the reference forward
//! pass and as the twins that every fast kernel is tested against.

pub mod activation;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod softmax;
