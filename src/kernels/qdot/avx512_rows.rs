//! AVX-512 VNNI multi-row kernels for decode: [`ROWS`] consecutive weight rows dotted with one
//! activation row in one call, for Q4_0 and Q4_1.
//!
//! Why: decoding one token is one activation row against every weight row. `perf` on
//! SmolLM2-135M Q4_1 (one thread, 576-wide rows, 2026-11-29) put 87% of decode in the
//! single-row `dot32` kernels, and most of their samples on the block-scale gather (the first
//! touch of each row's cache lines). Here the four rows' loads and accumulator chains
//! interleave, the activation loads are shared, full groups' scales come from plain loads
//! instead of four gathers, the rows [`PREFETCH_CALLS`] calls ahead are prefetched (the
//! interleaved rows defeat the hardware prefetcher), and the four horizontal sums are one
//! transposing reduction.
//!
//! Each row sees exactly the operations of the single-row kernel (`avx512::dot32_n::<B, 1>`),
//! in an order that leaves every accumulator's sequence of additions unchanged, and the
//! reduction adds the same pairs of lanes as `_mm512_reduce_add_ps`, so every result equals
//! the single-row kernel's bit for bit (tested in `super::tests`): outputs do not change.
//!
//! Measured (AMD EPYC, AVX-512 VNNI, while four other engineers compiled: load 9 to 17, so CPU
//! time rather than wall time), `perf stat -e task-clock dsrun bench -m MODEL -p 0 -n 64 -r 2
//! -t 1` (load, warm-up, two runs), alternating with the binary before:
//!
//! | model | before | after | llama-bench, same command |
//! |---|--:|--:|--:|
//! | SmolLM2-135M Q4_1 | 1.43-1.49 s | 1.20-1.21 s | 1.00-1.01 s (it loads faster) |
//!
//! and `cargo test --release -p dsrun --lib rows_kernel_speed -- --ignored --nocapture` (one
//! pass over 96 MB of rows, best of 40): Q4_1 576-wide 13.1 GB/s single-row, 18.0-18.4 with
//! four rows. Tried and left out, each slower end to end: the same kernel for Q8_0 (SmolLM2's
//! output layer gained, Gemma-3-270m's 640-wide Q8_0 output lost 17% of CPU time), plain loads
//! of the scales in the single-row kernels (Gemma 2.6 s to 3.7 s), and four-row versions of the
//! Q4_K / Q6_K kernels (Qwen2.5-1.5B: equal without prefetch, 1.6x slower with it; with the
//! rows' super-blocks interleaved, 2.2x slower).
//!
//! Every function here needs AVX-512 F/BW/VL/VNNI plus AVX2, FMA and F16C; the dispatcher
//! calls them only after detecting those.

// Per-row loops (`for r in 0..R`) index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx512::{f16_lanes, gather_heads, group_mask, Pair, GROUP};
use super::{ActRow, DotRowsFn, QK8_0, ROWS};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1};
use crate::tensor::GgmlType;

/// The multi-row kernel for `ty`, if there is one.
pub(super) fn kernel_rows(ty: GgmlType) -> Option<DotRowsFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => dot32_rows::<BlockQ4_0, PREFETCH_CALLS>,
        Q4_1 => dot32_rows::<BlockQ4_1, PREFETCH_CALLS>,
        _ => return None,
    })
}

/// How many calls ahead [`prefetch_next`] reads: 4 (16 rows, 5.8 KB of SmolLM2's Q4_1 rows).
/// SmolLM2-135M Q4_1, one thread, CPU time of `dsrun bench -p 0 -n 64 -r 2 -t 1` (AMD EPYC,
/// load 9, 2026-11-29, an earlier version that also took the Q8_0 output layer and gathered the
/// scales): no prefetch 2.05 s, 1 call ahead 1.61 s, 2: 1.36 s, 4: 1.29 s, 8: 1.31 s; the
/// single-row kernels 1.41 s. The microbenchmark (module docs) agrees: 4 and 8 best.
const PREFETCH_CALLS: usize = 4;

/// Prefetches the `ROWS` rows `PREFETCH_CALLS` calls after the `ROWS` rows at `w` (`row_bytes`
/// each) into L1. Prefetches never fault, so addresses past the weights are harmless.
#[inline(always)]
unsafe fn prefetch_next<const CALLS: usize>(w: &[u8], row_bytes: usize) {
    if CALLS == 0 {
        return;
    }
    let next = w.as_ptr().wrapping_add(CALLS * ROWS * row_bytes);
    for off in (0..ROWS * row_bytes).step_by(64) {
        // SAFETY: a prefetch is a hint; it does not access memory architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off).cast()) };
    }
}

/// The horizontal sums of four vectors, each summed in `_mm512_reduce_add_ps`'s order
/// (lanes i + i+8, then i + i+4, i + i+2, i + i+1), so each equals that function's result
/// bit for bit; the adds of the four are shared in wide registers.
#[inline(always)]
unsafe fn reduce4(v: [__m512; 4]) -> [f32; 4] {
    unsafe {
        // Step 1: (a lo256 | b lo256) + (a hi256 | b hi256), and the same for c, d.
        let ab = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
        );
        let cd = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
        );
        // ab = (a0 a1 | b0 b1) in 128-bit lanes, where a0 is a's first 4 sums. Step 2:
        // (a0 | b0 | c0 | d0) + (a1 | b1 | c1 | d1).
        let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd);
        let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd);
        let s = _mm512_add_ps(lo, hi);
        // Steps 3 and 4 within each 128-bit lane: x0 + x2, x1 + x3, then the two.
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
        let mut out = [0.0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), s);
        [out[0], out[4], out[8], out[12]]
    }
}

/// The scales (and mins) of a group of blocks, as `Pair::scales` / `Pair::mins` give them: for
/// a full group from sixteen plain loads, else through the gather. With four gathers per group
/// (one per row) the kernel was no faster than the single-row one on SmolLM2 (2026-11-29).
/// Like `Pair::scales` / `Pair::mins` for Q4_0 and Q4_1, it reads the f16 scale (and min) from
/// each block's first 4 bytes, so only such types may be dispatched here.
#[inline(always)]
unsafe fn heads<B: Pair>(group: &[B], mask: u16) -> (__m512, __m512) {
    unsafe {
        let v = if mask == 0xffff {
            let p: *const u8 = group.as_ptr().cast();
            let size = std::mem::size_of::<B>();
            // SAFETY: `mask` 0xffff means `group` has 16 blocks (see `group_mask`), and 4 bytes
            // fit in any block; unaligned reads are allowed.
            let h = |i: usize| std::ptr::read_unaligned(p.add(i * size).cast::<i32>());
            _mm512_setr_epi32(
                h(0),
                h(1),
                h(2),
                h(3),
                h(4),
                h(5),
                h(6),
                h(7),
                h(8),
                h(9),
                h(10),
                h(11),
                h(12),
                h(13),
                h(14),
                h(15),
            )
        } else {
            gather_heads(group, mask)
        };
        let mins = if B::HAS_MIN {
            f16_lanes(_mm512_srli_epi32::<16>(v))
        } else {
            _mm512_setzero_ps()
        };
        (f16_lanes(v), mins)
    }
}

/// [`ROWS`] rows of a 32-value block type against one Q8_0 / Q8_1 row: per row exactly the
/// operations of `avx512::dot32_n::<B, 1>`. (No `array::from_fn` here: its closures do not
/// inherit the target features, and calls to them cost a third of the time.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot32_rows<B: Pair, const PF: usize>(
    w: &[u8],
    row_bytes: usize,
    a: &ActRow<'_>,
) -> [f32; ROWS] {
    assert_eq!(w.len(), ROWS * row_bytes, "dot32_rows: not {ROWS} rows");
    // The rows are contiguous: row r's blocks are blocks[r * n_blocks..][..n_blocks].
    let blocks = as_blocks::<B>(w);
    let n_blocks = blocks.len() / ROWS;
    assert!(a.qs.len() >= n_blocks * QK8_0 && a.d.len() >= n_blocks);
    assert!(a.sums.len() >= n_blocks && (!B::HAS_MIN || a.s.len() >= n_blocks));
    // SAFETY: this function's target features are the helper's.
    unsafe { prefetch_next::<PF>(w, row_bytes) };
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let mut acc_min = [_mm512_setzero_ps(); ROWS];
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for b0 in (0..n_blocks).step_by(GROUP) {
        let n = GROUP.min(n_blocks - b0);
        let mask = group_mask(n);
        // SAFETY (this block and below): as in `dot32_n`: masked loads read only the group's
        // blocks of each activation array (asserted long enough above), full loads read whole
        // pairs of blocks inside them.
        unsafe {
            let dy = _mm512_maskz_loadu_ps(mask, a.d.as_ptr().add(b0));
            let corr = if B::OFFSET != 0 {
                let sums = _mm512_maskz_loadu_epi32(mask, a.sums.as_ptr().add(b0));
                _mm512_cvtepi32_ps(_mm512_mullo_epi32(sums, _mm512_set1_epi32(-B::OFFSET)))
            } else {
                _mm512_setzero_ps()
            };
            let s_y = if B::HAS_MIN {
                _mm512_maskz_loadu_ps(mask, a.s.as_ptr().add(b0))
            } else {
                _mm512_setzero_ps()
            };
            let mut scales = [_mm512_setzero_ps(); ROWS];
            for r in 0..ROWS {
                let g = &blocks[r * n_blocks + b0..r * n_blocks + b0 + n];
                let (w_scales, mins) = heads(g, mask);
                scales[r] = _mm512_mul_ps(w_scales, dy);
                if B::OFFSET != 0 {
                    acc_min[r] = _mm512_fmadd_ps(scales[r], corr, acc_min[r]);
                }
                if B::HAS_MIN {
                    // In `dot32_n` this comes after the group's pairs, but into `acc_min`,
                    // which (OFFSET being 0 with a min) takes nothing else: the same result.
                    acc_min[r] = _mm512_fmadd_ps(mins, s_y, acc_min[r]);
                }
            }
            for j in 0..n.div_ceil(2) {
                let idx = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * j as i32));
                let full = 2 * j + 1 < n;
                let y_mask: u64 = if full { u64::MAX } else { u32::MAX as u64 };
                let y = _mm512_maskz_loadu_epi8(y_mask, a.qs.as_ptr().add((b0 + 2 * j) * QK8_0));
                let second = if full { 2 * j + 1 } else { 2 * j };
                for r in 0..ROWS {
                    let base = r * n_blocks + b0;
                    let wv = B::pair(&blocks[base + 2 * j], &blocks[base + second]);
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, y);
                    let s = _mm512_permutexvar_ps(idx, scales[r]);
                    acc[r] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[r]);
                }
            }
        }
    }
    let mut sums = [_mm512_setzero_ps(); ROWS];
    for r in 0..ROWS {
        sums[r] = _mm512_add_ps(acc[r], acc_min[r]);
    }
    // SAFETY: this function's target features are the helper's.
    unsafe { reduce4(sums) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared reduction equals `_mm512_reduce_add_ps` of each vector bit for bit, on values
    /// whose sums round differently in every order.
    #[test]
    fn reduce4_equals_reduce_add() {
        if !super::super::SimdLevel::Avx512Vnni.is_available() {
            return;
        }
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let m = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            m * [1e-3, 1.0, 1e3, 1e7][(s % 4) as usize]
        };
        for _ in 0..2000 {
            let v: [[f32; 16]; 4] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
            // SAFETY: AVX-512 F is available (checked above); the arrays hold 16 floats.
            unsafe {
                let z = v.map(|x| _mm512_loadu_ps(x.as_ptr()));
                let got = reduce4(z);
                for r in 0..4 {
                    assert_eq!(got[r].to_bits(), _mm512_reduce_add_ps(z[r]).to_bits());
                }
            }
        }
    }

    /// Not a check: CPU time of one pass over 96 MB of weight rows, single-row kernel against
    /// the multi-row one at several prefetch distances, best of 40 alternating passes (robust to
    /// other load on the machine). `cargo test --release -p dsrun --lib rows_kernel_speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn rows_kernel_speed() {
        use super::super::{quantize_acts, Kernel, SimdLevel};
        use crate::tensor::quants::legacy::BlockQ8_0;
        if !SimdLevel::Avx512Vnni.is_available() {
            return;
        }
        type RowsFn = unsafe fn(&[u8], usize, &ActRow<'_>) -> [f32; ROWS];
        for (ty, k, variants) in [
            (
                GgmlType::Q4_1,
                576,
                [
                    dot32_rows::<BlockQ4_1, 0> as RowsFn,
                    dot32_rows::<BlockQ4_1, 2>,
                    dot32_rows::<BlockQ4_1, 4>,
                    dot32_rows::<BlockQ4_1, 8>,
                ],
            ),
            (
                GgmlType::Q8_0,
                640,
                [
                    dot32_rows::<BlockQ8_0, 0> as RowsFn,
                    dot32_rows::<BlockQ8_0, 2>,
                    dot32_rows::<BlockQ8_0, 4>,
                    dot32_rows::<BlockQ8_0, 8>,
                ],
            ),
        ] {
            let rb = ty.row_bytes(k as u64).unwrap() as usize;
            let n_rows = (96 << 20) / rb / ROWS * ROWS;
            let w: Vec<u8> = (0..n_rows * rb).map(|i| (i * 7 + i / 3) as u8).collect();
            // Keep the scales small and finite.
            let mut w = w;
            let bs = ty.row_bytes(32).unwrap() as usize;
            for b in w.chunks_exact_mut(bs) {
                b[..4].copy_from_slice(&[0x00, 0x20, 0x00, 0x20]);
            }
            let x: Vec<f32> = (0..k).map(|i| ((i * 37) % 17) as f32 - 8.0).collect();
            let a = quantize_acts(ty, &x, 1, k);
            let row = a.row(0);
            let kernel = Kernel::new(SimdLevel::Avx512Vnni, ty, &a);
            let mut best = [f64::MAX; 5];
            let mut sink = 0.0f32;
            for _ in 0..40 {
                for v in 0..5 {
                    let t = std::time::Instant::now();
                    if v == 0 {
                        for r in 0..n_rows {
                            sink += kernel.call(&w[r * rb..(r + 1) * rb], &row);
                        }
                    } else {
                        for r in (0..n_rows).step_by(ROWS) {
                            // SAFETY: AVX-512 VNNI checked above; ROWS whole rows.
                            let o =
                                unsafe { variants[v - 1](&w[r * rb..(r + ROWS) * rb], rb, &row) };
                            sink += o[0];
                        }
                    }
                    best[v] = best[v].min(t.elapsed().as_secs_f64());
                }
            }
            let gbs = |s: f64| (n_rows * rb) as f64 / s / 1e9;
            eprintln!(
                "{ty} k={k}: single {:.2} GB/s; rows pf0 {:.2}, pf2 {:.2}, pf4 {:.2}, pf8 {:.2} ({sink})",
                gbs(best[0]),
                gbs(best[1]),
                gbs(best[2]),
                gbs(best[3]),
                gbs(best[4])
            );
        }
    }
}
