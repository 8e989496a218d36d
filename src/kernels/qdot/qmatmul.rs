//! Matrix products through the quantized dot products: the same contract as
//! [`crate::kernels::matmul::matmul`], with the activations quantized once per call.
//!
//! Rows are split into tasks for [`crate::pool`]. Within a task, tokens are taken in tiles of [`TOK_TILE`]
//! and each weight row is dotted with every token of the tile while it sits in L1, so a prompt
//! of n tokens streams the weights from memory once per task, not n times. Each output element
//! is one kernel call whatever the tiling, so the result does not depend on the thread count.
//!
//! On AVX-512 VNNI and AVX2 CPUs, products over all of [`super::gemm::min_tok`] tokens or more
//! of the types in [`super::gemm`]'s table go through that GEMM instead (repacked panels,
//! register tiles); its results equal the plain kernels' bit for bit, again whatever the
//! thread count.

use super::{
    gemm, quantize_acts, selected_level, ActRow, Kernel, QuantizedActs, SimdLevel, MULTI, ROWS,
};
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

/// Work below this many multiply-adds, over all products of a batch, runs on the calling thread.
/// Through rayon the bar was 2^18 (the tiny MoE's 256 x 256 matrices, about a hundred per
/// decoded token, spent more time in rayon than in the kernels); the spinning pool of
/// [`crate::pool`] hands out work in well under a microsecond, so the bar is lower: a 256 x 256
/// product is split in four. 2^15 is chosen for a quiet machine and not yet tuned by wall-clock
/// runs: on 2026-11-29 the machine stayed at load 7 to 21, where any split loses (tiny MoE,
/// `-n 128 -t 2`: about 1000 t/s with everything on one thread, 550 to 970 with 2^15).
const PAR_MIN_MACS: usize = 1 << 15;

/// Least work per task, in multiply-adds (about a microsecond with the int8 kernels): finer
/// tasks cost more in the shared task counter than they gain in balance.
const TASK_MIN_MACS: usize = 1 << 14;

/// Which activation rows a product takes.
#[derive(Debug, Clone, Copy)]
pub enum Tokens<'a> {
    /// Every row, in order.
    All,
    /// Rows `start..end`.
    Range(usize, usize),
    /// The listed rows (the tokens routed to one expert), in the list's order.
    List(&'a [usize]),
}

/// One product of a batch: `out[i][r] = W[r] · acts[tokens[i]]`, `out` (n_selected, n_rows).
pub struct Product<'a> {
    pub w: TensorView<'a>,
    pub acts: &'a QuantizedActs,
    pub tokens: Tokens<'a>,
    pub out: &'a mut [f32],
}

/// [`qmatmul_acts`] at a given SIMD level (which must be available).
pub fn qmatmul_acts_at(level: SimdLevel, w: &TensorView, acts: &QuantizedActs, out: &mut [f32]) {
    qmatmul_batch_at(
        level,
        &mut [Product {
            w: *w,
            acts,
            tokens: Tokens::All,
            out,
        }],
    );
}

/// Several independent products as one parallel job (the projections of one input, the
/// selected experts of a layer): tasks are row ranges of every product, so both cores stay busy
/// even when each product alone is too small to split. Results equal those of the products
/// one by one, bit for bit, whatever the thread count.
pub fn qmatmul_batch(products: &mut [Product<'_>]) {
    qmatmul_batch_at(selected_level(), products)
}

/// A product checked and ready: its kernel, activation rows and output.
struct Prepared<'a> {
    w: TensorView<'a>,
    kernel: Kernel,
    rows: Vec<ActRow<'a>>,
    out: SharedOut,
    /// Rows of `w` per task, and the index of this product's first task.
    rpt: usize,
    first_task: usize,
}

/// [`qmatmul_batch`] at a given SIMD level (which must be available).
pub fn qmatmul_batch_at(level: SimdLevel, products: &mut [Product<'_>]) {
    let mut prepared: Vec<Prepared<'_>> = Vec::with_capacity(products.len());
    for p in products.iter_mut() {
        // A prompt-sized product goes through the GEMM on its own (it splits its panels over
        // the pool itself; a subset of the tokens, such as an expert's, is copied out first);
        // the rest share one job below.
        let n_sel = match p.tokens {
            Tokens::All => p.acts.n_tok(),
            Tokens::Range(a, b) => b.saturating_sub(a),
            Tokens::List(l) => l.len(),
        };
        if n_sel >= gemm::min_tok(level, p.w.ty) {
            if let Some(f) = gemm::format(level, p.w.ty) {
                // Checks the shapes, and that the CPU has `level` (`Kernel::new`).
                drop(prepare(level, p));
                match p.tokens {
                    Tokens::All => gemm::gemm(f, &p.w, p.acts, p.out),
                    Tokens::Range(a, b) => gemm::gemm(f, &p.w, &p.acts.select(a..b), p.out),
                    Tokens::List(l) => {
                        gemm::gemm(f, &p.w, &p.acts.select(l.iter().copied()), p.out)
                    }
                }
                continue;
            }
        }
        prepared.push(prepare(level, p));
    }
    let work = |p: &Prepared<'_>| p.w.n_rows * p.w.n_cols * p.rows.len();
    let total: usize = prepared.iter().map(work).sum();
    let threads = crate::pool::threads();
    let serial = threads == 1 || total < PAR_MIN_MACS;
    let task_macs = (total / (threads * 8)).max(TASK_MIN_MACS);
    let mut n_tasks = 0;
    for p in &mut prepared {
        let m = p.w.n_rows;
        let per_row = (p.w.n_cols * p.rows.len()).max(1);
        p.rpt = if serial {
            m.max(1)
        } else {
            // Whole groups of ROWS rows for the decode kernels.
            task_macs
                .div_ceil(per_row)
                .clamp(4, 256)
                .next_multiple_of(ROWS)
                .min(m.max(1))
        };
        p.first_task = n_tasks;
        n_tasks += m.div_ceil(p.rpt);
    }
    let task = |i: usize| {
        let j = prepared.partition_point(|p| p.first_task <= i) - 1;
        let p = &prepared[j];
        let r0 = (i - p.first_task) * p.rpt;
        rows_task(p, r0, (r0 + p.rpt).min(p.w.n_rows));
    };
    if serial {
        (0..n_tasks).for_each(task);
    } else {
        crate::pool::run(n_tasks, &task);
    }
}

fn prepare<'a>(level: SimdLevel, p: &'a mut Product<'_>) -> Prepared<'a> {
    let (w, acts) = (p.w, p.acts);
    let (k, m) = (w.n_cols, w.n_rows);
    assert_eq!(
        acts.k(),
        k,
        "{}: activations have {} values per row",
        w.name,
        acts.k()
    );
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
    let rows: Vec<ActRow<'a>> = match p.tokens {
        Tokens::All => (0..acts.n_tok()).map(|t| acts.row(t)).collect(),
        Tokens::Range(a, b) => (a..b).map(|t| acts.row(t)).collect(),
        Tokens::List(list) => list.iter().map(|&t| acts.row(t)).collect(),
    };
    assert_eq!(p.out.len(), rows.len() * m, "{}: output shape", w.name);
    Prepared {
        w,
        kernel: Kernel::new(level, w.ty, acts),
        rows,
        out: SharedOut(p.out.as_mut_ptr()),
        rpt: 0,
        first_task: 0,
    }
}

/// Rows `r0..r1` of one product, for all its tokens. Each task owns output columns r0..r1 of
/// every token row and writes them in place (a transpose after the fact, single-threaded, took a
/// tenth of prompt time).
fn rows_task(p: &Prepared<'_>, r0: usize, r1: usize) {
    let (w, kernel, rows, m) = (&p.w, &p.kernel, &p.rows, p.w.n_rows);
    let out = &p.out;
    if rows.len() == 1 {
        // Decode: ROWS rows per call where there is a multi-row kernel (equal results).
        let mut r0 = r0;
        if kernel.has_rows() {
            let rb = w.row_bytes;
            while r0 + ROWS <= r1 {
                let vals = kernel.call_rows(&w.data[r0 * rb..(r0 + ROWS) * rb], rb, &rows[0]);
                for (i, v) in vals.into_iter().enumerate() {
                    // SAFETY: as below.
                    unsafe { *out.0.add(r0 + i) = v };
                }
                r0 += ROWS;
            }
        }
        for r in r0..r1 {
            let v = kernel.call(w.row(r), &rows[0]);
            // SAFETY: r < m, inside `out` (asserted to be (n_tok, m) in `prepare`), and column
            // r belongs to this task alone.
            unsafe { *out.0.add(r) = v };
        }
        return;
    }
    let mut vals = [0.0f32; TOK_TILE];
    for t0 in (0..rows.len()).step_by(TOK_TILE) {
        let tile = &rows[t0..(t0 + TOK_TILE).min(rows.len())];
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
                // SAFETY: (t0 + i, r) is inside `out` (asserted to be (n_tok, m) in
                // `prepare`), and column r belongs to this task alone.
                unsafe { *out.0.add((t0 + i) * m + r) = v };
            }
        }
    }
}

/// An output matrix, shared by tasks that write disjoint columns of it.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements, and every output outlives the parallel job that uses
// it (the products are borrowed for the whole of `qmatmul_batch_at`).
unsafe impl Sync for SharedOut {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::qdot::{quantize_acts, vec_dot_at};
    use crate::rng::Rng;
    use crate::tensor::GgmlType;

    /// Products over all, a range of, and a list of the activation rows, in one batch, equal
    /// each element's single dot product (the plain one where the GEMM runs) bit for bit, with 1 to 3 threads and below and above
    /// the serial bar.
    #[test]
    fn batch_equals_dot_products() {
        let mut rng = Rng::new(5);
        for (ty, k) in [(GgmlType::Q8_0, 96), (GgmlType::Q4_1, 256)] {
            let n_tok = 21;
            let x = rng.vec(n_tok * k, 1.0);
            let acts = quantize_acts(ty, &x, n_tok, k);
            for m in [3, 40, 300] {
                let wf = rng.vec(m * k, 1.0);
                let row_bytes = ty.row_bytes(k as u64).unwrap() as usize;
                let mut wb = vec![0u8; m * row_bytes];
                crate::tensor::quants::quantize(ty, &wf, &mut wb).unwrap();
                let w = TensorView {
                    name: "w",
                    ty,
                    n_cols: k,
                    n_rows: m,
                    row_bytes,
                    data: &wb,
                };
                let list = [
                    20, 3, 3, 0, 7, 11, 12, 13, 14, 15, 16, 2, 1, 5, 9, 19, 18, 4,
                ];
                let sel: [Vec<usize>; 4] = [
                    (0..n_tok).collect(),
                    (4..9).collect(),
                    list.to_vec(),
                    vec![6],
                ];
                for threads in [1, 2, 3] {
                    let rp = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut outs: Vec<Vec<f32>> =
                        sel.iter().map(|s| vec![f32::NAN; s.len() * m]).collect();
                    let [o0, o1, o2, o3] = &mut outs[..] else {
                        unreachable!()
                    };
                    let mut products = [
                        Product {
                            w,
                            acts: &acts,
                            tokens: Tokens::All,
                            out: o0,
                        },
                        Product {
                            w,
                            acts: &acts,
                            tokens: Tokens::Range(4, 9),
                            out: o1,
                        },
                        Product {
                            w,
                            acts: &acts,
                            tokens: Tokens::List(&list),
                            out: o2,
                        },
                        Product {
                            w,
                            acts: &acts,
                            tokens: Tokens::List(&[6]),
                            out: o3,
                        },
                    ];
                    rp.install(|| qmatmul_batch(&mut products));
                    for (s, out) in sel.iter().zip(&outs) {
                        // A product of 16 tokens or more may go through the GEMM, whose
                        // results are the plain kernels'.
                        let level = match selected_level() {
                            l if super::super::uses_gemm(l, ty, s.len()) => SimdLevel::Plain,
                            l => l,
                        };
                        for (i, &t) in s.iter().enumerate() {
                            for r in 0..m {
                                let want = vec_dot_at(level, ty, w.row(r), &acts, t);
                                assert_eq!(out[i * m + r], want, "{ty} m={m} t={t} r={r}");
                            }
                        }
                    }
                }
            }
        }
    }
}
