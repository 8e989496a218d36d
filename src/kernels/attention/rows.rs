//! The cached key or value rows attention reads: f32 rows, or the cache's own f16 or quantized
//! rows read in place. The tiled path widens one block of keys of one head at a time into a
//! scratch that stays in L1/L2 (`Rows::block`); the per-head path widens the whole view first
//! (`Rows::widened`). Widening is exact (f16 → f32) or ggml's dequantization, block by block, so
//! either way the kernels see the same f32 values as a cache widened up front: the point is
//! memory, not arithmetic. A cache of 32K f16 positions was widened per layer and batch into
//! 32 MiB of f32 for every decoded token; now decode reads the 16 MiB of f16 once.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::tensor::{quants, GgmlType};

/// Rows of `kv_dim` values, one per position from the view's first.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Whole blocks of `ty` (q8_0, q4_0), `row_bytes` per position.
    Quant {
        ty: GgmlType,
        data: &'a [u8],
        row_bytes: usize,
    },
}

impl<'a> Rows<'a> {
    /// Positions the view holds.
    pub fn len(&self, kv_dim: usize) -> usize {
        match self {
            Rows::F32(d) => d.len() / kv_dim,
            Rows::F16(d) => d.len() / kv_dim,
            Rows::Quant {
                data, row_bytes, ..
            } => data.len() / row_bytes,
        }
    }

    /// The f32 rows themselves, if the view is f32.
    pub(super) fn as_f32(&self) -> Option<&'a [f32]> {
        match *self {
            Rows::F32(d) => Some(d),
            _ => None,
        }
    }

    /// Every value of the first `n` positions as f32.
    pub(super) fn widened(&self, kv_dim: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n * kv_dim];
        self.widen(kv_dim, 0..n, 0..kv_dim, &mut out);
        out
    }

    /// Columns `cols` of positions `pos` as f32 into `out`, row after row (`cols.len()` apart).
    pub(super) fn widen(
        &self,
        kv_dim: usize,
        pos: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let w = cols.len();
        assert_eq!(out.len(), pos.len() * w, "widen: out shape");
        #[cfg(target_arch = "x86_64")]
        if fast::widen(self, kv_dim, pos.clone(), cols.clone(), out) {
            return;
        }
        match *self {
            Rows::F32(d) => {
                for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
                    o.copy_from_slice(&d[p * kv_dim + cols.start..][..w]);
                }
            }
            Rows::F16(d) => {
                for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
                    d[p * kv_dim + cols.start..][..w].convert_to_f32_slice(o);
                }
            }
            Rows::Quant {
                ty,
                data,
                row_bytes,
            } => {
                let bs = ty.block_size().expect("a cache type ggml knows");
                let bb = ty.type_size().expect("a cache type ggml knows");
                // The whole blocks covering the columns.
                let (b0, b1) = (cols.start / bs, cols.end.div_ceil(bs));
                let skip = cols.start - b0 * bs;
                let mut tmp = vec![0.0f32; (b1 - b0) * bs];
                for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
                    let src = &data[p * row_bytes + b0 * bb..p * row_bytes + b1 * bb];
                    quants::dequantize(ty, src, &mut tmp).expect("whole blocks of a cache row");
                    o.copy_from_slice(&tmp[skip..skip + w]);
                }
            }
        }
    }

    /// The rows of positions `pos` and columns `cols` as an f32 slice and its row stride:
    /// the view itself where it is f32 (rows `kv_dim` apart), else widened into `scratch`
    /// (rows `cols.len()` apart).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn block<'s>(
        &self,
        kv_dim: usize,
        pos: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize)
    where
        'a: 's,
    {
        if let Rows::F32(d) = *self {
            return (&d[pos.start * kv_dim + cols.start..], kv_dim);
        }
        let w = cols.len();
        scratch.clear();
        scratch.resize(pos.len() * w, 0.0);
        self.widen(kv_dim, pos, cols, scratch);
        (&scratch[..], w)
    }
}

/// AVX-512 forms of [`Rows::widen`] for columns in whole vectors of 16 (and whole blocks of 32
/// for q8_0 / q4_0), the same values as the plain forms: f16 → f32 is exact, and a quantized
/// value is its integer (exact in f32) times the block's scale, one rounding, as in ggml. The
/// plain forms made a call per row (per 64 values of a head), a tenth of a decoded token's time.
#[cfg(target_arch = "x86_64")]
mod fast {
    use super::Rows;
    use crate::tensor::GgmlType;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Widens as [`Rows::widen`] and returns true, or returns false where it has no fast form.
    pub(super) fn widen(
        rows: &Rows<'_>,
        kv_dim: usize,
        pos: Range<usize>,
        cols: Range<usize>,
        out: &mut [f32],
    ) -> bool {
        if !std::arch::is_x86_feature_detected!("avx512f") || !cols.len().is_multiple_of(16) {
            // AVX2 machines: f16 rows through F16C, 8 values at a time.
            return match *rows {
                Rows::F16(d)
                    if std::arch::is_x86_feature_detected!("f16c")
                        && cols.len().is_multiple_of(8) =>
                {
                    assert!(pos.end * kv_dim <= d.len() && cols.end <= kv_dim);
                    // SAFETY: F16C (and AVX) is available; bounds as below.
                    unsafe { f16_rows_f16c(d.as_ptr().cast(), kv_dim, pos, cols, out) };
                    true
                }
                _ => false,
            };
        }
        match *rows {
            Rows::F16(d) => {
                assert!(pos.end * kv_dim <= d.len() && cols.end <= kv_dim);
                // SAFETY: AVX-512 F is available; rows `pos` and columns `cols` lie inside `d`
                // (asserted) and `out` holds pos.len() rows of cols.len() (asserted by caller).
                unsafe { f16_rows(d.as_ptr().cast(), kv_dim, pos, cols, out) };
                true
            }
            Rows::Quant {
                ty,
                data,
                row_bytes,
            } if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0)
                && cols.start.is_multiple_of(32)
                && cols.len().is_multiple_of(32) =>
            {
                let bb = if ty == GgmlType::Q8_0 { 34 } else { 18 };
                assert!(pos.end * row_bytes <= data.len() && cols.end / 32 * bb <= row_bytes);
                // SAFETY: as above, with the blocks of columns `cols` inside each row.
                unsafe {
                    if ty == GgmlType::Q8_0 {
                        quant_rows::<true>(data, row_bytes, pos, cols, out)
                    } else {
                        quant_rows::<false>(data, row_bytes, pos, cols, out)
                    }
                };
                true
            }
            _ => false,
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn f16_rows(
        d: *const u16,
        kv_dim: usize,
        pos: Range<usize>,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        let w = cols.len();
        for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
            for c in (0..w).step_by(16) {
                // SAFETY: the caller's bounds.
                unsafe {
                    let h = _mm256_loadu_si256(d.add(p * kv_dim + cols.start + c).cast());
                    _mm512_storeu_ps(o.as_mut_ptr().add(c), _mm512_cvtph_ps(h));
                }
            }
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_rows_f16c(
        d: *const u16,
        kv_dim: usize,
        pos: Range<usize>,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        let w = cols.len();
        for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
            for c in (0..w).step_by(8) {
                // SAFETY: the caller's bounds.
                unsafe {
                    let h = _mm_loadu_si128(d.add(p * kv_dim + cols.start + c).cast());
                    _mm256_storeu_ps(o.as_mut_ptr().add(c), _mm256_cvtph_ps(h));
                }
            }
        }
    }

    /// The f32 scale of the block at `b` (an f16 in its first two bytes).
    fn scale(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }

    /// q8_0 (`Q8`) or q4_0 rows: each block's integers times its scale.
    #[target_feature(enable = "avx512f")]
    unsafe fn quant_rows<const Q8: bool>(
        data: &[u8],
        row_bytes: usize,
        pos: Range<usize>,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        let (w, bb) = (cols.len(), if Q8 { 34 } else { 18 });
        for (p, o) in pos.zip(out.chunks_exact_mut(w)) {
            for (i, o) in o.chunks_exact_mut(32).enumerate() {
                let b = &data[p * row_bytes + (cols.start / 32 + i) * bb..][..bb];
                let d = _mm512_set1_ps(scale(b));
                // SAFETY: 32 (q8_0) or 16 (q4_0) bytes of quants from byte 2 of the block;
                // 32 outputs.
                let (x0, x1) = unsafe {
                    if Q8 {
                        let q = |h: usize| _mm_loadu_si128(b.as_ptr().add(2 + 16 * h).cast());
                        (_mm512_cvtepi8_epi32(q(0)), _mm512_cvtepi8_epi32(q(1)))
                    } else {
                        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.as_ptr().add(2).cast()));
                        // Low nibbles are values 0..16, high nibbles 16..32, each minus 8.
                        let eight = _mm512_set1_epi32(8);
                        (
                            _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(15)), eight),
                            _mm512_sub_epi32(_mm512_srli_epi32::<4>(q), eight),
                        )
                    }
                };
                for (h, x) in [x0, x1].into_iter().enumerate() {
                    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(x), d);
                    // SAFETY: 16 outputs from 16 * h of 32.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * h), y) };
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The F16C form (which an AVX-512 machine never picks) equals the plain conversion,
    /// infinities and NaN included.
    #[test]
    fn f16c_rows_equal_plain() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        let mut rng = crate::rng::Rng::new(3);
        let (kv_dim, n) = (48, 7);
        let mut d: Vec<f16> = rng
            .vec(kv_dim * n, 70000.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        d[5] = f16::NAN;
        d[50] = f16::NEG_INFINITY;
        let (pos, cols) = (2..7, 8..40);
        let mut want = vec![0.0f32; pos.len() * cols.len()];
        for (p, o) in pos.clone().zip(want.chunks_exact_mut(cols.len())) {
            for (o, x) in o
                .iter_mut()
                .zip(&d[p * kv_dim + cols.start..p * kv_dim + cols.end])
            {
                *o = x.to_f32();
            }
        }
        let mut got = vec![0.0f32; want.len()];
        // SAFETY: F16C is available; rows 2..7 and columns 8..40 lie inside 7 rows of 48.
        unsafe { fast::f16_rows_f16c(d.as_ptr().cast(), kv_dim, pos, cols, &mut got) };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }
}
