//! AVX2 twins of [`super::plain`], equal bit for bit: the same multiplies and adds in the same
//! order, eight lanes at a time. They need only AVX (the dispatcher checks the AVX2 level) and
//! a head dimension that is a multiple of 8.

use std::arch::x86_64::*;

/// Transposes eight rows of eight lanes: lane `k` of result `i` is lane `i` of input `k`.
#[inline(always)]
pub(super) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// The lanes of `acc` added in order, as `dot_seq` does.
#[inline(always)]
unsafe fn lane_sum(acc: __m256) -> f32 {
    let mut a = [0.0f32; 8];
    // SAFETY: 8 writable floats.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), acc) };
    a.iter().sum()
}

pub(super) fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, s: &mut [f32]) {
    let hd = q.len();
    assert!(hd.is_multiple_of(8) && hd > 0, "head_dim {hd}");
    assert!(s.is_empty() || k.len() >= (s.len() - 1) * stride + hd);
    // SAFETY: the dispatcher calls this only on CPUs with AVX2 (hence AVX).
    unsafe { scores_avx(q, k, stride, scale, s) }
}

#[target_feature(enable = "avx")]
unsafe fn scores_avx(q: &[f32], k: &[f32], stride: usize, scale: f32, s: &mut [f32]) {
    let hd = q.len();
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let vscale = _mm256_set1_ps(scale);
    let (s8, rest) = s.as_chunks_mut::<8>();
    // SAFETY (every load): key row j spans j * stride .. j * stride + hd, inside `k` (asserted
    // by the caller), and query offsets stay below hd.
    for (b, sb) in s8.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(8) {
            unsafe {
                let qv = _mm256_loadu_ps(qp.add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    let kv = _mm256_loadu_ps(kp.add((8 * b + r) * stride + c));
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, kv));
                }
            }
        }
        unsafe {
            let tr = transpose8(acc);
            // -0.0 + x == x: the same start as `Sum for f32`.
            let mut sum = _mm256_set1_ps(-0.0);
            for v in tr {
                sum = _mm256_add_ps(sum, v);
            }
            _mm256_storeu_ps(sb.as_mut_ptr(), _mm256_mul_ps(sum, vscale));
        }
    }
    let done = s8.len() * 8;
    for (i, sj) in rest.iter_mut().enumerate() {
        let j = done + i;
        let mut acc = _mm256_setzero_ps();
        for c in (0..hd).step_by(8) {
            unsafe {
                let kv = _mm256_loadu_ps(kp.add(j * stride + c));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qp.add(c)), kv));
            }
        }
        *sj = unsafe { lane_sum(acc) } * scale;
    }
}

pub(super) fn values(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    assert!(hd.is_multiple_of(8) && hd > 0, "head_dim {hd}");
    assert!(p.is_empty() || v.len() >= (p.len() - 1) * stride + hd);
    // SAFETY: the dispatcher calls this only on CPUs with AVX2 (hence AVX).
    unsafe { values_avx(p, v, stride, o) }
}

#[target_feature(enable = "avx")]
unsafe fn values_avx(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    let mut c0 = 0;
    // SAFETY (each pass): c0 + 8 * V <= hd, and value rows span hd values inside `v`.
    unsafe {
        while hd - c0 >= 64 {
            values_pass::<8>(p, v, stride, c0, o);
            c0 += 64;
        }
        for (width, pass) in [
            (
                32,
                values_pass::<4> as unsafe fn(&[f32], &[f32], usize, usize, &mut [f32]),
            ),
            (16, values_pass::<2>),
            (8, values_pass::<1>),
        ] {
            if hd - c0 >= width {
                pass(p, v, stride, c0, o);
                c0 += width;
            }
        }
    }
}

/// Output elements `c0 .. c0 + 8 * V` in one pass over the keys, `V` accumulators of eight
/// (a fixed count, so that they stay in registers).
#[target_feature(enable = "avx")]
#[inline]
unsafe fn values_pass<const V: usize>(
    p: &[f32],
    v: &[f32],
    stride: usize,
    c0: usize,
    o: &mut [f32],
) {
    let vp = v.as_ptr();
    // SAFETY: c0 + 8 * V <= hd = o.len().
    let mut acc: [__m256; V] =
        std::array::from_fn(|i| unsafe { _mm256_loadu_ps(o.as_ptr().add(c0 + 8 * i)) });
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pj);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: value row j spans j * stride .. j * stride + hd, inside `v`, and
            // c0 + 8 * V <= hd.
            let x = unsafe { _mm256_loadu_ps(vp.add(j * stride + c0 + 8 * i)) };
            *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
        }
    }
    for (i, a) in acc.iter().enumerate() {
        // SAFETY: c0 + 8 * V <= hd = o.len().
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * i), *a) };
    }
}
