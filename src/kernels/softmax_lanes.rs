//! Attention's softmax: the same result on every CPU, and vectorised where AVX-512 is present.
//!
//! [`softmax`](super::softmax::softmax) calls libm's `expf` once per element and sums in
//! order, a dependency chain the compiler cannot vectorise; in a 512-token prompt of the tiny
//! Qwen3-MoE that was about 35% of the time at two threads (`perf record`: 13% in `__expf_fma`,
//! most of the attention loop's own 22%). Here:
//!
//! - `exp` is [`exp_lanes`]: `x = n ln2 + r` with `n = round(x log2 e)` (ties to even), `r`
//!   from a two-part `ln 2` with fused multiply-adds, a degree-6 polynomial (Horner, fused) and
//!   `2^n` built from its bits. Relative error under 2.5e-7 against f64 `exp` (tested), inputs
//!   below -87.3 (and -inf) give 0, as `expf` underflows there too;
//! - the sum runs in [`LANES`] partial sums (element `i` into lane `i % 16`), added in lane
//!   order at the end; the normalisation multiplies by `1 / sum`.
//!
//! [`softmax_plain`] is the scalar twin; [`softmax_avx512`] computes the same values bit for
//! bit (tested), 16 elements per instruction.

/// Partial sums of the normalising sum.
pub const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` in two parts: `LN2_HI` has trailing zero bits, so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` underflows to 0 (2^-126 is the last normal power of two).
const MIN_X: f32 = -87.336_54;
/// Taylor-like coefficients of `e^r` on [-ln2/2, ln2/2] (minimax, Cephes' `expf`).
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// `e^x` as the softmax uses it (for `x <= 0`; see the module docs). The scalar twin of the
/// AVX-512 lanes.
#[inline]
pub fn exp_lanes(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < MIN_X {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    // e^r = 1 + r + r^2 * p(r)
    let e = (p * r).mul_add(r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of `x` in place (max-subtracted), the scalar twin.
pub fn softmax_plain(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut acc = [0.0f32; LANES];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp_lanes(*v - max);
        acc[i % LANES] += *v;
    }
    let inv = 1.0 / acc.iter().fold(0.0f32, |s, &a| s + a);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_plain`]'s values, 16 at a time.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let p = x.as_mut_ptr();
    let tail = n % LANES;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as u16;
    let body = n - tail;
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < body {
        vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(p.add(i)));
        i += LANES;
    }
    let mut max = _mm512_reduce_max_ps(vmax);
    for &v in &x[body..] {
        max = max.max(v);
    }
    // The scalar fold's max: NaN-free inputs give the same value in any order.
    if max == f32::NEG_INFINITY || max.is_nan() {
        if max.is_nan() {
            softmax_plain(x);
        }
        return;
    }
    let vm = _mm512_set1_ps(max);
    let exp = |v: __m512| -> __m512 {
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_set1_ps(MIN_X));
        let nn = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(v, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(nn, _mm512_set1_ps(LN2_HI), v);
        let r = _mm512_fnmadd_ps(nn, _mm512_set1_ps(LN2_LO), r);
        let mut q = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(
            _mm512_fmadd_ps(_mm512_mul_ps(q, r), r, r),
            _mm512_set1_ps(1.0),
        );
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(nn),
            _mm512_set1_epi32(127),
        ));
        let e = _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
        _mm512_mask_mov_ps(e, below, _mm512_setzero_ps())
    };
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < body {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vm));
        _mm512_storeu_ps(p.add(i), e);
        acc = _mm512_add_ps(acc, e);
        i += LANES;
    }
    if tail > 0 {
        let v = _mm512_maskz_loadu_ps(tail_mask, p.add(body));
        let e = _mm512_maskz_mov_ps(tail_mask, exp(_mm512_sub_ps(v, vm)));
        _mm512_mask_storeu_ps(p.add(body), tail_mask, e);
        acc = _mm512_add_ps(acc, e);
    }
    let mut lanes = [0.0f32; LANES];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    let inv = _mm512_set1_ps(1.0 / lanes.iter().fold(0.0f32, |s, &a| s + a));
    let mut i = 0;
    while i < body {
        _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
        i += LANES;
    }
    if tail > 0 {
        let v = _mm512_maskz_loadu_ps(tail_mask, p.add(body));
        _mm512_mask_storeu_ps(p.add(body), tail_mask, _mm512_mul_ps(v, inv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn exp_is_close_to_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_lanes(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_lanes(0.0), 1.0);
        assert_eq!(exp_lanes(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lanes(-100.0), 0.0);
        assert!(exp_lanes(f32::NAN).is_nan());
    }

    #[test]
    fn plain_sums_to_one_and_masks() {
        let mut x = vec![1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax_plain(&mut x);
        assert_eq!(x[2], 0.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut all_masked = vec![f32::NEG_INFINITY; 5];
        softmax_plain(&mut all_masked);
        assert!(all_masked.iter().all(|v| *v == f32::NEG_INFINITY));
    }

    #[test]
    fn avx512_equals_plain_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let mut rng = Rng::new(7);
        for n in (1..70).chain([255, 256, 257, 1000]) {
            for spread in [0.5f32, 8.0, 60.0, 200.0] {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        if i % 13 == 5 {
                            f32::NEG_INFINITY
                        } else {
                            rng.symmetric() * spread
                        }
                    })
                    .collect();
                let (mut a, mut b) = (x.clone(), x.clone());
                softmax_plain(&mut a);
                // SAFETY: AVX-512 F checked above.
                unsafe { softmax_avx512(&mut b) };
                let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "n {n} spread {spread}");
            }
        }
    }
}
