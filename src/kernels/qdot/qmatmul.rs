//! Matrix products through the quantized dot products: the same contract as
//! [`crate::kernels::matmul::matmul`], with the activations quantized once per call.
//!
//! Rows are split across rayon tasks. Within a task, tokens are taken in tiles of [`TOK_TILE`]
//! and each weight row is dotted with every token of the tile while it sits in L1, so a prompt
//! of n tokens streams the weights from memory once per task, not n times. Each output element
//! is one kernel call whatever the tiling, so the result does not depend on the thread count.
//!
//! On AVX-512 VNNI CPUs, products of [`super::gemm::MIN_TOK`] tokens or more of the types in
//! [`super::gemm`]'s table go through that GEMM instead (repacked panels, register tiles); its
//! results equal the plain kernels' bit for bit, again whatever the thread count.

use rayon::prelude::*;

use super::{gemm, quantize_acts, selected_level, ActRow, Kernel, QuantizedActs, SimdLevel, MULTI};
use crate::tensor::TensorView;

/// Tokens per tile: their quantized rows (about 1.1 bytes per value) stay in L1 together with
/// the weight row being dotted.
const TOK_TILE: usize = 16;

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

/// Products smaller than this many multiply-adds run on the calling thread: waking rayon's
/// workers and joining them costs more than such a product (the tiny MoE's 256 x 256 matrices,
/// about a hundred per decoded token, spent more time in rayon than in the kernels). Measured
/// (2026-11-29, `dsrun bench -n 128 -t 2 -r 3` on the tiny MoE Q8_0, machine under load, two
/// runs each): 490-507 t/s and 413-423 ms of CPU time before, 512-531 t/s and 397-410 ms after.
const PAR_MIN_MACS: usize = 1 << 18;

/// Rows per rayon task: about eight tasks per thread, for balance, and not fewer than 4 rows;
/// all rows in one task for a product under [`PAR_MIN_MACS`].
fn rows_per_task(m: usize, k: usize, n_tok: usize) -> usize {
    if m * k * n_tok < PAR_MIN_MACS {
        return m.max(1);
    }
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
    if n_tok >= gemm::MIN_TOK {
        if let Some(f) = gemm::format(level, w.ty) {
            gemm::gemm(f, w, acts, out);
            return;
        }
    }
    let rows: Vec<ActRow<'_>> = (0..n_tok).map(|t| acts.row(t)).collect();
    let rpt = rows_per_task(m, k, n_tok);
    let n_tasks = m.div_ceil(rpt);

    if n_tok == 1 {
        let task = |(c, o): (usize, &mut [f32])| {
            for (i, y) in o.iter_mut().enumerate() {
                *y = kernel.call(w.row(c * rpt + i), &rows[0]);
            }
        };
        if n_tasks == 1 {
            task((0, out));
        } else {
            out.par_chunks_mut(rpt).enumerate().for_each(task);
        }
        return;
    }

    // Each task owns the output columns r0..r0 + rpt of every token row and writes them in
    // place (a transpose after the fact, single-threaded, took a tenth of prompt time).
    let out_ptr = SharedOut(out.as_mut_ptr());
    let task = |c: usize| {
        let out_ptr = &out_ptr;
        let r0 = c * rpt;
        let r1 = (r0 + rpt).min(m);
        let mut vals = [0.0f32; TOK_TILE];
        for t0 in (0..n_tok).step_by(TOK_TILE) {
            let tile = &rows[t0..(t0 + TOK_TILE).min(n_tok)];
            for r in r0..r1 {
                let w_row = w.row(r);
                let o_tile = &mut vals[..tile.len()];
                let (a4, a_rest) = tile.as_chunks::<MULTI>();
                let (o4, o_rest) = o_tile.as_chunks_mut::<MULTI>();
                for (y, a) in o4.iter_mut().zip(a4) {
                    *y = kernel.call_multi(w_row, a);
                }
                for (y, a) in o_rest.iter_mut().zip(a_rest) {
                    *y = kernel.call(w_row, a);
                }
                for (i, &v) in o_tile.iter().enumerate() {
                    // SAFETY: (t0 + i, r) is inside `out` (asserted to be (n_tok, m) above),
                    // and column r belongs to this task alone.
                    unsafe { *out_ptr.0.add((t0 + i) * m + r) = v };
                }
            }
        }
    };
    if n_tasks == 1 {
        task(0);
    } else {
        (0..n_tasks).into_par_iter().for_each(task);
    }
}

/// The output matrix, shared by tasks that write disjoint columns of it.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements, and `out` outlives the parallel loop that uses it.
unsafe impl Sync for SharedOut {}
