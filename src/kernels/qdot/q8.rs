//! Activation quantization, value for value as ggml's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q8_1_ref`, `quantize_row_q8_K_ref`).
//!
//! ggml's x86 build quantizes Q8_0/Q8_1 activations with its own AVX code, which computes the
//! inverse scale as `127 / amax` and rounds halves to even, so on rare ties it differs from the
//! reference by one unit in one quant. dsrun follows the reference on every CPU, so results do
//! not depend on the machine. (Q8_K has no SIMD variant in ggml: its x86 path is the reference.)

use super::{ActKind, ActRow, QK8_0, QK_K};
use crate::tensor::quants::float::{f16_to_f32, f32_to_f16_bits};
use crate::tensor::quants::k_quants::BlockQ8K;
use crate::tensor::quants::legacy::{BlockQ8_0, BlockQ8_1};
use crate::tensor::quants::Quantize;

/// Quantizes 32 values into `qs`; returns (scale, sum of the quants, and for Q8_1 its `s`), the
/// f16 scale and `s` widened to f32. The encoding is the crate's own ggml-exact Q8_0 / Q8_1
/// encoder.
pub(super) fn quantize_block_q8_0(
    x: &[f32],
    qs: &mut [i8],
    with_s: bool,
) -> (f32, i32, Option<f32>) {
    let (d, q, s) = if with_s {
        let b = BlockQ8_1::from_f32(x);
        (b.d, b.qs, Some(f16_to_f32(b.s)))
    } else {
        let b = BlockQ8_0::from_f32(x);
        (b.d, b.qs, None)
    };
    let mut sum = 0i32;
    for (dst, &src) in qs.iter_mut().zip(&q) {
        *dst = src as i8;
        sum += src as i8 as i32;
    }
    (f16_to_f32(d), sum, s)
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves the rounded (half to even) integer in the low
/// mantissa bits. Exact for |x| < 2^22; other inputs (NaN, infinities) give what ggml's bits
/// give, which the reference then stores.
fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12582912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Quantizes 256 values into `qs` and their 16-value sums into `bsums`; returns the f32 scale.
/// The value of largest magnitude maps to -127 or 127 (`iscale = -127 / max`).
pub(super) fn quantize_block_q8_k(x: &[f32], qs: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        qs.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (sum, q16) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *sum = q16.iter().map(|&q| q as i32).sum::<i32>() as i16;
    }
    1.0 / iscale
}

/// Whether the selected SIMD level has the AVX-512 quantizers ([`super::q8_avx512`]).
pub(super) fn fast() -> bool {
    super::selected_level() >= super::SimdLevel::Avx512Vnni
}

/// [`quantize_block_q8_0`] through its AVX-512 twin where `fast` and the block allow it.
pub(super) fn q8_0_block(
    fast: bool,
    x: &[f32],
    qs: &mut [i8],
    with_s: bool,
) -> (f32, i32, Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` says the CPU has the level's features.
        if let Some(r) = unsafe { super::q8_avx512::quantize_block_q8_0(x, qs, with_s) } {
            return r;
        }
    }
    let _ = fast;
    quantize_block_q8_0(x, qs, with_s)
}

/// [`quantize_block_q8_k`] through its AVX-512 twin where `fast` and the block allow it.
pub(super) fn q8_k_block(fast: bool, x: &[f32], qs: &mut [i8], bsums: &mut [i16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` says the CPU has the level's features.
        if let Some(d) = unsafe { super::q8_avx512::quantize_block_q8_k(x, qs, bsums) } {
            return d;
        }
    }
    let _ = fast;
    quantize_block_q8_k(x, qs, bsums)
}

/// One activation row in ggml's block layout (see `QuantizedActs::to_ggml_row`).
pub(super) fn to_ggml_row(kind: ActKind, a: &ActRow<'_>) -> Vec<u8> {
    let f16 = |x: f32| f32_to_f16_bits(x).to_le_bytes();
    let mut out = Vec::new();
    match kind {
        ActKind::F32 => out.extend(a.f.iter().flat_map(|v| v.to_le_bytes())),
        ActKind::Q8_0 | ActKind::Q8_1 => {
            let size = if kind == ActKind::Q8_0 {
                std::mem::size_of::<BlockQ8_0>()
            } else {
                std::mem::size_of::<BlockQ8_1>()
            };
            for (i, q) in a.qs.chunks_exact(QK8_0).enumerate() {
                out.extend(f16(a.d[i]));
                if kind == ActKind::Q8_1 {
                    out.extend(f16(a.s[i]));
                }
                out.extend(q.iter().map(|&v| v as u8));
                debug_assert_eq!(out.len(), (i + 1) * size);
            }
        }
        ActKind::Q8K => {
            for (i, q) in a.qs.chunks_exact(QK_K).enumerate() {
                out.extend(a.d[i].to_le_bytes());
                out.extend(q.iter().map(|&v| v as u8));
                for &s in &a.bsums[i * 16..(i + 1) * 16] {
                    out.extend(s.to_le_bytes());
                }
                debug_assert_eq!(out.len(), (i + 1) * std::mem::size_of::<BlockQ8K>());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-126.6), -127);
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    #[test]
    fn q8_k_known_block() {
        let mut x = [0.0f32; 256];
        x[0] = -2.0;
        x[17] = 1.0;
        x[255] = 0.5;
        let (mut qs, mut bsums) = ([0i8; 256], [0i16; 16]);
        let d = quantize_block_q8_k(&x, &mut qs, &mut bsums);
        assert_eq!(d, 1.0 / (127.0 / 2.0));
        // nearest_int(63.5) rounds to even: 64.
        assert_eq!((qs[0], qs[17], qs[255]), (-127, 64, 32));
        assert_eq!((bsums[0], bsums[1], bsums[15]), (-127, 64, 32));

        let d = quantize_block_q8_k(&[0.0; 256], &mut qs, &mut bsums);
        assert_eq!(d, 0.0);
        assert!(qs.iter().all(|&q| q == 0) && bsums.iter().all(|&s| s == 0));
    }

    #[test]
    fn q8_0_sums() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
        let mut qs = [0i8; 32];
        let (d, sum, s) = quantize_block_q8_0(&x, &mut qs, true);
        assert_eq!(sum, qs.iter().map(|&q| q as i32).sum::<i32>());
        assert_eq!(qs[31], 127);
        let s = s.unwrap();
        assert!((s - d * sum as f32).abs() <= s.abs() * 1e-3);
    }
}
