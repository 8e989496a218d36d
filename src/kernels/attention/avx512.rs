//! AVX-512 value sums: the AVX2 twin's multiplies and adds on sixteen lanes at a time (each
//! output element sees the same operations in the same order, so the results are equal bit for
//! bit), with up to 256 output elements per pass over the keys: one pass for a 256-wide head
//! where AVX2 makes four. Scores stay with AVX2, whose eight lanes are the order of `dot_seq`.

use std::arch::x86_64::*;

pub(super) fn values(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    assert!(hd.is_multiple_of(16) && hd > 0, "head_dim {hd}");
    assert!(p.is_empty() || v.len() >= (p.len() - 1) * stride + hd);
    // SAFETY: the dispatcher calls this only on CPUs with AVX-512 F.
    unsafe { values_avx512(p, v, stride, o) }
}

#[target_feature(enable = "avx512f")]
unsafe fn values_avx512(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    let mut c0 = 0;
    type Pass = unsafe fn(&[f32], &[f32], usize, usize, &mut [f32]);
    // SAFETY (each pass): c0 + 16 * V <= hd, and value rows span hd values inside `v`.
    unsafe {
        while hd - c0 >= 256 {
            values_pass::<16>(p, v, stride, c0, o);
            c0 += 256;
        }
        for (width, pass) in [
            (128, values_pass::<8> as Pass),
            (64, values_pass::<4>),
            (32, values_pass::<2>),
            (16, values_pass::<1>),
        ] {
            if hd - c0 >= width {
                pass(p, v, stride, c0, o);
                c0 += width;
            }
        }
    }
}

/// Output elements `c0 .. c0 + 16 * V` in one pass over the keys.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn values_pass<const V: usize>(
    p: &[f32],
    v: &[f32],
    stride: usize,
    c0: usize,
    o: &mut [f32],
) {
    let vp = v.as_ptr();
    // SAFETY: c0 + 16 * V <= hd = o.len().
    let mut acc: [__m512; V] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(o.as_ptr().add(c0 + 16 * i)) });
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm512_set1_ps(pj);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: value row j spans j * stride .. j * stride + hd, inside `v`, and
            // c0 + 16 * V <= hd.
            let x = unsafe { _mm512_loadu_ps(vp.add(j * stride + c0 + 16 * i)) };
            *a = _mm512_add_ps(*a, _mm512_mul_ps(pv, x));
        }
    }
    for (i, a) in acc.iter().enumerate() {
        // SAFETY: c0 + 16 * V <= hd = o.len().
        unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * i), *a) };
    }
}
