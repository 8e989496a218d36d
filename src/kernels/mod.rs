//! Plain reference kernels over f32 activations: the obvious loops, used by the reference forward
//! pass and as the twins that every fast kernel is tested against.

pub mod activation;
pub mod attention;
pub mod matmul;
pub mod norm;
pub mod qdot;
pub mod rope;
pub mod softmax;
pub mod softmax_lanes;

use crate::tensor::TensorView;
use std::sync::OnceLock;

/// Whether `DSRUN_REFERENCE=1` asks for the plain f32 matrix products (decode each weight row
/// to f32, f32 dot) instead of the quantized-activation kernels: for checking one against the
/// other end to end.
pub(crate) fn reference_matmul() -> bool {
    static REF: OnceLock<bool> = OnceLock::new();
    *REF.get_or_init(|| std::env::var("DSRUN_REFERENCE").is_ok_and(|v| v == "1"))
}

/// The matrix product the forward pass uses: `out[t][r] = W[r] · x[t]`, `x` (n_tok, n_cols),
/// `out` (n_tok, n_rows). By default the quantized kernels of [`qdot`] (activations quantized
/// to 8 bits as ggml does, SIMD chosen at run time); the f32 reference with `DSRUN_REFERENCE=1`.
pub fn linear(w: &TensorView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    if reference_matmul() {
        matmul::matmul(w, x, n_tok, out)
    } else {
        qdot::qmatmul(w, x, n_tok, out)
    }
}

/// [`linear`] for several matrices of the same input `x` (n_tok, n_cols), such as the q, k and
/// v projections: `x` is quantized once per activation kind rather than once per matrix, and
/// the products run as one parallel job. Each output equals [`linear`]'s bit for bit.
pub fn linear_many(x: &[f32], n_tok: usize, products: &mut [(&TensorView, &mut [f32])]) {
    if reference_matmul() {
        for (w, out) in products.iter_mut() {
            matmul::matmul(w, x, n_tok, out);
        }
        return;
    }
    let mut acts: Vec<qdot::QuantizedActs> = Vec::new();
    for (w, _) in products.iter() {
        if !acts.iter().any(|a| a.kind() == qdot::act_kind(w.ty)) {
            acts.push(qdot::quantize_acts(w.ty, x, n_tok, w.n_cols));
        }
    }
    let mut batch: Vec<qdot::Product<'_>> = products
        .iter_mut()
        .map(|(w, out)| qdot::Product {
            w: **w,
            acts: acts
                .iter()
                .find(|a| a.kind() == qdot::act_kind(w.ty))
                .expect("quantized above"),
            tokens: qdot::Tokens::All,
            out,
        })
        .collect();
    qdot::qmatmul_batch(&mut batch);
}
