//! AVX2 kernels for the 32-value block types (against Q8_0 / Q8_1) and for float rows, plus the
//! x86 helpers the other x86 kernels share.
//!
//! Integer products use `maddubs` (u8 x i8 to saturating i16 pairs) and `madd` (i16 pairs to
//! i32). Signed weights go through the sign trick (`|w| * sign(y, w)`), which cannot saturate:
//! |w| <= 128 and |y| <= 127 give pairs of at most 32512. Each block's eight i32 lanes add up to
//! exactly the plain twin's integer sum; only the float accumulation order differs.
//!
//! Every function here needs AVX2, FMA and F16C; the dispatcher calls them only after
//! detecting those.

use std::arch::x86_64::*;

use super::{ActRow, DotFn, QK8_0};
use crate::tensor::quants::float::{bf16_to_f32, f16_to_f32, BlockBf16, BlockF16, BlockF32};
use crate::tensor::quants::iq::{BlockIq4Nl, KVALUES_IQ4NL};
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tensor::quants::mxfp4::{e8m0_to_f32_half, BlockMxfp4, KVALUES_MXFP4};
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
        Mxfp4 => dot32::<BlockMxfp4>,
        F32 => f32_row,
        F16 => f16_row,
        Bf16 => bf16_row,
        _ => return None,
    })
}

// ---- shared helpers (callers must have AVX2, FMA and F16C) ----

/// How far ahead of the block being read the single-row decode kernels ask for the weights:
/// 8 KB, about seven 2048-wide Q4_K rows. Decoding streams each weight once, and at two threads
/// the hardware prefetcher alone left the cores waiting on memory. Measured on AMD EPYC (AVX-512
/// VNNI, 2 cores, 38 GB/s one core / 46 GB/s two by a plain read loop), `dsrun bench -p 0 -n 64
/// -r 3`, 2026-11-29, tg t/s by distance in bytes (0 = none): Qwen2.5-Coder-1.5B Q4_K_M two
/// threads 0: 37.5, 4608: 42.0, 6912: 47.4, 9216: 47.9, 13824: 41.1; one thread 27.1 → 30.9;
/// the Qwen3-30B-A3B-shaped MoE (Q4_K) two threads 0: 274, 5760: 299, 6912: 306, 9216: 283.
pub(super) const PREFETCH_AHEAD: usize = 8192;

/// Prefetches into L1 the `len` bytes [`PREFETCH_AHEAD`] bytes after `w[at..]`, one request per
/// 64 bytes (consecutive blocks' requests overlap, so every line is asked for). A prefetch is a
/// hint that never faults, so addresses past the weights are harmless.
#[inline(always)]
pub(super) fn prefetch_ahead(w: &[u8], at: usize, len: usize) {
    let p = w.as_ptr().wrapping_add(at + PREFETCH_AHEAD);
    let mut off = 0;
    while off < len {
        // SAFETY: `_mm_prefetch` needs only SSE (baseline on x86-64) and does not access
        // memory architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast()) };
        off += 64;
    }
}

/// Loads 16 bytes.
#[inline(always)]
pub(super) unsafe fn load128(p: &[u8; 16]) -> __m128i {
    // SAFETY: 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
}

/// Loads 32 bytes.
#[inline(always)]
pub(super) unsafe fn load256(p: &[u8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Loads 32 activation quants.
#[inline(always)]
pub(super) unsafe fn load_i8x32(p: &[i8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// One f16 (little-endian bytes) to f32 with F16C: exact, NaNs quieted as `f16_to_f32` does.
#[inline(always)]
pub(super) unsafe fn f16x1(bytes: [u8; 2]) -> f32 {
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes(bytes) as i32
        )))
    }
}

/// 16 bytes of nibbles to 32 bytes: low nibbles in the low half, high nibbles in the high half
/// (the value order of Q4_0-style blocks).
#[inline(always)]
pub(super) unsafe fn nibbles32(qs: &[u8; 16]) -> __m256i {
    unsafe {
        let q = load128(qs);
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }
}

/// Looks up 32 nibbles in a 16-entry signed table.
#[inline(always)]
pub(super) unsafe fn lookup32(qs: &[u8; 16], table: &[i8; 16]) -> __m256i {
    unsafe {
        let t = _mm_loadu_si128(table.as_ptr().cast());
        let q = load128(qs);
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_shuffle_epi8(t, _mm_and_si128(q, m));
        let hi = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16::<4>(q), m));
        _mm256_set_m128i(hi, lo)
    }
}

/// Byte j is 0xff where bit j of `bits` is set, else 0.
#[inline(always)]
pub(super) unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    unsafe {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            ),
        );
        // Set every bit but bit (j % 8) of byte j; the byte is all ones iff that bit was set.
        let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(others, _mm256_set1_epi64x(-1))
    }
}

/// i32 lanes of `sum(x * y)` over each 4 bytes, `x` unsigned with x <= 127 (no saturation).
#[inline(always)]
pub(super) unsafe fn mul_sum_u8(x: __m256i, y: __m256i) -> __m256i {
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)) }
}

/// i32 lanes of `sum(x * y)` over each 4 bytes, both signed, y in -127..=127.
#[inline(always)]
pub(super) unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256i {
    unsafe { mul_sum_u8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
}

/// Sum of the eight lanes.
#[inline(always)]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

// ---- 32-value blocks ----

/// A 32-value weight block as the AVX2 loop sees it.
trait Block32: Block {
    /// Whether the block has a min (`x = d * q + m`), dotted with Q8_1's `s`.
    const HAS_MIN: bool = false;
    /// i32 lanes summing to the exact integer dot of the block's quants with `y`.
    unsafe fn isum(&self, y: __m256i) -> __m256i;
    fn scale(&self) -> f32;
    fn min(&self) -> f32 {
        0.0
    }
}

impl Block32 for BlockQ4_0 {
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe { mul_sum_i8(_mm256_sub_epi8(nibbles32(&self.qs), _mm256_set1_epi8(8)), y) }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
}

impl Block32 for BlockQ4_1 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe { mul_sum_u8(nibbles32(&self.qs), y) }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
    #[inline(always)]
    fn min(&self) -> f32 {
        unsafe { f16x1(self.m) }
    }
}

impl Block32 for BlockQ5_0 {
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe {
            // q - 16 as i8: nibble | 0xf0 where the fifth bit is clear, the nibble where set.
            let high = bytes_from_bits(u32::from_le_bytes(self.qh));
            let hi = _mm256_andnot_si256(high, _mm256_set1_epi8(0xf0u8 as i8));
            mul_sum_i8(_mm256_or_si256(nibbles32(&self.qs), hi), y)
        }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
}

impl Block32 for BlockQ5_1 {
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe {
            let high = bytes_from_bits(u32::from_le_bytes(self.qh));
            let hi = _mm256_and_si256(high, _mm256_set1_epi8(0x10));
            mul_sum_u8(_mm256_or_si256(nibbles32(&self.qs), hi), y)
        }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
    #[inline(always)]
    fn min(&self) -> f32 {
        unsafe { f16x1(self.m) }
    }
}

impl Block32 for BlockQ8_0 {
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe { mul_sum_i8(load256(&self.qs), y) }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
}

impl Block32 for BlockIq4Nl {
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe { mul_sum_i8(lookup32(&self.qs, &KVALUES_IQ4NL), y) }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        unsafe { f16x1(self.d) }
    }
}

impl Block32 for BlockMxfp4 {
    #[inline(always)]
    unsafe fn isum(&self, y: __m256i) -> __m256i {
        unsafe { mul_sum_i8(lookup32(&self.qs, &KVALUES_MXFP4), y) }
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        e8m0_to_f32_half(self.e)
    }
}

/// One block's contribution added to `acc`.
#[inline(always)]
unsafe fn step32<B: Block32>(b: &B, y: &[i8; QK8_0], dy: f32, acc: __m256) -> __m256 {
    unsafe {
        let p = b.isum(load_i8x32(y));
        _mm256_fmadd_ps(_mm256_set1_ps(b.scale() * dy), _mm256_cvtepi32_ps(p), acc)
    }
}

/// `sum_b (d_b * dy_b) * isum_b (+ m_b * s_b)` over 32-value blocks, two blocks per step into
/// two accumulators so consecutive FMAs do not wait on each other.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot32<B: Block32>(w: &[u8], a: &ActRow<'_>) -> f32 {
    let blocks = as_blocks::<B>(w);
    let ys = a.qs.as_chunks::<QK8_0>().0;
    let n = blocks.len().min(ys.len()).min(a.d.len());
    let (blocks, ys, dys) = (&blocks[..n], &ys[..n], &a.d[..n]);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY (all calls below): this function's target features are the helpers' needs.
    while i + 2 <= n {
        prefetch_ahead(w, i * size_of::<B>(), 2 * size_of::<B>());
        acc0 = unsafe { step32(&blocks[i], &ys[i], dys[i], acc0) };
        acc1 = unsafe { step32(&blocks[i + 1], &ys[i + 1], dys[i + 1], acc1) };
        i += 2;
    }
    if i < n {
        acc0 = unsafe { step32(&blocks[i], &ys[i], dys[i], acc0) };
    }
    let mut min_sum = 0.0f32;
    if B::HAS_MIN {
        for (b, &s) in blocks.iter().zip(a.s) {
            min_sum += b.min() * s;
        }
    }
    unsafe { hsum_ps(_mm256_add_ps(acc0, acc1)) + min_sum }
}

// ---- float rows ----

/// `sum(w * x)` for 8 weights at a time converted to an f32 vector by `$load8` (from the
/// chunk `$c`), four accumulators; the last `len % 8` values are added in scalar code with
/// `$one` (from the block `$b`).
macro_rules! float_row {
    ($name:ident, $block:ty, |$c:ident| $load8:expr, |$b:ident| $one:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], a: &ActRow<'_>) -> f32 {
            let w = as_blocks::<$block>(w);
            let n = w.len().min(a.f.len());
            let (w, x) = (&w[..n], &a.f[..n]);
            let mut acc = [_mm256_setzero_ps(); 4];
            let (w8, w_tail) = w.as_chunks::<8>();
            let (x8, x_tail) = x.as_chunks::<8>();
            for (w4, x4) in w8.chunks(4).zip(x8.chunks(4)) {
                for (j, ($c, xc)) in w4.iter().zip(x4).enumerate() {
                    // SAFETY: the chunks hold 8 blocks and 8 floats, all read.
                    let (wv, xv) = unsafe { ($load8, _mm256_loadu_ps(xc.as_ptr())) };
                    acc[j] = _mm256_fmadd_ps(wv, xv, acc[j]);
                }
            }
            let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let tail: f32 = w_tail.iter().zip(x_tail).map(|($b, x)| $one * x).sum();
            // SAFETY: this function's target features.
            unsafe { hsum_ps(acc) + tail }
        }
    };
}

float_row!(
    f32_row,
    BlockF32,
    |c| _mm256_loadu_ps(c.as_ptr().cast()),
    |b| f32::from_le_bytes(b.bits)
);
float_row!(
    f16_row,
    BlockF16,
    |c| _mm256_cvtph_ps(_mm_loadu_si128(c.as_ptr().cast())),
    |b| f16_to_f32(b.bits)
);
float_row!(
    bf16_row,
    BlockBf16,
    |c| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(c.as_ptr().cast())
    ))),
    |b| bf16_to_f32(u16::from_le_bytes(b.bits))
);
