//! The AVX2 GEMM (see [`super::gemm`]) for the 32-value block types dotted with Q8_0 (Q4_0,
//! Q5_0, Q8_0, IQ4_NL) or Q8_1 (Q4_1, Q5_1), for x86-64 CPUs without AVX-512 VNNI.
//!
//! The panel has the AVX-512 GEMM's shape (32 rows, two strips of 16 rows, one row per 32-bit
//! lane, four consecutive values per lane), so the driver in [`super::gemm`] is shared; the
//! microkernel reads each 16-row vector as two 256-bit halves of 8 rows. Per block and strip:
//! vectors 0-7 the block's values as bytes, vector 8 the rows' f32 scales, and for Q4_1 and
//! Q5_1 vector 9 their mins.
//!
//! AVX2 has no `vpdpbusd`: products come from `vpmaddubsw` (unsigned weight bytes times signed
//! activation bytes, adjacent pairs summed into saturating i16) and `vpmaddwd` by ones (pairs of
//! i16 into i32). No sum may saturate, so the values are stored so that the i16 sums stay
//! within range, and the i16 sums are widened after [`Layout::flush`] groups of four values:
//!
//! - Q4_0, Q4_1 (values 0..16, Q4_0's offset 8 paid back through the activations' block sums):
//!   a whole block (8 groups, |sum| <= 8 * 2 * 15 * 128 < 2^15) before widening;
//! - Q5_0, Q5_1 (values 0..32, offset 16 for Q5_0): 4 groups (4 * 2 * 31 * 128 < 2^15);
//! - Q8_0, IQ4_NL (signed values -128..128): stored signed, and multiplied as `|w| * (y *
//!   sign(w))` (`vpsignb`, as ggml does); one group (2 * 128 * 127 < 2^15; the activations are
//!   -127..=127).
//!
//! The integer block sums are therefore exactly the plain twin's, and the float steps are its
//! own (`sum += (d_w * d_y) * isum`, `+ m * s` for the types with a min, no fused multiply-add),
//! so the results equal [`super::plain`]'s bit for bit (tested in `tests.rs` with
//! `DSRUN_SIMD`-independent level arguments, so this AVX-512 machine runs them too).
//!
//! Every function here needs AVX2, FMA and F16C; the dispatcher calls them only after
//! detecting those.

// Per-token and per-half loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm::{Format, Lanes, OutPtr, RV, STRIP, TOK};
use super::{QuantizedActs, QK8_0};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::float::f16_to_f32;
use crate::tensor::quants::iq::{BlockIq4Nl, KVALUES_IQ4NL};
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tensor::{GgmlType, TensorView};

/// Rows per 256-bit half of a panel vector.
pub(super) const HALF: usize = STRIP / 2;

/// Panel vectors per block and strip: 8 of weights, 1 of scales (and 1 of mins).
const fn lanes(min: bool) -> usize {
    if min {
        10
    } else {
        9
    }
}

pub(super) fn format(ty: GgmlType) -> Option<Format> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => format_of::<BlockQ4_0>(),
        Q5_0 => format_of::<BlockQ5_0>(),
        Q8_0 => format_of::<BlockQ8_0>(),
        Iq4Nl => format_of::<BlockIq4Nl>(),
        Q4_1 => format_of::<BlockQ4_1>(),
        Q5_1 => format_of::<BlockQ5_1>(),
        _ => return None,
    })
}

fn format_of<B: Layout>() -> Format {
    Format {
        unit: QK8_0,
        lanes: lanes(B::HAS_MIN),
        pack: pack::<B>,
        prep: prep::<B>,
        run: run::<B>,
    }
}

/// How a 32-value block is laid out in the panel.
pub(super) trait Layout: crate::tensor::quants::Block {
    /// Added to every value (taken back through the activation sums).
    const OFFSET: i32;
    /// Whether the values are stored signed (multiplied through `vpsignb`).
    const SIGNED: bool;
    /// Groups of four values summed in i16 before widening (1, 2, 4 or 8).
    const FLUSH: usize;
    const HAS_MIN: bool = false;
    /// The 32 values (plus `OFFSET`) as bytes, the scale and the min.
    fn unpack(&self) -> ([u8; 32], f32, f32);
}

/// Low nibbles first, then high ones.
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    })
}

/// Nibbles plus bit j of `qh` as bit 4.
fn five_bits(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let low = nibbles(qs);
    std::array::from_fn(|j| low[j] | (((qh >> j) & 1) << 4) as u8)
}

impl Layout for BlockQ4_0 {
    const OFFSET: i32 = 8;
    const SIGNED: bool = false;
    const FLUSH: usize = 8;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (nibbles(&self.qs), f16_to_f32(self.d), 0.0)
    }
}

impl Layout for BlockQ4_1 {
    const OFFSET: i32 = 0;
    const SIGNED: bool = false;
    const FLUSH: usize = 8;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (nibbles(&self.qs), f16_to_f32(self.d), f16_to_f32(self.m))
    }
}

impl Layout for BlockQ5_0 {
    const OFFSET: i32 = 16;
    const SIGNED: bool = false;
    const FLUSH: usize = 4;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (five_bits(&self.qs, self.qh), f16_to_f32(self.d), 0.0)
    }
}

impl Layout for BlockQ5_1 {
    const OFFSET: i32 = 0;
    const SIGNED: bool = false;
    const FLUSH: usize = 4;
    const HAS_MIN: bool = true;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (
            five_bits(&self.qs, self.qh),
            f16_to_f32(self.d),
            f16_to_f32(self.m),
        )
    }
}

impl Layout for BlockQ8_0 {
    const OFFSET: i32 = 0;
    const SIGNED: bool = true;
    const FLUSH: usize = 1;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (self.qs, f16_to_f32(self.d), 0.0)
    }
}

impl Layout for BlockIq4Nl {
    const OFFSET: i32 = 0;
    const SIGNED: bool = true;
    const FLUSH: usize = 1;
    fn unpack(&self) -> ([u8; 32], f32, f32) {
        let v = nibbles(&self.qs).map(|n| KVALUES_IQ4NL[n as usize] as u8);
        (v, f16_to_f32(self.d), 0.0)
    }
}

/// Per token and block, the integer sum's start: `-OFFSET * sum(y)`.
fn prep<B: Layout>(acts: &QuantizedActs) -> Vec<i32> {
    acts.sums.iter().map(|&s| -B::OFFSET * s).collect()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack<B: Layout>(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    let nb = w.n_cols / QK8_0;
    let lanes = lanes(B::HAS_MIN);
    assert_eq!(panel.len(), nb * RV * lanes);
    let mut tmp = [[0u32; 10]; STRIP];
    for s in 0..RV {
        for b in 0..nb {
            for (l, t) in tmp.iter_mut().enumerate() {
                let r = r0 + s * STRIP + l;
                if r >= w.n_rows {
                    *t = [0; 10];
                    continue;
                }
                let (v, d, m) = as_blocks::<B>(w.row(r))[b].unpack();
                for g in 0..8 {
                    t[g] = u32::from_le_bytes([v[4 * g], v[4 * g + 1], v[4 * g + 2], v[4 * g + 3]]);
                }
                t[8] = d.to_bits();
                t[9] = m.to_bits();
            }
            let dst = &mut panel[(b * RV + s) * lanes..(b * RV + s + 1) * lanes];
            for (g, d) in dst.iter_mut().enumerate() {
                d.0 = std::array::from_fn(|l| tmp[l][g]);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<B: Layout>(
    panel: &[Lanes],
    acts: &QuantizedActs,
    corr: &[i32],
    out: OutPtr,
    r0: usize,
) {
    let (n_tok, k) = (acts.n_tok(), acts.k());
    let nb = k / QK8_0;
    assert_eq!(panel.len(), nb * RV * lanes(B::HAS_MIN));
    assert!(corr.len() == n_tok * nb && acts.d.len() == n_tok * nb);
    assert!(!B::HAS_MIN || acts.s.len() == n_tok * nb);
    assert!(acts.qs.len() == n_tok * k && r0 < out.m);
    let a = Acts {
        panel: panel.as_ptr(),
        qs: acts.qs.as_ptr(),
        d: acts.d.as_ptr(),
        corr: corr.as_ptr(),
        s: acts.s.as_ptr(),
        nb,
        k,
    };
    let mut t0 = 0;
    // SAFETY (all calls): the pointers cover (n_tok, ...) as asserted above, the tiles read
    // tokens t0..t0 + T <= n_tok only, and this function's target features are theirs.
    unsafe {
        while t0 + TOK <= n_tok {
            tile::<B, TOK>(&a, t0, out, r0);
            t0 += TOK;
        }
        match n_tok - t0 {
            1 => tile::<B, 1>(&a, t0, out, r0),
            2 => tile::<B, 2>(&a, t0, out, r0),
            3 => tile::<B, 3>(&a, t0, out, r0),
            _ => {}
        }
    }
}

/// The panel and the activations, as raw pointers for the microkernel.
struct Acts {
    panel: *const Lanes,
    /// (n_tok, k) quants.
    qs: *const i8,
    /// (n_tok, nb) scales.
    d: *const f32,
    /// (n_tok, nb) sum starts.
    corr: *const i32,
    /// (n_tok, nb) Q8_1's `s` (Q4_1, Q5_1 only).
    s: *const f32,
    nb: usize,
    k: usize,
}

/// The 256-bit half `h` of panel vector `v` at `p`.
#[inline(always)]
pub(super) unsafe fn half(p: *const Lanes, v: usize, h: usize) -> __m256i {
    // SAFETY: the caller's `p.add(v)` is a panel vector (64-byte aligned, 64 bytes).
    unsafe { _mm256_load_si256(p.add(v).cast::<__m256i>().add(h)) }
}

/// Broadcasts the 4 bytes at `p`.
#[inline(always)]
pub(super) unsafe fn bcast4<T>(p: *const T) -> __m256i {
    // SAFETY: the caller's pointer has 4 readable bytes; read_unaligned needs no alignment.
    unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// 32 rows x `T` tokens from `t0`, as two passes of 16 rows (two 8-row halves each).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<B: Layout, const T: usize>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let lanes = lanes(B::HAS_MIN);
    let ones = _mm256_set1_epi16(1);
    // SAFETY: see `run`; panel vectors are 64-byte aligned.
    unsafe {
        for v in 0..RV {
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for b in 0..a.nb {
                let p = a.panel.add((b * RV + v) * lanes);
                let mut s = [[_mm256_setzero_si256(); T]; 2];
                for t in 0..T {
                    let c = _mm256_set1_epi32(*a.corr.add((t0 + t) * a.nb + b));
                    s[0][t] = c;
                    s[1][t] = c;
                }
                let y = a.qs.add(t0 * a.k + QK8_0 * b);
                for g0 in (0..8).step_by(B::FLUSH) {
                    let mut s16 = [[_mm256_setzero_si256(); T]; 2];
                    for g in g0..g0 + B::FLUSH {
                        let w = [half(p, g, 0), half(p, g, 1)];
                        let wu = if B::SIGNED {
                            [_mm256_sign_epi8(w[0], w[0]), _mm256_sign_epi8(w[1], w[1])]
                        } else {
                            w
                        };
                        for t in 0..T {
                            let yb = bcast4(y.add(t * a.k + 4 * g));
                            for h in 0..2 {
                                let yy = if B::SIGNED {
                                    _mm256_sign_epi8(yb, w[h])
                                } else {
                                    yb
                                };
                                let prod = _mm256_maddubs_epi16(wu[h], yy);
                                s16[h][t] = _mm256_add_epi16(s16[h][t], prod);
                            }
                        }
                    }
                    for h in 0..2 {
                        for t in 0..T {
                            let wide = _mm256_madd_epi16(s16[h][t], ones);
                            s[h][t] = _mm256_add_epi32(s[h][t], wide);
                        }
                    }
                }
                for h in 0..2 {
                    let dw = _mm256_castsi256_ps(half(p, 8, h));
                    for t in 0..T {
                        let tb = (t0 + t) * a.nb + b;
                        let dd = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.add(tb)));
                        let mut x = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(s[h][t]));
                        if B::HAS_MIN {
                            let mw = _mm256_castsi256_ps(half(p, 9, h));
                            x = _mm256_add_ps(x, _mm256_mul_ps(mw, _mm256_set1_ps(*a.s.add(tb))));
                        }
                        acc[h][t] = _mm256_add_ps(acc[h][t], x);
                    }
                }
            }
            store(&acc, out, r0 + v * STRIP, t0);
        }
    }
}

/// Writes 16 rows' sums (two halves of 8, those below `out.m`) from row `r` of tokens
/// `t0..t0 + T`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn store<const T: usize>(
    acc: &[[__m256; T]; 2],
    out: OutPtr,
    r: usize,
    t0: usize,
) {
    for h in 0..2 {
        let r = r + h * HALF;
        if r >= out.m {
            break;
        }
        let n = (out.m - r).min(HALF);
        for t in 0..T {
            // SAFETY: elements (t0 + t, r..r + n) are inside the (n_tok, m) output (the
            // caller's tile is inside it, and n stops at m).
            unsafe {
                let dst = out.ptr.add((t0 + t) * out.m + r);
                if n == HALF {
                    _mm256_storeu_ps(dst, acc[h][t]);
                } else {
                    let mut tmp = [0.0f32; HALF];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), acc[h][t]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n);
                }
            }
        }
    }
}
