//! The AVX2 GEMM (see [`super::gemm`], [`super::avx2_gemm`]) for Q4_K and Q6_K, dotted with
//! Q8_K.
//!
//! Panel, per super-block and strip of 16 rows (one row per 32-bit lane, read as two halves
//! of 8 rows):
//!
//! - Q4_K (78 vectors): 0-63 the 256 values 0..16 in value order, four per lane; 64-71 the
//!   sub-block scales as an i16 pair (`sc`, `sc`); 72-75 the mins in i16 pairs (`m[2i]`,
//!   `m[2i + 1]`); 76 `d` and 77 `dmin` as f32. Per token, a sub-block's eight `vpmaddubsw`
//!   are summed in i16 (|sum| <= 8 * 2 * 15 * 128 < 2^15), then one `vpmaddwd` by the scale
//!   pair gives `sc * sum` in i32; the min term is four `vpmaddwd` of the min pairs with the
//!   activations' 32-value sums in pairs.
//! - Q6_K (89 vectors): 0-63 the unsigned values `q + 32` (0..64); 64-79 the sixteen i8
//!   scales as i16 pairs (`sc`, `sc`); 80-87 the scales in i16 pairs (`sc[2i]`, `sc[2i + 1]`);
//!   88 `d`. A 16-value sub-block's four `vpmaddubsw` are summed two by two in i16
//!   (|sum| <= 4 x 63 x 128 < 2^15), each pair of them times the scale by `vpmaddwd`; the -32
//!   of every value is paid back as `32 * sum(sc_j * bsum_j)`, eight `vpmaddwd` with Q8_K's
//!   16-value sums.
//!
//! The integers are exactly the plain twin's, and the float steps are its own
//! (`(d * dy) * isum - (dmin * dy) * summs`, added per super-block), so the results equal
//! [`super::plain`]'s bit for bit.
//!
//! Every function here needs AVX2, FMA and F16C; the dispatcher calls them only after
//! detecting those.

// Per-token and per-half loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2_gemm::{bcast4, half, store};
use super::avx512_gemm_k::{prep_q4k, Acts, Q4K_LANES, Q6K_LANES};
use super::gemm::{Format, Lanes, OutPtr, RV, STRIP, TOK};
use super::plain::k4_scales_mins_packed;
use super::{QuantizedActs, QK_K};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::float::f16_to_f32;
use crate::tensor::quants::k_quants::{BlockQ4K, BlockQ6K};
use crate::tensor::{GgmlType, TensorView};

pub(super) fn format(ty: GgmlType) -> Option<Format> {
    Some(match ty {
        GgmlType::Q4K => Format {
            unit: QK_K,
            lanes: Q4K_LANES,
            pack: pack_q4k,
            prep: prep_q4k,
            run: run_k::<false>,
        },
        GgmlType::Q6K => Format {
            unit: QK_K,
            lanes: Q6K_LANES,
            pack: pack_q6k,
            prep: |_| Vec::new(),
            run: run_k::<true>,
        },
        _ => return None,
    })
}

/// Two i16 as one lane.
fn pair(lo: i32, hi: i32) -> u32 {
    lo as u16 as u32 | (hi as u16 as u32) << 16
}

/// Fills the (n_sb, RV, LANES) panel with rows `r0..r0 + PANEL` of `w` (zeros past the last
/// row), each row's super-block unpacked by `unpack`.
#[inline(always)]
fn pack_rows<const LANES: usize>(
    w: &TensorView<'_>,
    r0: usize,
    panel: &mut [Lanes],
    unpack: impl Fn(&[u8], &mut [u32; LANES]),
) {
    let n_sb = w.n_cols / QK_K;
    let size = w.ty.type_size().expect("a block type");
    assert_eq!(panel.len(), n_sb * RV * LANES);
    let mut tmp = [[0u32; LANES]; STRIP];
    for s in 0..RV {
        for i in 0..n_sb {
            for (l, row_tmp) in tmp.iter_mut().enumerate() {
                let r = r0 + s * STRIP + l;
                if r < w.n_rows {
                    unpack(&w.row(r)[i * size..(i + 1) * size], row_tmp);
                } else {
                    *row_tmp = [0; LANES];
                }
            }
            let dst = &mut panel[(i * RV + s) * LANES..(i * RV + s + 1) * LANES];
            for (g, d) in dst.iter_mut().enumerate() {
                d.0 = std::array::from_fn(|l| tmp[l][g]);
            }
        }
    }
}

/// Four value bytes as one lane.
fn lane(v: impl Fn(usize) -> u8, g: usize) -> u32 {
    u32::from_le_bytes([v(4 * g), v(4 * g + 1), v(4 * g + 2), v(4 * g + 3)])
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q4k(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    pack_rows::<Q4K_LANES>(w, r0, panel, |blk, out| {
        let b = &as_blocks::<BlockQ4K>(blk)[0];
        // Value 64c + l (l < 32): the low nibble of qs[32c + l]; 64c + 32 + l: its high one.
        let value = |v: usize| {
            let (c, l) = (v / 64, v % 64);
            let byte = b.qs[32 * c + l % 32];
            if l < 32 {
                byte & 0x0f
            } else {
                byte >> 4
            }
        };
        for g in 0..64 {
            out[g] = lane(value, g);
        }
        let (sc, m) = k4_scales_mins_packed(&b.scales);
        for j in 0..8 {
            out[64 + j] = pair(sc[j] as i32, sc[j] as i32);
        }
        for p in 0..4 {
            out[72 + p] = pair(m[2 * p] as i32, m[2 * p + 1] as i32);
        }
        out[76] = f16_to_f32(b.d).to_bits();
        out[77] = f16_to_f32(b.dmin).to_bits();
    });
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q6k(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    pack_rows::<Q6K_LANES>(w, r0, panel, |blk, out| {
        let b = &as_blocks::<BlockQ6K>(blk)[0];
        // Value 128h + 32s + l: a nibble of ql[64h + 32(s % 2) + l] (high for s >= 2), plus
        // bits 2s..2s+2 of qh[32h + l] as bits 4-5.
        let value = |v: usize| {
            let (h, s, l) = (v / 128, (v / 32) % 4, v % 32);
            let byte = b.ql[64 * h + 32 * (s % 2) + l];
            let low = if s < 2 { byte & 0x0f } else { byte >> 4 };
            low | ((b.qh[32 * h + l] >> (2 * s)) & 3) << 4
        };
        for g in 0..64 {
            out[g] = lane(value, g);
        }
        let sc = b.scales.map(|v| v as i8 as i32);
        for j in 0..16 {
            out[64 + j] = pair(sc[j], sc[j]);
        }
        for p in 0..8 {
            out[80 + p] = pair(sc[2 * p], sc[2 * p + 1]);
        }
        out[88] = f16_to_f32(b.d).to_bits();
    });
}

/// Q4_K (`Q6 = false`) or Q6_K.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_k<const Q6: bool>(
    panel: &[Lanes],
    acts: &QuantizedActs,
    extra: &[i32],
    out: OutPtr,
    r0: usize,
) {
    let n_tok = acts.n_tok();
    let a = Acts::new::<Q6>(panel, acts, extra, out, r0);
    let mut t0 = 0;
    // SAFETY (all calls): the pointers cover (n_tok, ...) as `Acts::new` asserted, the tiles read
    // tokens t0..t0 + T <= n_tok only, and this function's target features are theirs.
    unsafe {
        let tile_fn = |t0: usize, n: usize| match (Q6, n) {
            (false, 1) => tile_q4k::<1>(&a, t0, out, r0),
            (false, 2) => tile_q4k::<2>(&a, t0, out, r0),
            (false, 3) => tile_q4k::<3>(&a, t0, out, r0),
            (false, _) => tile_q4k::<TOK>(&a, t0, out, r0),
            (true, 1) => tile_q6k::<1>(&a, t0, out, r0),
            (true, 2) => tile_q6k::<2>(&a, t0, out, r0),
            (true, 3) => tile_q6k::<3>(&a, t0, out, r0),
            (true, _) => tile_q6k::<TOK>(&a, t0, out, r0),
        };
        while t0 + TOK <= n_tok {
            tile_fn(t0, TOK);
            t0 += TOK;
        }
        if t0 < n_tok {
            tile_fn(t0, n_tok - t0);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_q4k<const T: usize>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let pairs = a.sums.cast::<i32>();
    // SAFETY: see `run_k`; panel vectors are 64-byte aligned.
    unsafe {
        for v in 0..RV {
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for i in 0..a.n_sb {
                let p = a.panel.add((i * RV + v) * Q4K_LANES);
                let y = a.qs.add(t0 * a.k + QK_K * i);
                let mut isum = [[_mm256_setzero_si256(); T]; 2];
                for j in 0..8 {
                    let mut s = [[_mm256_setzero_si256(); T]; 2];
                    for g in 0..8 {
                        let w = [half(p, 8 * j + g, 0), half(p, 8 * j + g, 1)];
                        for t in 0..T {
                            let yb = bcast4(y.add(t * a.k + 32 * j + 4 * g));
                            for h in 0..2 {
                                let prod = _mm256_maddubs_epi16(w[h], yb);
                                s[h][t] = _mm256_add_epi16(s[h][t], prod);
                            }
                        }
                    }
                    for h in 0..2 {
                        let sc = half(p, 64 + j, h);
                        for t in 0..T {
                            let x = _mm256_madd_epi16(s[h][t], sc);
                            isum[h][t] = _mm256_add_epi32(isum[h][t], x);
                        }
                    }
                }
                for h in 0..2 {
                    let d = _mm256_castsi256_ps(half(p, 76, h));
                    let dmin = _mm256_castsi256_ps(half(p, 77, h));
                    for t in 0..T {
                        let tb = (t0 + t) * a.n_sb + i;
                        let mut summ = _mm256_setzero_si256();
                        for q in 0..4 {
                            let x = _mm256_madd_epi16(
                                half(p, 72 + q, h),
                                bcast4(pairs.add(4 * tb + q)),
                            );
                            summ = _mm256_add_epi32(summ, x);
                        }
                        let dy = _mm256_set1_ps(*a.d.add(tb));
                        let x = _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum[h][t]));
                        let m = _mm256_mul_ps(_mm256_mul_ps(dmin, dy), _mm256_cvtepi32_ps(summ));
                        acc[h][t] = _mm256_add_ps(acc[h][t], _mm256_sub_ps(x, m));
                    }
                }
            }
            store(&acc, out, r0 + v * STRIP, t0);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_q6k<const T: usize>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let bsums = a.sums.cast::<i16>();
    // SAFETY: see `run_k`; panel vectors are 64-byte aligned.
    unsafe {
        for v in 0..RV {
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for i in 0..a.n_sb {
                let p = a.panel.add((i * RV + v) * Q6K_LANES);
                let y = a.qs.add(t0 * a.k + QK_K * i);
                let mut isum = [[_mm256_setzero_si256(); T]; 2];
                for j in 0..16 {
                    for g0 in [0, 2] {
                        let mut s = [[_mm256_setzero_si256(); T]; 2];
                        for g in g0..g0 + 2 {
                            let w = [half(p, 4 * j + g, 0), half(p, 4 * j + g, 1)];
                            for t in 0..T {
                                let yb = bcast4(y.add(t * a.k + 16 * j + 4 * g));
                                for h in 0..2 {
                                    let prod = _mm256_maddubs_epi16(w[h], yb);
                                    s[h][t] = _mm256_add_epi16(s[h][t], prod);
                                }
                            }
                        }
                        for h in 0..2 {
                            let sc = half(p, 64 + j, h);
                            for t in 0..T {
                                let x = _mm256_madd_epi16(s[h][t], sc);
                                isum[h][t] = _mm256_add_epi32(isum[h][t], x);
                            }
                        }
                    }
                }
                for h in 0..2 {
                    let d = _mm256_castsi256_ps(half(p, 88, h));
                    for t in 0..T {
                        let bs = bsums.add((t0 + t) * (a.k / 16) + 16 * i);
                        let mut off = _mm256_setzero_si256();
                        for q in 0..8 {
                            let x = _mm256_madd_epi16(half(p, 80 + q, h), bcast4(bs.add(2 * q)));
                            off = _mm256_add_epi32(off, x);
                        }
                        let isum = _mm256_sub_epi32(isum[h][t], _mm256_slli_epi32::<5>(off));
                        let dy = _mm256_set1_ps(*a.d.add((t0 + t) * a.n_sb + i));
                        let x = _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum));
                        acc[h][t] = _mm256_add_ps(acc[h][t], x);
                    }
                }
            }
            store(&acc, out, r0 + v * STRIP, t0);
        }
    }
}
