//! AVX-512 kernels for several query heads that share one key/value head (grouped-query
//! attention): each key and value row is loaded once for the whole group instead of once per
//! head, and scores use both halves of a 512-bit register (two heads side by side).
//!
//! The arithmetic of every (head, key) and every output element is the AVX2/AVX-512 twins'
//! (see the module docs): a score is eight lane sums of multiplies then adds, added in lane
//! order; a value element is a run of multiplies then adds over the keys in order. So results
//! equal the plain twin's bit for bit.
//!
//! Measured on gemma-3-270m (4 heads share each key/value head, head dim 256), pp512, 1 thread,
//! `perf record`, 2026-11-29: attention was 28% of the prompt time with the per-head kernels
//! once the matrix products used the GEMM.

use std::arch::x86_64::*;

use super::avx2::transpose8;

/// Scores of two query heads `qa`, `qb` against the same keys: `sa[j]`, `sb[j]` as
/// [`super::plain::scores`] computes them.
pub(super) fn scores_pair(
    (qa, qb): (&[f32], &[f32]),
    k: &[f32],
    stride: usize,
    scale: f32,
    (sa, sb): (&mut [f32], &mut [f32]),
) {
    let hd = qa.len();
    assert!(
        hd.is_multiple_of(8) && hd > 0 && qb.len() == hd,
        "head_dim {hd}"
    );
    assert_eq!(sa.len(), sb.len());
    assert!(sa.is_empty() || k.len() >= (sa.len() - 1) * stride + hd);
    // SAFETY: the dispatcher calls this only on CPUs with the AVX-512 VNNI level (F among
    // them, and AVX2).
    unsafe { scores_pair_avx512(qa, qb, k, stride, scale, sa, sb) }
}

#[target_feature(enable = "avx512f,avx2,avx")]
unsafe fn scores_pair_avx512(
    qa: &[f32],
    qb: &[f32],
    k: &[f32],
    stride: usize,
    scale: f32,
    sa: &mut [f32],
    sb: &mut [f32],
) {
    let hd = qa.len();
    let n = sa.len();
    let kp = k.as_ptr();
    let vscale = _mm256_set1_ps(scale);
    // SAFETY (every load): key row j spans j * stride .. j * stride + hd inside `k` (asserted
    // by the caller); query offsets stay below hd; stores stay inside sa/sb (8 from 8b < n).
    unsafe {
        // Two 8-float halves joined and one broadcast to both halves, through the 64-bit-lane
        // forms of AVX-512 F (the 32-bit ones need DQ, which the level does not check).
        let q_at = |c: usize| {
            let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(qa.as_ptr().add(c))));
            let hi = _mm256_castps_pd(_mm256_loadu_ps(qb.as_ptr().add(c)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
        };
        let k_at = |j: usize, c: usize| {
            let k8 = _mm256_castps_pd(_mm256_loadu_ps(kp.add(j * stride + c)));
            _mm512_castpd_ps(_mm512_broadcast_f64x4(k8))
        };
        for b in 0..n / 8 {
            let mut acc = [_mm512_setzero_ps(); 8];
            for c in (0..hd).step_by(8) {
                let qv = q_at(c);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(qv, k_at(8 * b + r, c)));
                }
            }
            for (half, s) in [&mut *sa, &mut *sb].into_iter().enumerate() {
                let rows: [__m256; 8] = std::array::from_fn(|r| {
                    if half == 0 {
                        _mm512_castps512_ps256(acc[r])
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r])))
                    }
                });
                // -0.0 + x == x: the same start as `Sum for f32`.
                let mut sum = _mm256_set1_ps(-0.0);
                for v in transpose8(rows) {
                    sum = _mm256_add_ps(sum, v);
                }
                _mm256_storeu_ps(s.as_mut_ptr().add(8 * b), _mm256_mul_ps(sum, vscale));
            }
        }
        for j in n / 8 * 8..n {
            let mut acc = _mm512_setzero_ps();
            for c in (0..hd).step_by(8) {
                acc = _mm512_add_ps(acc, _mm512_mul_ps(q_at(c), k_at(j, c)));
            }
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
            sa[j] = lanes[..8].iter().sum::<f32>() * scale;
            sb[j] = lanes[8..].iter().sum::<f32>() * scale;
        }
    }
}

/// `o[h] += sum_j p[h][j] * v_rows[j]` for `Q` heads (2 or 4) sharing the value rows, as
/// [`super::plain::values`] computes each. `o` is the `Q` heads' outputs, head after head.
pub(super) fn values_group<const Q: usize>(
    p: [&[f32]; Q],
    v: &[f32],
    stride: usize,
    o: &mut [f32],
) {
    let hd = o.len() / Q;
    assert!(
        hd.is_multiple_of(16) && hd > 0 && o.len() == Q * hd,
        "head_dim {hd}"
    );
    let n = p[0].len();
    assert!(p.iter().all(|x| x.len() == n));
    assert!(n == 0 || v.len() >= (n - 1) * stride + hd);
    // SAFETY: the dispatcher calls this only on CPUs with AVX-512 F.
    unsafe { values_group_avx512::<Q>(p, v, stride, o) }
}

#[target_feature(enable = "avx512f")]
unsafe fn values_group_avx512<const Q: usize>(
    p: [&[f32]; Q],
    v: &[f32],
    stride: usize,
    o: &mut [f32],
) {
    let hd = o.len() / Q;
    let mut c0 = 0;
    type Pass<const Q: usize> = unsafe fn([&[f32]; Q], &[f32], usize, usize, &mut [f32]);
    // Widest first; Q * V accumulators stay at or below 16 registers.
    let passes: &[(usize, Pass<Q>)] = if Q == 2 {
        &[
            (128, values_pass::<Q, 8>),
            (64, values_pass::<Q, 4>),
            (32, values_pass::<Q, 2>),
            (16, values_pass::<Q, 1>),
        ]
    } else {
        &[
            (64, values_pass::<Q, 4>),
            (32, values_pass::<Q, 2>),
            (16, values_pass::<Q, 1>),
        ]
    };
    // SAFETY (each pass): c0 + width <= hd, and value rows span hd values inside `v`.
    unsafe {
        while hd - c0 >= passes[0].0 {
            (passes[0].1)(p, v, stride, c0, o);
            c0 += passes[0].0;
        }
        for &(width, pass) in &passes[1..] {
            if hd - c0 >= width {
                pass(p, v, stride, c0, o);
                c0 += width;
            }
        }
    }
}

/// Output elements `c0 .. c0 + 16 * V` of each of the `Q` heads in one pass over the keys.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn values_pass<const Q: usize, const V: usize>(
    p: [&[f32]; Q],
    v: &[f32],
    stride: usize,
    c0: usize,
    o: &mut [f32],
) {
    let hd = o.len() / Q;
    let vp = v.as_ptr();
    // SAFETY: h * hd + c0 + 16 * V <= Q * hd = o.len().
    let mut acc: [[__m512; V]; Q] = std::array::from_fn(|h| {
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(o.as_ptr().add(h * hd + c0 + 16 * i)) })
    });
    #[allow(clippy::needless_range_loop)] // j indexes every head's probabilities
    for j in 0..p[0].len() {
        let mut x = [_mm512_setzero_ps(); V];
        for (i, xi) in x.iter_mut().enumerate() {
            // SAFETY: value row j spans j * stride .. j * stride + hd, inside `v`, and
            // c0 + 16 * V <= hd.
            *xi = unsafe { _mm512_loadu_ps(vp.add(j * stride + c0 + 16 * i)) };
        }
        for (h, a) in acc.iter_mut().enumerate() {
            let pv = _mm512_set1_ps(p[h][j]);
            for (ai, &xi) in a.iter_mut().zip(&x) {
                *ai = _mm512_add_ps(*ai, _mm512_mul_ps(pv, xi));
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        for (i, ai) in a.iter().enumerate() {
            // SAFETY: h * hd + c0 + 16 * V <= Q * hd = o.len().
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(h * hd + c0 + 16 * i), *ai) };
        }
    }
}
