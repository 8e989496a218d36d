//! AVX-512 VNNI kernels for the 32-value block types, against Q8_0 / Q8_1.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each four products into an i32
//! lane, without saturation. Weights are therefore made unsigned by an offset `c` (Q4_0: its
//! -8 is dropped, Q8_0 and the lookup tables get +128) and the activations' block sums pay it
//! back: `sum(w * y) = sum((w + c) * y) - c * sum(y)`, the second term scaled and added once per
//! group of blocks (a lane permute per block pair and token saved). One 512-bit register
//! holds two blocks (lanes 0-7 and 8-15), and blocks go in groups of 16 so that their 16 scales
//! are gathered and multiplied as one vector; a last group of fewer than 16 blocks is masked.
//!
//! Every function here needs AVX-512 F/BW/VL/VNNI plus AVX2, FMA and F16C; the dispatcher
//! calls them only after detecting those.

// Per-token loops (`for t in 0..N`) index several parallel arrays at once.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{load128, load256, prefetch_ahead};
use super::{ActRow, DotFn, DotMultiFn, MULTI, QK8_0};
use crate::tensor::quants::iq::{BlockIq4Nl, KVALUES_IQ4NL};
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tensor::quants::{as_blocks, Block};
use crate::tensor::GgmlType;

pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => dot32::<BlockQ4_0>,
        Q4_1 => dot32::<BlockQ4_1>,
        Q5_0 => dot32::<BlockQ5_0>,
        Q5_1 => dot32::<BlockQ5_1>,
        Q8_0 => dot32::<BlockQ8_0>,
        Iq4Nl => dot32::<BlockIq4Nl>,
        _ => return None,
    })
}

/// The [`MULTI`]-token twins of [`kernel`]'s kernels: the same per-token arithmetic, so each
/// result equals the single-token kernel's bit for bit.
pub(super) fn kernel_multi(ty: GgmlType) -> Option<DotMultiFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => dot32_n::<BlockQ4_0, MULTI>,
        Q4_1 => dot32_n::<BlockQ4_1, MULTI>,
        Q5_0 => dot32_n::<BlockQ5_0, MULTI>,
        Q5_1 => dot32_n::<BlockQ5_1, MULTI>,
        Q8_0 => dot32_n::<BlockQ8_0, MULTI>,
        Iq4Nl => dot32_n::<BlockIq4Nl, MULTI>,
        _ => return None,
    })
}

/// Blocks per group.
pub(super) const GROUP: usize = 16;

/// Loads 64 activation quants.
#[inline(always)]
pub(super) unsafe fn load_i8x64(y: &[i8; 64]) -> __m512i {
    // SAFETY: 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(y.as_ptr().cast()) }
}

/// Two blocks of nibbles (16 bytes each) as 64 bytes 0..16 in value order: block `a`'s low
/// nibbles, its high nibbles, then block `b`'s.
#[inline(always)]
pub(super) unsafe fn nibble_pair(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    unsafe {
        let ab = _mm256_set_m128i(load128(b), load128(a));
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ab), _mm256_srli_epi16::<4>(ab));
        let z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
        // 128-bit lanes (a lo, b lo, a hi, b hi) to (a lo, a hi, b lo, b hi).
        _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
    }
}

/// A 16-entry signed table shifted by +128 to unsigned bytes, in every 128-bit lane.
#[inline(always)]
pub(super) unsafe fn table_u8(t: &[i8; 16]) -> __m512i {
    let shifted: [u8; 16] = std::array::from_fn(|i| (t[i] as i16 + 128) as u8);
    // SAFETY: 16 readable bytes.
    unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(shifted.as_ptr().cast())) }
}

/// The first 4 bytes of each of the first blocks of a group (lanes whose `mask` bit is set;
/// the others are 0), as u32 lanes.
#[inline(always)]
pub(super) unsafe fn gather_heads<B: Block>(group: &[B], mask: u16) -> __m512i {
    let size = std::mem::size_of::<B>() as i32;
    if mask == 0xff {
        // Groups of exactly 8 blocks (rows of 256 values: the small MoE's): eight plain loads
        // beat the gather, which took a quarter of the kernel's time on such rows (AMD EPYC,
        // 2026-11-29; about 13% of the tiny MoE's decode time).
        let p: *const u8 = group.as_ptr().cast();
        // SAFETY: `mask` 0xff means `group` has at least 8 blocks (see `group_mask`), and 4
        // bytes fit in any block; unaligned reads are allowed.
        let head =
            |i: usize| unsafe { std::ptr::read_unaligned(p.add(i * size as usize).cast::<i32>()) };
        let v = _mm256_setr_epi32(
            head(0),
            head(1),
            head(2),
            head(3),
            head(4),
            head(5),
            head(6),
            head(7),
        );
        return _mm512_zextsi256_si512(v);
    }
    unsafe {
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(size),
        );
        // SAFETY: `mask` selects only blocks of `group` (see `group_mask`); every block is at
        // least 17 bytes, so each 4-byte read stays inside its block; gathers need no alignment.
        _mm512_mask_i32gather_epi32::<1>(
            _mm512_setzero_si512(),
            mask,
            offsets,
            group.as_ptr().cast(),
        )
    }
}

/// The lane mask of a group of `n` blocks (1 to 16).
#[inline(always)]
pub(super) fn group_mask(n: usize) -> u16 {
    debug_assert!((1..=GROUP).contains(&n));
    (u32::MAX >> (32 - n)) as u16
}

/// f16 values in the low 16 bits of each lane, widened to f32.
#[inline(always)]
pub(super) unsafe fn f16_lanes(v: __m512i) -> __m512 {
    unsafe { _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)) }
}

/// A 32-value block type as the VNNI loop sees it.
pub(super) trait Pair: Block {
    /// Added to every quant to make it unsigned, and taken back through the activation sums.
    const OFFSET: i32;
    /// Whether the block has a min (`x = d * q + m`), dotted with Q8_1's `s`.
    const HAS_MIN: bool = false;
    /// Two blocks' quants plus `OFFSET`, as 64 unsigned bytes in value order.
    unsafe fn pair(a: &Self, b: &Self) -> __m512i;
    /// The scales of the group's blocks selected by `mask` (16 lanes; 0 where not selected).
    unsafe fn scales(group: &[Self], mask: u16) -> __m512;
    /// The 16 blocks' mins (only with `HAS_MIN`).
    unsafe fn mins(_group: &[Self], _mask: u16) -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
}

impl Pair for BlockQ4_0 {
    const OFFSET: i32 = 8;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe { nibble_pair(&a.qs, &b.qs) }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
}

impl Pair for BlockQ4_1 {
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe { nibble_pair(&a.qs, &b.qs) }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
    #[inline(always)]
    unsafe fn mins(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(_mm512_srli_epi32::<16>(gather_heads(group, mask))) }
    }
}

/// Adds 16 to the bytes whose bit is set in the two blocks' `qh` (bit j of value j).
#[inline(always)]
unsafe fn fifth_bits(z: __m512i, qh_a: [u8; 4], qh_b: [u8; 4]) -> __m512i {
    let bits = u32::from_le_bytes(qh_a) as u64 | (u32::from_le_bytes(qh_b) as u64) << 32;
    unsafe { _mm512_mask_add_epi8(z, bits, z, _mm512_set1_epi8(16)) }
}

impl Pair for BlockQ5_0 {
    const OFFSET: i32 = 16;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe { fifth_bits(nibble_pair(&a.qs, &b.qs), a.qh, b.qh) }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
}

impl Pair for BlockQ5_1 {
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe { fifth_bits(nibble_pair(&a.qs, &b.qs), a.qh, b.qh) }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
    #[inline(always)]
    unsafe fn mins(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(_mm512_srli_epi32::<16>(gather_heads(group, mask))) }
    }
}

impl Pair for BlockQ8_0 {
    const OFFSET: i32 = 128;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe {
            let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load256(&a.qs)), load256(&b.qs));
            _mm512_xor_si512(z, _mm512_set1_epi8(0x80u8 as i8))
        }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
}

impl Pair for BlockIq4Nl {
    const OFFSET: i32 = 128;
    #[inline(always)]
    unsafe fn pair(a: &Self, b: &Self) -> __m512i {
        unsafe { _mm512_shuffle_epi8(table_u8(&KVALUES_IQ4NL), nibble_pair(&a.qs, &b.qs)) }
    }
    #[inline(always)]
    unsafe fn scales(group: &[Self], mask: u16) -> __m512 {
        unsafe { f16_lanes(gather_heads(group, mask)) }
    }
}

/// `N` activation rows' sums over groups of up to 16 blocks (one accumulator per row); the
/// last group's missing blocks are masked out (zero scales, zero activations). Each weight pair
/// is unpacked once for all `N` rows; the operations on each row are the same whatever `N`, so
/// results do not depend on it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn dot32_n<B: Pair, const N: usize>(w: &[u8], a: &[ActRow<'_>; N]) -> [f32; N] {
    let blocks = as_blocks::<B>(w);
    let n_blocks = blocks.len();
    for t in 0..N {
        assert!(a[t].qs.len() >= n_blocks * QK8_0 && a[t].d.len() >= n_blocks);
        assert!(a[t].sums.len() >= n_blocks && (!B::HAS_MIN || a[t].s.len() >= n_blocks));
    }
    // One accumulator per row: with a second one chosen by `j % 2` the compiler kept them all
    // on the stack.
    let mut acc = [_mm512_setzero_ps(); N];
    let mut acc_min = [_mm512_setzero_ps(); N];
    // Lanes 0-7 take element 2j, lanes 8-15 element 2j + 1.
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for b0 in (0..n_blocks).step_by(GROUP) {
        let gb = &blocks[b0..n_blocks.min(b0 + GROUP)];
        prefetch_ahead(w, b0 * size_of::<B>(), size_of_val(gb));
        let mask = group_mask(gb.len());
        // SAFETY (this block and below): this function's target features are the helpers';
        // masked loads read only the group's blocks of each activation array (asserted long
        // enough above), and full loads read whole pairs of blocks inside them.
        unsafe {
            let w_scales = B::scales(gb, mask);
            let mut scales = [_mm512_setzero_ps(); N];
            for t in 0..N {
                let dy = _mm512_maskz_loadu_ps(mask, a[t].d.as_ptr().add(b0));
                scales[t] = _mm512_mul_ps(w_scales, dy);
                if B::OFFSET != 0 {
                    // The offset's share, -OFFSET * sum(y) per block, once per group.
                    let sums = _mm512_maskz_loadu_epi32(mask, a[t].sums.as_ptr().add(b0));
                    let corr = _mm512_mullo_epi32(sums, _mm512_set1_epi32(-B::OFFSET));
                    acc_min[t] = _mm512_fmadd_ps(scales[t], _mm512_cvtepi32_ps(corr), acc_min[t]);
                }
            }
            for j in 0..gb.len().div_ceil(2) {
                let idx = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * j as i32));
                // An odd last block is paired with itself; its second half meets zero
                // activations and a zero scale.
                let full = 2 * j + 1 < gb.len();
                let wv = B::pair(&gb[2 * j], &gb[if full { 2 * j + 1 } else { 2 * j }]);
                let y_mask: u64 = if full { u64::MAX } else { u32::MAX as u64 };
                for t in 0..N {
                    let y_ptr = a[t].qs.as_ptr().add((b0 + 2 * j) * QK8_0);
                    let y = _mm512_maskz_loadu_epi8(y_mask, y_ptr);
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, y);
                    let s = _mm512_permutexvar_ps(idx, scales[t]);
                    acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[t]);
                }
            }
            if B::HAS_MIN {
                let mins = B::mins(gb, mask);
                for t in 0..N {
                    let s = _mm512_maskz_loadu_ps(mask, a[t].s.as_ptr().add(b0));
                    acc_min[t] = _mm512_fmadd_ps(mins, s, acc_min[t]);
                }
            }
        }
    }
    std::array::from_fn(|t| {
        let all = _mm512_add_ps(acc[t], acc_min[t]);
        _mm512_reduce_add_ps(all)
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot32<B: Pair>(w: &[u8], a: &ActRow<'_>) -> f32 {
    // SAFETY: same target features.
    unsafe { dot32_n::<B, 1>(w, std::array::from_ref(a))[0] }
}
