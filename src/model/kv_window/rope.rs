//! RoPE rotations of the windowed path: a query or key turned to a position, and the inverse.

use crate::kernels::rope::{RopeKind, RopeParams};

/// Rotates every head of `x` back from position `pos` (the inverse of `RopeParams::apply`,
/// with the same angles).
pub fn unrope(rope: &RopeParams, x: &mut [f32], head_dim: usize, pos: usize) {
    let half = rope.n_rot / 2;
    let theta_scale = rope.freq_base.powf(-2.0 / rope.n_rot as f32);
    let mut theta = pos as f32;
    let mut cs = Vec::with_capacity(half);
    for _ in 0..half {
        let t = theta * rope.freq_scale;
        cs.push((t.cos(), t.sin()));
        theta *= theta_scale;
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match rope.kind {
                RopeKind::Norm => (2 * i, 2 * i + 1),
                RopeKind::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c + x1 * s;
            head[b] = x1 * c - x0 * s;
        }
    }
}

/// `x` (every head) turned to position `pos`: the one call that rotates queries, and the
/// reference path's keys.
pub(super) fn rotated(rope: &RopeParams, x: &[f32], head_dim: usize, pos: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    rope.apply(&mut y, head_dim, pos);
    y
}
