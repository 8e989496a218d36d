//! Prompt-sized matrix products on AVX-512 VNNI and on AVX2: weights repacked per task into
//! panels of 32 rows whose bytes interleave the rows, then multiplied by register tiles of 32
//! rows x 4 tokens.
//!
//! The row kernels of [`super::qmatmul`] dot one weight row with up to eight tokens at a time,
//! so every 32 weights cost a decode, a horizontal layout and a float step per token. Here a
//! task first unpacks 32 rows into a panel (16 rows per 512-bit vector, each lane holding four
//! consecutive values of its row, weights made unsigned by an offset), once for the whole
//! prompt, then walks the tokens: four activation bytes of a token are broadcast to every lane
//! and one `vpdpbusd` adds 64 products into 16 rows' sums. Each microkernel step does two
//! weight loads and eight `vpdpbusd` for 2 x 16 rows and 4 tokens; the block scales are applied
//! per lane at the end of each block.
//!
//! Each lane computes its row and token with the plain twin's arithmetic ([`super::plain`]):
//! the same exact i32 block sums (the offsets paid back through the activations' block sums),
//! then `sum += (d_w * d_a) * isum` per block in block order (and the k-quants' min term), with
//! no fused multiply-add. So the results equal the plain kernels' bit for bit, whatever the
//! tiling or the thread count (tested in `tests.rs`); they differ from the AVX-512 row kernels'
//! (which sum 16 lanes of blocks at the end) by float rounding only. Products of fewer than
//! [`min_tok`] tokens (decoding; 16, or 4 for AVX2's 32-value blocks) keep the row kernels:
//! there the panel would cost more than it saves.
//!
//! | weights            | panel per block (per 16 rows)                            | file               |
//! |--------------------|----------------------------------------------------------|--------------------|
//! | Q4_0 Q5_0 Q8_0 IQ4_NL | 8 weight vectors, scales                              | `avx512_gemm.rs`   |
//! | Q4_1 Q5_1          | 8 weight vectors, scales, mins                           | `avx512_gemm.rs`   |
//! | Q4_K               | 64 weight vectors, 8 sub-block scales, mins in pairs, d, dmin | `avx512_gemm_k.rs` |
//! | Q6_K               | 64 weight vectors, 16 sub-block scales, scales in pairs, d | `avx512_gemm_k.rs` |
//!
//! The AVX2 GEMM (`avx2_gemm.rs`, `avx2_gemm_k.rs`; CPUs without AVX-512, or `DSRUN_SIMD=avx2`)
//! uses panels of the same shape, each 16-row vector read as two 256-bit halves of 8 rows, and
//! `vpmaddubsw` + `vpmaddwd` where AVX-512 has `vpdpbusd` (the values stored so that no i16
//! sum can saturate: see `avx2_gemm.rs`); its results equal the plain kernels' bit for bit too.
//! Measured (2026-11-29, same machine under load, CPU time of `DSRUN_SIMD=avx2 /usr/bin/time
//! dsrun bench -m MODEL -p 512 -n 0 -r 1 -t 1`, before = the AVX2 row kernels at commit
//! 2e6441a): SmolLM2-135M Q4_1 8.48 s -> 1.83 s user, gemma-3-270m Q4_K_M 5.38 s -> 1.63 s.
//!
//! Measured (2026-11-29, the 2-core AMD EPYC with AVX-512 VNNI, under a load average of 15-20
//! from other builds, so as CPU time: `perf stat -e task-clock dsrun bench -m MODEL -p 512 -n 0
//! -t 1 -r 1`, model load, warm-up and one run, before = commit 1d17596, after = this GEMM with
//! the AVX-512 activation quantizers, grouped attention and the vector GeGLU): SmolLM2-135M
//! Q4_1 2.90-2.94 s -> 1.16-1.19 s, gemma-3-270m Q4_K_M 2.67-2.74 s -> 0.96-0.99 s,
//! Qwen2.5-Coder-1.5B Q4_K_M (pp256) 9.54 s -> 3.77-3.94 s, tiny Qwen3-MoE Q8_0 0.32 s ->
//! 0.16 s. In `perf record` of gemma3's pp512 the panel packing is about 2% of the time, and
//! Qwen's Q4_K packing about 4% (it reads the weights from memory, which the row kernels did
//! too).
//!
//! Memory: a panel is unpacked per task into a buffer of its own (32 rows at about 1.2 bytes
//! per weight: 26 KiB for a row of 640, 360 KiB for 8960), so nothing is added to the model's
//! resident size.

use super::{QuantizedActs, SimdLevel};
use crate::tensor::{GgmlType, TensorView};

/// Rows per 512-bit vector of a panel.
pub(super) const STRIP: usize = 16;
/// Strips per panel (and per microkernel tile).
pub(super) const RV: usize = 2;
/// Rows per panel.
pub(super) const PANEL: usize = STRIP * RV;
/// Tokens per microkernel tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const TOK: usize = 4;

/// Every GEMM takes products of this many tokens or more ([`min_tok`] gives each its own
/// threshold, at most this).
pub const MIN_TOK: usize = 16;

/// The fewest tokens for which [`super::qmatmul_acts_at`] at `level` sends a product of `ty`
/// through the GEMM rather than the row kernels: where the GEMM was faster, products of 768 x
/// 2048 (a 30B-A3B expert) on one thread, minimum of 60 runs each (2026-11-29):
///
/// - AVX-512 VNNI: from 4 tokens (Q4_K 0.07 ms vs the row kernels' 0.10, Q6_K 0.08 vs 0.09,
///   Q8_0 0.08 vs 0.17, Q4_0 0.07 vs 0.18; at 14 tokens Q4_K 0.11 vs 0.27, Q8_0 0.12 vs 0.37;
///   at 2 tokens Q4_K and Q6_K are slower). The 30B-A3B shape's pp512 took 3.1 s of CPU
///   instead of 3.7-4.2 s. The GEMM follows the plain kernels' float order, the row kernels
///   their own, so an expert's rows can differ in the last bits with the number of tokens
///   routed to it (as in llama.cpp); `tests/gpu_forward.rs` compares decoded rows with the
///   CPU's decoded rows for that reason.
/// - AVX2, the 32-value blocks: from 4 tokens (Q8_0 0.21 vs 0.31 ms, Q4_1 0.41 vs 0.41; at 8
///   tokens 0.25 vs 0.61 and 0.45 vs 0.81). Q4_K and Q6_K: from [`MIN_TOK`], their panels
///   being unpacked by scalar code (at 12 tokens Q4_K 0.45 vs 0.34 ms, Q6_K 0.85 vs 0.48).
///
/// This is the one place that decides; the batched experts ([`crate::model::moe`]) and the
/// tests go through it.
pub fn min_tok(level: SimdLevel, ty: GgmlType) -> usize {
    match (level, ty) {
        (SimdLevel::Avx2, GgmlType::Q4K | GgmlType::Q6K) => MIN_TOK,
        (SimdLevel::Avx2 | SimdLevel::Avx512Vnni, _) => 4,
        _ => MIN_TOK,
    }
}

/// One 512-bit vector of a panel: 16 lanes of 32 bits (four u8 weights, an i32 scale, a pair
/// of i16 or an f32, depending on the slot).
#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
pub(super) struct Lanes(pub [u32; STRIP]);

/// The output matrix (n_tok, m), shared by tasks that write disjoint rows of each token.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct OutPtr {
    pub ptr: *mut f32,
    /// Output row length (the weight's row count).
    pub m: usize,
}
// SAFETY: tasks write disjoint elements, and the output outlives the parallel loop.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// How one weight type is packed and multiplied.
#[derive(Clone, Copy)]
pub(super) struct Format {
    /// Values per unit (block or super-block).
    pub unit: usize,
    /// Panel vectors per unit and strip.
    pub lanes: usize,
    /// Fills `panel` ((n_units, RV, lanes)) with rows `r0..r0 + PANEL` of `w` (zero past the
    /// last row).
    pub pack: unsafe fn(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]),
    /// Per-call integers the microkernels read per token and unit (see each format).
    pub prep: fn(acts: &QuantizedActs) -> Vec<i32>,
    /// Multiplies a packed panel (rows `r0..`) by every token into `out`.
    pub run:
        unsafe fn(panel: &[Lanes], acts: &QuantizedActs, extra: &[i32], out: OutPtr, r0: usize),
}

/// The panel format for `ty` at `level`, if the level has a GEMM for it.
pub(super) fn format(level: SimdLevel, ty: GgmlType) -> Option<Format> {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni => {
            super::avx512_gemm::format(ty).or_else(|| super::avx512_gemm_k::format(ty))
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => super::avx2_gemm::format(ty).or_else(|| super::avx2_gemm_k::format(ty)),
        _ => {
            let _ = ty;
            None
        }
    }
}

/// Whether [`super::qmatmul_acts_at`] at `level` runs `n_tok` tokens of `ty` through the GEMM
/// (whose results then equal the plain kernels') rather than the level's row kernels.
pub fn uses_gemm(level: SimdLevel, ty: GgmlType, n_tok: usize) -> bool {
    n_tok >= min_tok(level, ty) && format(level, ty).is_some()
}

/// `out[t][r] = W[r] · acts[t]` through panels: rows are split into tasks of whole panels
/// across the threads of [`crate::pool`]; each task packs one panel at a time and multiplies it by every
/// token. The caller checked the shapes.
pub(super) fn gemm(f: Format, w: &TensorView<'_>, acts: &QuantizedActs, out: &mut [f32]) {
    let m = w.n_rows;
    assert!(w.n_cols.is_multiple_of(f.unit) && acts.k() == w.n_cols);
    assert_eq!(out.len(), acts.n_tok() * m);
    let extra = (f.prep)(acts);
    let n_panels = m.div_ceil(PANEL);
    let panel_len = w.n_cols / f.unit * RV * f.lanes;
    // About four tasks per thread, for balance.
    let per_task = n_panels.div_ceil(crate::pool::threads() * 4).max(1);
    let n_tasks = n_panels.div_ceil(per_task);
    let out = OutPtr {
        ptr: out.as_mut_ptr(),
        m,
    };
    let task = |c: usize| {
        let mut panel = vec![Lanes::default(); panel_len];
        for p in c * per_task..((c + 1) * per_task).min(n_panels) {
            let r0 = p * PANEL;
            // SAFETY: `format` returned these functions only for a level the CPU has (checked
            // by the caller's `Kernel::new`); the panel has the format's length; the output is
            // (n_tok, m) and this task alone writes rows r0..r0 + PANEL of it.
            unsafe {
                (f.pack)(w, r0, &mut panel);
                (f.run)(&panel, acts, &extra, out, r0);
            }
        }
    };
    if n_tasks == 1 {
        task(0);
    } else {
        crate::pool::run(n_tasks, &task);
    }
}
