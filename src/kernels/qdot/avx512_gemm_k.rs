//! The AVX-512 VNNI GEMM (see [`super::gemm`]) for Q4_K and Q6_K, dotted with Q8_K.
//!
//! Panel, per super-block and strip of 16 rows (one row per 32-bit lane):
//!
//! - Q4_K (78 vectors): 0-63 the 256 unsigned values in value order, four per lane (sub-block
//!   `j` is vectors 8j..8j + 8); 64-71 the sub-block scales as i32; 72-75 the mins in i16 pairs
//!   (`m[2i]`, `m[2i + 1]`); 76 `d` and 77 `dmin` as f32. Per token, sub-block sums come from
//!   eight `vpdpbusd`, are multiplied by their scale (`vpmulld`) and added; the min term is four
//!   `vpdpwssd` of the min pairs with the activations' 32-value sums in pairs (the `prep`
//!   array).
//! - Q6_K (89 vectors): 0-63 the unsigned values `q + 32`; 64-79 the sixteen i8 scales as i32;
//!   80-87 the scales in i16 pairs; 88 `d`. The -32 of every value is paid back as
//!   `32 * sum(sc_j * bsum_j)`, eight `vpdpwssd` with Q8_K's own 16-value sums.
//!
//! The integers are exactly the plain twin's, and the float steps are its own
//! (`(d * dy) * isum - (dmin * dy) * summs`, added per super-block).
//!
//! Every function here needs AVX-512 F/BW/VL/VNNI plus AVX2, FMA and F16C; the dispatcher
//! calls them only after detecting those.

// Per-token and per-strip loops index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::load256;
use super::avx512_gemm::store;
use super::gemm::{Format, Lanes, OutPtr, RV, STRIP, TOK};
use super::plain::k4_scales_mins_packed;
use super::{QuantizedActs, QK_K};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::float::f16_to_f32;
use crate::tensor::quants::k_quants::{BlockQ4K, BlockQ6K};
use crate::tensor::{GgmlType, TensorView};

pub(super) const Q4K_LANES: usize = 78;
pub(super) const Q6K_LANES: usize = 89;

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

/// Per token and super-block, the four pairs of 32-value activation sums
/// (`bsums[2j] + bsums[2j + 1]` for j = 2i, 2i + 1) as i16 pairs in an i32.
pub(super) fn prep_q4k(acts: &QuantizedActs) -> Vec<i32> {
    acts.bsums
        .chunks_exact(4)
        .map(|s| {
            let lo = (s[0] as i32 + s[1] as i32) as u16 as u32;
            let hi = (s[2] as i32 + s[3] as i32) as u16 as u32;
            (lo | hi << 16) as i32
        })
        .collect()
}

/// Fills the (n_sb, RV, LANES) panel with rows `r0..r0 + PANEL` of `w` (zeros past the last
/// row): each super-block of 16 rows is unpacked row by row by `unpack`, then written out one
/// whole vector (16 rows) at a time.
///
/// # Safety
/// The CPU must have AVX-512 F ([`transpose`]).
#[inline(always)]
unsafe fn pack_rows<const LANES: usize>(
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
            // SAFETY: the caller's CPU has AVX-512 F.
            unsafe { transpose(&tmp, dst) };
        }
    }
}

/// `dst[g]` lane `l` = `tmp[l][g]` for `g < N`: sixteen columns at a time, each a 16 x 16
/// transpose in registers (a scalar loop of `N x 16` moves took most of the packing time).
/// Tested through the GEMM tests (every panel goes through it) and `transpose_matches_scalar`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose<const N: usize>(tmp: &[[u32; N]; STRIP], dst: &mut [Lanes]) {
    assert!(dst.len() >= N);
    for c in (0..N).step_by(STRIP) {
        let n = (N - c).min(STRIP);
        let mask = (u32::MAX >> (32 - n)) as u16;
        // SAFETY: the masked loads read columns c..c + n < N of each row; the stores write
        // dst[c..c + n], inside `dst` as asserted; `Lanes` is 64-byte aligned.
        unsafe {
            let rows: [__m512i; STRIP] = std::array::from_fn(|l| {
                _mm512_maskz_loadu_epi32(mask, tmp[l].as_ptr().add(c).cast())
            });
            let cols = transpose16(rows);
            for g in 0..n {
                _mm512_store_si512(dst[c + g].0.as_mut_ptr().cast(), cols[g]);
            }
        }
    }
}

/// The 16 x 16 transpose of 32-bit elements: `out[g]` element `l` = `r[l]` element `g`.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16(r: [__m512i; STRIP]) -> [__m512i; STRIP] {
    // Within each 128-bit lane k: t[2i] = r[2i].0 r[2i+1].0 r[2i].1 r[2i+1].1, t[2i+1] the
    // elements 2 and 3 likewise.
    let t: [__m512i; STRIP] = std::array::from_fn(|x| {
        let (a, b) = (r[x & !1], r[x | 1]);
        if x % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4i + j] lane k = element 4k + j of rows 4i..4i + 4.
    let u: [__m512i; STRIP] = std::array::from_fn(|x| {
        let (i, j) = (x / 4, x % 4);
        let (a, b) = (t[4 * i + j / 2], t[4 * i + 2 + j / 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // out[4k + j] = lane k of u[j], u[4 + j], u[8 + j], u[12 + j].
    let mut out = [_mm512_setzero_si512(); STRIP];
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let x0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let x1 = _mm512_shuffle_i32x4::<0xee>(a, b);
        let y0 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let y1 = _mm512_shuffle_i32x4::<0xee>(c, d);
        out[j] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        out[4 + j] = _mm512_shuffle_i32x4::<0xdd>(x0, y0);
        out[8 + j] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(x1, y1);
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack_q4k(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    let unpack = |blk: &[u8], out: &mut [u32; Q4K_LANES]| {
        // SAFETY: the enclosing function's target features are the helper's.
        unsafe { unpack_q4k(&as_blocks::<BlockQ4K>(blk)[0], out) }
    };
    // SAFETY: this function's target features include AVX-512 F.
    unsafe { pack_rows::<Q4K_LANES>(w, r0, panel, unpack) };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack_q6k(w: &TensorView<'_>, r0: usize, panel: &mut [Lanes]) {
    let unpack = |blk: &[u8], out: &mut [u32; Q6K_LANES]| {
        // SAFETY: the enclosing function's target features are the helper's.
        unsafe { unpack_q6k(&as_blocks::<BlockQ6K>(blk)[0], out) }
    };
    // SAFETY: this function's target features include AVX-512 F.
    unsafe { pack_rows::<Q6K_LANES>(w, r0, panel, unpack) };
}

/// One row's Q4_K super-block as its panel lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack_q4k(b: &BlockQ4K, out: &mut [u32; Q4K_LANES]) {
    for (c, q) in b.qs.as_chunks::<32>().0.iter().enumerate() {
        // SAFETY: the enclosing function's target features are the helpers'; 16 dwords
        // written from 16c < 64.
        unsafe {
            let bits = load256(q);
            let z =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bits), _mm256_srli_epi16::<4>(bits));
            let z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * c).cast(), z);
        }
    }
    let (sc, m) = k4_scales_mins_packed(&b.scales);
    for j in 0..8 {
        out[64 + j] = sc[j] as u32;
    }
    for p in 0..4 {
        out[72 + p] = m[2 * p] as u32 | (m[2 * p + 1] as u32) << 16;
    }
    out[76] = f16_to_f32(b.d).to_bits();
    out[77] = f16_to_f32(b.dmin).to_bits();
}

/// One row's Q6_K super-block as its panel lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack_q6k(b: &BlockQ6K, out: &mut [u32; Q6K_LANES]) {
    let ql = b.ql.as_chunks::<32>().0;
    let qh = b.qh.as_chunks::<32>().0;
    for h in 0..2 {
        // SAFETY: the enclosing function's target features are the helpers'; 16 dwords
        // written from 32h and 32h + 16 < 64.
        unsafe {
            // Values 128h + 32s + l: nibbles of ql (low for s < 2), bits 2s..2s+2 of qh.
            let lo = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(load256(&ql[2 * h])),
                load256(&ql[2 * h + 1]),
            );
            let hb = load256(&qh[h]);
            let hh =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hb), _mm256_srli_epi16::<2>(hb));
            let (m4, m_hi) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
            let q01 = _mm512_or_si512(
                _mm512_and_si512(lo, m4),
                _mm512_and_si512(_mm512_slli_epi16::<4>(hh), m_hi),
            );
            let q23 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(lo), m4),
                _mm512_and_si512(hh, m_hi),
            );
            _mm512_storeu_si512(out.as_mut_ptr().add(32 * h).cast(), q01);
            _mm512_storeu_si512(out.as_mut_ptr().add(32 * h + 16).cast(), q23);
        }
    }
    let sc = b.scales.map(|v| v as i8);
    for j in 0..16 {
        out[64 + j] = sc[j] as i32 as u32;
    }
    for p in 0..8 {
        out[80 + p] = sc[2 * p] as u16 as u32 | (sc[2 * p + 1] as u16 as u32) << 16;
    }
    out[88] = f16_to_f32(b.d).to_bits();
}

/// The panel and the activations, as raw pointers for the microkernels (AVX-512 and AVX2).
pub(super) struct Acts {
    pub panel: *const Lanes,
    /// (n_tok, k) quants.
    pub qs: *const i8,
    /// (n_tok, n_sb) scales.
    pub d: *const f32,
    /// Q4_K: (n_tok, n_sb, 4) pairs of 32-value sums; Q6_K: (n_tok, k / 16) 16-value sums.
    pub sums: *const u8,
    pub n_sb: usize,
    pub k: usize,
}

impl Acts {
    /// Checks the shapes a Q4_K (`Q6 = false`) or Q6_K tile reads and takes their pointers.
    pub(super) fn new<const Q6: bool>(
        panel: &[Lanes],
        acts: &QuantizedActs,
        extra: &[i32],
        out: OutPtr,
        r0: usize,
    ) -> Acts {
        let (n_tok, k) = (acts.n_tok(), acts.k());
        let n_sb = k / QK_K;
        let lanes = if Q6 { Q6K_LANES } else { Q4K_LANES };
        assert_eq!(panel.len(), n_sb * RV * lanes);
        assert!(acts.qs.len() == n_tok * k && acts.d.len() == n_tok * n_sb && r0 < out.m);
        let sums: *const u8 = if Q6 {
            assert_eq!(acts.bsums.len(), n_tok * k / 16);
            acts.bsums.as_ptr().cast()
        } else {
            assert_eq!(extra.len(), n_tok * n_sb * 4);
            extra.as_ptr().cast()
        };
        Acts {
            panel: panel.as_ptr(),
            qs: acts.qs.as_ptr(),
            d: acts.d.as_ptr(),
            sums,
            n_sb,
            k,
        }
    }
}

/// Q4_K (`Q6 = false`) or Q6_K.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    // tokens t0..t0 + T < n_tok only, and this function's target features are theirs.
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

/// Broadcasts the 4 bytes at `p`.
#[inline(always)]
unsafe fn bcast4<T>(p: *const T) -> __m512i {
    // SAFETY: the caller's pointer has 4 readable bytes; read_unaligned needs no alignment.
    unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn tile_q4k<const T: usize>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let mut acc = [[_mm512_setzero_ps(); T]; RV];
    let pairs = a.sums.cast::<i32>();
    // SAFETY: see `run_k`; panel vectors are 64-byte aligned.
    unsafe {
        for i in 0..a.n_sb {
            let p = a.panel.add(i * RV * Q4K_LANES);
            let y = a.qs.add(t0 * a.k + QK_K * i);
            let mut isum = [[_mm512_setzero_si512(); T]; RV];
            for j in 0..8 {
                let mut s = [[_mm512_setzero_si512(); T]; RV];
                for g in 0..8 {
                    let mut wv = [_mm512_setzero_si512(); RV];
                    for v in 0..RV {
                        wv[v] = _mm512_load_si512(p.add(v * Q4K_LANES + 8 * j + g).cast());
                    }
                    for t in 0..T {
                        let yb = bcast4(y.add(t * a.k + 32 * j + 4 * g));
                        for v in 0..RV {
                            s[v][t] = _mm512_dpbusd_epi32(s[v][t], wv[v], yb);
                        }
                    }
                }
                for v in 0..RV {
                    let sc = _mm512_load_si512(p.add(v * Q4K_LANES + 64 + j).cast());
                    for t in 0..T {
                        isum[v][t] = _mm512_add_epi32(isum[v][t], _mm512_mullo_epi32(s[v][t], sc));
                    }
                }
            }
            for v in 0..RV {
                let q = p.add(v * Q4K_LANES);
                let d = _mm512_load_ps(q.add(76).cast());
                let dmin = _mm512_load_ps(q.add(77).cast());
                for t in 0..T {
                    let tb = (t0 + t) * a.n_sb + i;
                    let mut summ = _mm512_setzero_si512();
                    for h in 0..4 {
                        let mins = _mm512_load_si512(q.add(72 + h).cast());
                        summ = _mm512_dpwssd_epi32(summ, mins, bcast4(pairs.add(4 * tb + h)));
                    }
                    let dy = _mm512_set1_ps(*a.d.add(tb));
                    let x = _mm512_mul_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum[v][t]));
                    let m = _mm512_mul_ps(_mm512_mul_ps(dmin, dy), _mm512_cvtepi32_ps(summ));
                    acc[v][t] = _mm512_add_ps(acc[v][t], _mm512_sub_ps(x, m));
                }
            }
        }
        store(&acc, out, r0, t0);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn tile_q6k<const T: usize>(a: &Acts, t0: usize, out: OutPtr, r0: usize) {
    let mut acc = [[_mm512_setzero_ps(); T]; RV];
    let bsums = a.sums.cast::<i16>();
    // SAFETY: see `run_k`; panel vectors are 64-byte aligned.
    unsafe {
        for i in 0..a.n_sb {
            let p = a.panel.add(i * RV * Q6K_LANES);
            let y = a.qs.add(t0 * a.k + QK_K * i);
            let mut isum = [[_mm512_setzero_si512(); T]; RV];
            for j in 0..16 {
                let mut s = [[_mm512_setzero_si512(); T]; RV];
                for g in 0..4 {
                    let mut wv = [_mm512_setzero_si512(); RV];
                    for v in 0..RV {
                        wv[v] = _mm512_load_si512(p.add(v * Q6K_LANES + 4 * j + g).cast());
                    }
                    for t in 0..T {
                        let yb = bcast4(y.add(t * a.k + 16 * j + 4 * g));
                        for v in 0..RV {
                            s[v][t] = _mm512_dpbusd_epi32(s[v][t], wv[v], yb);
                        }
                    }
                }
                for v in 0..RV {
                    let sc = _mm512_load_si512(p.add(v * Q6K_LANES + 64 + j).cast());
                    for t in 0..T {
                        isum[v][t] = _mm512_add_epi32(isum[v][t], _mm512_mullo_epi32(s[v][t], sc));
                    }
                }
            }
            for v in 0..RV {
                let q = p.add(v * Q6K_LANES);
                let d = _mm512_load_ps(q.add(88).cast());
                for t in 0..T {
                    let bs = bsums.add((t0 + t) * (a.k / 16) + 16 * i);
                    let mut off = _mm512_setzero_si512();
                    for h in 0..8 {
                        let sc2 = _mm512_load_si512(q.add(80 + h).cast());
                        off = _mm512_dpwssd_epi32(off, sc2, bcast4(bs.add(2 * h)));
                    }
                    let isum = _mm512_sub_epi32(isum[v][t], _mm512_slli_epi32::<5>(off));
                    let dy = _mm512_set1_ps(*a.d.add((t0 + t) * a.n_sb + i));
                    let x = _mm512_mul_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum));
                    acc[v][t] = _mm512_add_ps(acc[v][t], x);
                }
            }
        }
        store(&acc, out, r0, t0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn transpose_matches_scalar() {
        if !super::super::SimdLevel::Avx512Vnni.is_available() {
            return;
        }
        let mut rng = Rng::new(5);
        let mut tmp = [[0u32; 37]; STRIP];
        for row in &mut tmp {
            for v in row.iter_mut() {
                *v = rng.next_u64() as u32;
            }
        }
        let mut dst = vec![Lanes::default(); 38];
        // SAFETY: AVX-512 F is available (checked above).
        unsafe { transpose(&tmp, &mut dst) };
        for g in 0..37 {
            assert_eq!(dst[g].0, std::array::from_fn(|l| tmp[l][g]), "column {g}");
        }
        assert_eq!(dst[37].0, [0; STRIP]);
    }
}
