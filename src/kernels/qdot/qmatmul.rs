//! Matrix products through the quantized dot products: the same contract as
//! [`crate::kernels::matmul::matmul`], with the activations quantized once per call.
//!
//! Rows are split across rayon tasks. Within a task, tokens are taken in tiles of [`TOK_TILE`]
//! and each weight row is dotted with every token of the tile while it sits in L1, so a prompt
//! of n tokens streams the weights from memory once per task, not n times. Each output element
//! is one kernel call whatever the tiling, so the result does not depend on the thread count.

use rayon::prelude::*;

use super::{quantize_acts, selected_level, ActRow, Kernel, QuantizedActs, SimdLevel, MULTI};
use crate::tensor::TensorView;

/// Tokens per tile: their quantized rows (about 1.1 bytes per value) stay in L1 together with
/// the weight row being dotted.
const TOK_TILE: usize = 8;

/// `out[t][r] = W[r] · x[t]` for `n_tok` tokens: `x` is (n_tok, n_cols), `out` is
/// (n_tok, n_rows). Activations are quantized to the weight type's [`super::ActKind`] first.
pub fn qmatmul(w: &TensorView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    let acts = quantize_acts(w.ty, x, n_tok, w.n_cols);
    qmatmul_acts(w, &acts, out);
}

/// [`qmatmul`] with activations already quantized (to share them between matrices of the same
/// input, such as the q, k and v projections).
pub fn qmatmul_acts(w: &TensorView, acts: &QuantizedActs, out: &mut [f32]) {
    qmatmul_acts_at(selected_level(), w, acts, out);
}

/// Rows per rayon task: about eight tasks per thread, for balance, and not fewer than 4 rows.
fn rows_per_task(m: usize) -> usize {
    (m / (rayon::current_num_threads() * 8)).clamp(4, 256)
}

/// [`qmatmul_acts`] at a given SIMD level (which must be available).
pub fn qmatmul_acts_at(level: SimdLevel, w: &TensorView, acts: &QuantizedActs, out: &mut [f32]) {
    let (k, m, n_tok) = (w.n_cols, w.n_rows, acts.n_tok());
    assert_eq!(
        acts.k(),
        k,
        "{}: activations have {} values per row",
        w.name,
        acts.k()
    );
    assert_eq!(out.len(), n_tok * m, "{}: output shape", w.name);
    assert_eq!(
        w.ty.row_bytes(k as u64),
        Some(w.row_bytes as u64),
        "{}: row size",
        w.name
    );
    assert!(
        w.data.len() >= m * w.row_bytes,
        "{}: data too short",
        w.name
    );
    let kernel = Kernel::new(level, w.ty, acts);
    let rows: Vec<ActRow<'_>> = (0..n_tok).map(|t| acts.row(t)).collect();
    let rpt = rows_per_task(m);

    if n_tok == 1 {
        out.par_chunks_mut(rpt).enumerate().for_each(|(c, o)| {
            for (i, y) in o.iter_mut().enumerate() {
                *y = kernel.call(w.row(c * rpt + i), &rows[0]);
            }
        });
        return;
    }

    // (m, n_tok): each task owns whole rows.
    let mut by_row = vec![0.0f32; m * n_tok];
    by_row
        .par_chunks_mut(rpt * n_tok)
        .enumerate()
        .for_each(|(c, o)| {
            let r0 = c * rpt;
            for t0 in (0..n_tok).step_by(TOK_TILE) {
                let tile = &rows[t0..(t0 + TOK_TILE).min(n_tok)];
                for (i, o_row) in o.chunks_exact_mut(n_tok).enumerate() {
                    let w_row = w.row(r0 + i);
                    let o_tile = &mut o_row[t0..t0 + tile.len()];
                    let (a4, a_rest) = tile.as_chunks::<MULTI>();
                    let (o4, o_rest) = o_tile.as_chunks_mut::<MULTI>();
                    for (y, a) in o4.iter_mut().zip(a4) {
                        *y = kernel.call_multi(w_row, a);
                    }
                    for (y, a) in o_rest.iter_mut().zip(a_rest) {
                        *y = kernel.call(w_row, a);
                    }
                }
            }
        });
    for (r, vals) in by_row.chunks_exact(n_tok).enumerate() {
        for (t, &v) in vals.iter().enumerate() {
            out[t * m + r] = v;
        }
    }
}
