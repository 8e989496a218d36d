//! AVX-512 VNNI kernels for the k-quants and IQ4_XS, against Q8_K activations.
//!
//! One 512-bit register holds 64 weights in value order. Q4_K/Q5_K/Q6_K weights are small and
//! unsigned, so `maddubs` (u8 x i8 to i16 pairs, no saturation below 2 * 63 * 127) is followed
//! by `vpdpwssd`, which multiplies the pairs by the sub-block scales and accumulates i32 lanes in
//! one instruction. IQ4_XS's table values are signed and up to 127, so they are shifted by +128
//! for `vpdpbusd` and the activation sums pay the offset back, then scaled per sub-block. Every
//! super-block's i32 lanes add up to exactly the plain twin's integer sum.
//!
//! Every function here needs AVX-512 F/BW/VL/VNNI plus AVX2, FMA and F16C; the dispatcher
//! calls them only after detecting those.

// Per-token loops (`for t in 0..N`) index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{f16x1, load128, load256, prefetch_ahead};
use super::avx2_k::load_bsums;
use super::avx512::{load_i8x64, table_u8};
use super::plain::{iq4_xs_scales, k4_scales_mins_packed};
use super::{ActRow, DotFn, DotMultiFn, MULTI};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::iq::{BlockIq4Xs, KVALUES_IQ4NL};
use crate::tensor::quants::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
use crate::tensor::GgmlType;

pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    Some(match ty {
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
        GgmlType::Iq4Xs => iq4_xs,
        _ => return None,
    })
}

/// The [`MULTI`]-token twins of [`kernel`]'s kernels (equal results, bit for bit).
pub(super) fn kernel_multi(ty: GgmlType) -> Option<DotMultiFn> {
    Some(match ty {
        GgmlType::Q4K => q4_k_n::<MULTI>,
        GgmlType::Q5K => q5_k_n::<MULTI>,
        GgmlType::Q6K => q6_k_n::<MULTI>,
        GgmlType::Iq4Xs => iq4_xs_n::<MULTI>,
        _ => return None,
    })
}

/// Lane `i` of the result is i16 element `first + i / per` of `v`: one sub-block scale for each
/// run of `per` lanes (8 or 16).
#[inline(always)]
unsafe fn spread_i16(v: __m512i, first: i16, per: i16) -> __m512i {
    unsafe {
        let lane = _mm512_set_epi16(
            31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
            9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        );
        let idx = match per {
            16 => _mm512_srli_epi16::<4>(lane),
            _ => _mm512_srli_epi16::<3>(lane),
        };
        _mm512_permutexvar_epi16(_mm512_add_epi16(idx, _mm512_set1_epi16(first)), v)
    }
}

/// `N` Q8_K activation rows, by super-block: quants in runs of 64, scales, 16-value sums.
struct Rows<'a, const N: usize> {
    y: [&'a [[i8; 64]]; N],
    d: [&'a [f32]; N],
    bsums: [&'a [[i16; 16]]; N],
}

impl<'a, const N: usize> Rows<'a, N> {
    fn new(a: &[ActRow<'a>; N]) -> Self {
        Rows {
            y: std::array::from_fn(|t| a[t].qs.as_chunks::<64>().0),
            d: std::array::from_fn(|t| a[t].d),
            bsums: std::array::from_fn(|t| a[t].bsums.as_chunks::<16>().0),
        }
    }
}

/// Q4_K and Q5_K super-block `i` (with `HIGH`, adding `qh`'s fifth bits) for `N` rows: adds
/// `d * dy * sum(sc * q * y)` to `acc[t]` and subtracts `dmin * dy * sum(m * bsum)`. The
/// weights are unpacked once; each row sees the same operations whatever `N`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k4<const HIGH: bool, const N: usize>(
    qs: &[u8; 128],
    qh: &[u8; 32],
    (d, dmin): (f32, f32),
    scales: &[u8; 12],
    i: usize,
    r: &Rows<'_, N>,
    acc: &mut [__m512; N],
) {
    unsafe {
        let (sc, m) = k4_scales_mins_packed(scales);
        // sum_j m_j * (sum of sub-block j's activations): 16 sums, added in pairs by madd.
        let mins16 =
            _mm256_cvtepu8_epi16(_mm_set_epi64x(i64::from_le_bytes(m), i64::from_le_bytes(m)));
        let mins16 = _mm256_permutexvar_epi16(
            _mm256_setr_epi16(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
            mins16,
        );
        for t in 0..N {
            // Subtracted from the same accumulator (its upper half gets zeros): a second
            // accumulator per row made eight rows spill to the stack.
            let prod = _mm256_madd_epi16(mins16, load_bsums(&r.bsums[t][i]));
            let dm = _mm512_set1_ps(dmin * r.d[t][i]);
            let prod = _mm512_zextps256_ps512(_mm256_cvtepi32_ps(prod));
            acc[t] = _mm512_fnmadd_ps(dm, prod, acc[t]);
        }

        let sc16 = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_cvtsi64_si128(
            i64::from_le_bytes(sc),
        )));
        let m4 = _mm512_set1_epi8(0x0f);
        // Bits 2j (low nibbles) and 2j + 1 (high nibbles) of qh, moved to bit 0 step by step.
        let h = load256(qh);
        let mut high =
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<1>(h));
        let mut sumi = [_mm512_setzero_si512(); N];
        for (j, q) in qs.as_chunks::<32>().0.iter().enumerate() {
            let bits = load256(q);
            let z =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(bits), _mm256_srli_epi16::<4>(bits));
            let mut z = _mm512_and_si512(z, m4);
            if HIGH {
                let set = _mm512_test_epi8_mask(high, _mm512_set1_epi8(1));
                z = _mm512_mask_add_epi8(z, set, z, _mm512_set1_epi8(16));
                high = _mm512_srli_epi16::<2>(high);
            }
            let scale = spread_i16(sc16, 2 * j as i16, 16);
            for t in 0..N {
                let p16 = _mm512_maddubs_epi16(z, load_i8x64(&r.y[t][4 * i + j]));
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], p16, scale);
            }
        }
        for t in 0..N {
            let dd = _mm512_set1_ps(d * r.d[t][i]);
            acc[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q4_k_n<const N: usize>(w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    let r = Rows::new(a);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, b) in as_blocks::<BlockQ4K>(w).iter().enumerate() {
        prefetch_ahead(w, i * size_of::<BlockQ4K>(), size_of::<BlockQ4K>());
        // SAFETY (this block and below): this function's target features are the helpers'.
        unsafe {
            let d = (f16x1(b.d), f16x1(b.dmin));
            k4::<false, N>(&b.qs, &[0; 32], d, &b.scales, i, &r, &mut acc);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q5_k_n<const N: usize>(w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    let r = Rows::new(a);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, b) in as_blocks::<BlockQ5K>(w).iter().enumerate() {
        prefetch_ahead(w, i * size_of::<BlockQ5K>(), size_of::<BlockQ5K>());
        // SAFETY (this block and below): this function's target features are the helpers'.
        unsafe {
            let d = (f16x1(b.d), f16x1(b.dmin));
            k4::<true, N>(&b.qs, &b.qh, d, &b.scales, i, &r, &mut acc);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q6_k_n<const N: usize>(w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    let r = Rows::new(a);
    let m4 = _mm512_set1_epi8(0x0f);
    let m_hi = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); N];
    for (i, b) in as_blocks::<BlockQ6K>(w).iter().enumerate() {
        prefetch_ahead(w, i * size_of::<BlockQ6K>(), size_of::<BlockQ6K>());
        // SAFETY: this function's target features are the helpers' requirements.
        unsafe {
            let sc16 = _mm256_cvtepi8_epi16(load128(&b.scales));
            // 32 * sum_j sc_j * bsums_j: the -32 of every value.
            let mut sumi = [_mm512_setzero_si512(); N];
            for t in 0..N {
                let dot = _mm256_madd_epi16(load_bsums(&r.bsums[t][i]), sc16);
                let offset = _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(dot));
                sumi[t] = _mm512_sub_epi32(sumi[t], offset);
            }
            let sc16 = _mm512_castsi256_si512(sc16);
            let ql = b.ql.as_chunks::<32>().0;
            let qh = b.qh.as_chunks::<32>().0;
            for h in 0..2 {
                // Values 128h + 32s + l: nibbles of ql (low for s < 2), bits 2s..2s+2 of qh.
                let l = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(load256(&ql[2 * h])),
                    load256(&ql[2 * h + 1]),
                );
                let hb = load256(&qh[h]);
                let hh =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hb), _mm256_srli_epi16::<2>(hb));
                let q01 = _mm512_or_si512(
                    _mm512_and_si512(l, m4),
                    _mm512_and_si512(_mm512_slli_epi16::<4>(hh), m_hi),
                );
                let q23 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
                    _mm512_and_si512(hh, m_hi),
                );
                for (g, q) in [q01, q23].into_iter().enumerate() {
                    let scale = spread_i16(sc16, (8 * h + 4 * g) as i16, 8);
                    for t in 0..N {
                        let p16 = _mm512_maddubs_epi16(q, load_i8x64(&r.y[t][4 * i + 2 * h + g]));
                        sumi[t] = _mm512_dpwssd_epi32(sumi[t], p16, scale);
                    }
                }
            }
            let d = f16x1(b.d);
            for t in 0..N {
                let dd = _mm512_set1_ps(d * r.d[t][i]);
                acc[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn iq4_xs_n<const N: usize>(w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    let r = Rows::new(a);
    let mut acc = [_mm512_setzero_ps(); N];
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    // SAFETY: this function's target features are the helper's requirements.
    let table = unsafe { table_u8(&KVALUES_IQ4NL) };
    for (i, b) in as_blocks::<BlockIq4Xs>(w).iter().enumerate() {
        prefetch_ahead(w, i * size_of::<BlockIq4Xs>(), size_of::<BlockIq4Xs>());
        // SAFETY: this function's target features are the helpers' requirements.
        unsafe {
            let ls = _mm512_cvtepi8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(
                iq4_xs_scales(b).map(|v| v as u8),
            )));
            // -128 * (sum of each sub-block's 32 activations).
            let corr: [__m512i; N] = std::array::from_fn(|t| {
                let sums = _mm256_madd_epi16(load_bsums(&r.bsums[t][i]), _mm256_set1_epi16(1));
                _mm512_zextsi256_si512(_mm256_mullo_epi32(sums, _mm256_set1_epi32(-128)))
            });
            let mut sumi = [_mm512_setzero_si512(); N];
            for (j, q) in b.qs.as_chunks::<32>().0.iter().enumerate() {
                let (qa, qb) = q.split_at(16);
                let z = super::avx512::nibble_pair(qa.try_into().unwrap(), qb.try_into().unwrap());
                let z = _mm512_shuffle_epi8(table, z);
                let idx = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * j as i32));
                let scale = _mm512_permutexvar_epi32(idx, ls);
                for t in 0..N {
                    let init = _mm512_maskz_permutexvar_epi32(0x0101, idx, corr[t]);
                    let p = _mm512_dpbusd_epi32(init, z, load_i8x64(&r.y[t][4 * i + j]));
                    sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(p, scale));
                }
            }
            let d = f16x1(b.d);
            for t in 0..N {
                let dd = _mm512_set1_ps(d * r.d[t][i]);
                acc[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

/// Single-token kernels: the `N = 1` instances.
macro_rules! single {
    ($name:ident, $multi:ident) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], a: &ActRow<'_>) -> f32 {
            // SAFETY: same target features.
            unsafe { $multi::<1>(w, std::array::from_ref(a))[0] }
        }
    };
}

single!(q4_k, q4_k_n);
single!(q5_k, q5_k_n);
single!(q6_k, q6_k_n);
single!(iq4_xs, iq4_xs_n);
