//! The AVX-512 VNNI GEMM (see [`super::gemm`]) for the 32-value block types dotted with Q8_0
//! (Q4_0, Q5_0, Q8_0, IQ4_NL) or Q8_1 (Q4_1, Q5_1).
//!
//! Panel, per block and strip of 16 rows: vectors 0-7 hold the block's weights plus the
//! type's offset ([`Pair::OFFSET`]) as unsigned bytes, vector `g` holding values 4g..4g + 4 of
//! every row (one row per 32-bit lane); vector 8 holds the rows' f32 scales, and for Q4_1 and
//! Q5_1 vector 9 their mins (`sum += (d_w * d_y) * isum + m * s`, `s` from Q8_1). Per token and
//! block the integer sum starts at `-OFFSET * sum(y)` (the per-call `prep` array), so after
//! eight `vpdpbusd` each lane holds exactly the plain twin's `isum`.
//!
//! Every function here needs AVX-512 F/BW/VL/VNNI plus AVX2, FMA and F16C; the dispatcher
//! calls them only after detecting those.

// Per-token and per-strip loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx512::Pair;
use super::avx512_gemm_k::transpose;
use super::gemm::{Format, Lanes, OutPtr, PANEL, RV, STRIP, TOK};
use super::{QuantizedActs, QK8_0};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::float::f16_to_f32;
use crate::tensor::quants::iq::BlockIq4Nl;
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tensor::{GgmlType, TensorView};

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

fn format_of<B: Block32>() -> Format {
    Format {
        unit: QK8_0,
        lanes: lanes(B::HAS_MIN),
        pack: pack::<B>,
        prep: prep::<B>,
        run: run::<B>,
    }
}

/// A 32-value block with one f16 scale (and, with [`Pair::HAS_MIN`], an f16 min).
pub(super) trait Block32: Pair {
    fn d(&self) -> [u8; 2];
    fn m(&self) -> [u8; 2] {
        [0; 2]
    }
}

macro_rules! block32 {
    ($($t:ty),*) => {$(
        impl Block32 for $t {
            fn d(&self) -> [u8; 2] {
                self.d
            }
        }
    )*};
}
block32!(BlockQ4_0, BlockQ5_0, BlockQ8_0, BlockIq4Nl);

macro_rules! block32_min {
    ($($t:ty),*) => {$(
        impl Block32 for $t {
            fn d(&self) -> [u8; 2] {
                self.d
            }
            fn m(&self) -> [u8; 2] {
                self.m
            }
        }
    )*};
}
block32_min!(BlockQ4_1, BlockQ5_1);

/// Per token and block, the integer sum's start: `-OFFSET * sum(y)`.
fn prep<B: Block32>(acts: &QuantizedActs) -> Vec<i32> {
    acts.sums.iter().map(|&s| -B::OFFSET * s).collect()
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack<B: Block32>(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    let nb = w.n_cols / QK8_0;
    let lanes = lanes(B::HAS_MIN);
    assert_eq!(panel.len(), nb * RV * lanes);
    // Per row of the strip: two blocks' weights (16 dwords), their two scales, two mins.
    let mut tmp = [[0u32; 20]; STRIP];
    let mut cols = [Lanes::default(); 20];
    for s in 0..RV {
        for b in (0..nb).step_by(2) {
            // An odd last block is paired with itself and only its first half kept.
            let b1 = (b + 1).min(nb - 1);
            for (l, t) in tmp.iter_mut().enumerate() {
                let r = r0 + s * STRIP + l;
                if r >= w.n_rows {
                    *t = [0; 20];
                    continue;
                }
                let blocks = as_blocks::<B>(w.row(r));
                let (x, y) = (&blocks[b], &blocks[b1]);
                // SAFETY: this function's target features are the helper's; 64 bytes written.
                unsafe { _mm512_storeu_si512(t.as_mut_ptr().cast(), B::pair(x, y)) };
                t[16] = f16_to_f32(x.d()).to_bits();
                t[17] = f16_to_f32(y.d()).to_bits();
                t[18] = f16_to_f32(x.m()).to_bits();
                t[19] = f16_to_f32(y.m()).to_bits();
            }
            // SAFETY: this function's target features include AVX-512 F.
            unsafe { transpose(&tmp, &mut cols) };
            for (h, bb) in (b..=b1).enumerate() {
                let dst = &mut panel[(bb * RV + s) * lanes..(bb * RV + s + 1) * lanes];
                dst[..8].copy_from_slice(&cols[8 * h..8 * h + 8]);
                dst[8] = cols[16 + h];
                if B::HAS_MIN {
                    dst[9] = cols[18 + h];
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<B: Block32>(
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
    // SAFETY: the pointers cover (n_tok, ...) as asserted above, and this function's target
    // features are the callee's.
    unsafe {
        if B::HAS_MIN {
            tiles::<true>(&a, n_tok, out, r0);
        } else {
            tiles::<false>(&a, n_tok, out, r0);
        }
    }
}

/// Every token, [`TOK`] at a time, then the rest.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tiles<const MIN: bool>(a: &Acts, n_tok: usize, out: OutPtr, r0: usize) {
    let mut t0 = 0;
    // SAFETY (all calls): the tiles read tokens t0..t0 + T <= n_tok only (the caller's
    // pointers cover n_tok tokens), and this function's target features are theirs.
    unsafe {
        while t0 + TOK <= n_tok {
            tile::<TOK, MIN>(a, t0, out, r0);
            t0 += TOK;
        }
        match n_tok - t0 {
            1 => tile::<1, MIN>(a, t0, out, r0),
            2 => tile::<2, MIN>(a, t0, out, r0),
            3 => tile::<3, MIN>(a, t0, out, r0),
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

/// 32 rows x `T` tokens from `t0`: each block's sums start at the offsets' share, take eight
/// `vpdpbusd` per (strip, token), then `acc += (d_w * d_y) * isum` (`+ m * s` with `MIN`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn tile<const T: usize, const MIN: bool>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let lanes = lanes(MIN);
    let mut acc = [[_mm512_setzero_ps(); T]; RV];
    // SAFETY: see `run`; panel vectors are 64-byte aligned.
    unsafe {
        for b in 0..a.nb {
            let p = a.panel.add(b * RV * lanes);
            let mut s = [[_mm512_setzero_si512(); T]; RV];
            for t in 0..T {
                let c = _mm512_set1_epi32(*a.corr.add((t0 + t) * a.nb + b));
                for v in 0..RV {
                    s[v][t] = c;
                }
            }
            let y = a.qs.add(t0 * a.k + QK8_0 * b);
            for g in 0..8 {
                let mut wv = [_mm512_setzero_si512(); RV];
                for v in 0..RV {
                    wv[v] = _mm512_load_si512(p.add(v * lanes + g).cast());
                }
                for t in 0..T {
                    let yt = y.add(t * a.k + 4 * g).cast::<i32>().read_unaligned();
                    let yb = _mm512_set1_epi32(yt);
                    for v in 0..RV {
                        s[v][t] = _mm512_dpbusd_epi32(s[v][t], wv[v], yb);
                    }
                }
            }
            for v in 0..RV {
                let dw = _mm512_load_ps(p.add(v * lanes + 8).cast());
                for t in 0..T {
                    let dy = _mm512_set1_ps(*a.d.add((t0 + t) * a.nb + b));
                    let dd = _mm512_mul_ps(dw, dy);
                    let mut x = _mm512_mul_ps(dd, _mm512_cvtepi32_ps(s[v][t]));
                    if MIN {
                        let mw = _mm512_load_ps(p.add(v * lanes + 9).cast());
                        let sy = _mm512_set1_ps(*a.s.add((t0 + t) * a.nb + b));
                        x = _mm512_add_ps(x, _mm512_mul_ps(mw, sy));
                    }
                    acc[v][t] = _mm512_add_ps(acc[v][t], x);
                }
            }
        }
        store(&acc, out, r0, t0);
    }
}

/// Writes a tile's sums to rows `r0..r0 + 32` (those below `out.m`) of tokens `t0..t0 + T`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn store<const T: usize>(
    acc: &[[__m512; T]; RV],
    out: OutPtr,
    r0: usize,
    t0: usize,
) {
    const { assert!(PANEL == RV * STRIP) };
    for v in 0..RV {
        let r = r0 + v * STRIP;
        if r >= out.m {
            break;
        }
        let mask = if out.m - r >= STRIP {
            u16::MAX
        } else {
            ((1u32 << (out.m - r)) - 1) as u16
        };
        for t in 0..T {
            // SAFETY: element (t0 + t, r) is inside the (n_tok, m) output (the caller's tile
            // is inside it), and the mask keeps the store to rows below m.
            unsafe { _mm512_mask_storeu_ps(out.ptr.add((t0 + t) * out.m + r), mask, acc[v][t]) };
        }
    }
}
