//! RoPE rotations of the windowed path: a query or key turned to a position, and the inverse.

use crate::kernels::rope::RopeParams;

/// Rotates every head of `x` back from position `pos` (the inverse of `RopeParams::apply`,
/// with the same angles).
pub fn unrope(rope: &RopeParams, x: &mut [f32], head_dim: usize, pos: usize) {
    rope.unapply(x, head_dim, pos);
}

/// `x` (every head) turned to position `pos`: the one call that rotates queries, and the
/// reference path's keys.
pub(super) fn rotated(rope: &RopeParams, x: &[f32], head_dim: usize, pos: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    rope.apply(&mut y, head_dim, pos);
    y
}
