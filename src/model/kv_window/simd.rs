//! The dot product and axpy of the windowed path: AVX2 + FMA chosen at run time, plain twins.

/// `a · b`: AVX2 + FMA where the CPU has them (chosen once), else the plain loop.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { avx2::dot(a, b) };
    }
    dot_plain(a, b)
}

/// `out += p * x`, as `dot`.
pub(super) fn axpy(out: &mut [f32], p: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { avx2::axpy(out, p, x) };
    }
    axpy_plain(out, p, x)
}

pub(super) fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

pub(super) fn axpy_plain(out: &mut [f32], p: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += p * v;
    }
}
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Two 8-lane FMA accumulators over blocks of 16, then blocks of 8, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): i + 16 (or i + 8) <= n, within both slices.
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(out: &mut [f32], p: f32, x: &[f32]) {
        let n = out.len().min(x.len());
        let (po, px) = (out.as_mut_ptr(), x.as_ptr());
        let vp = _mm256_set1_ps(p);
        let mut i = 0;
        // SAFETY: i + 8 <= n, within both slices.
        while i + 8 <= n {
            let o = _mm256_fmadd_ps(vp, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(po.add(i)));
            _mm256_storeu_ps(po.add(i), o);
            i += 8;
        }
        while i < n {
            out[i] += p * x[i];
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The SIMD dot product and axpy equal their plain twins on odd lengths.
    #[test]
    fn simd_equals_plain() {
        let mut rng = Rng::new(3);
        for n in [1, 7, 8, 15, 16, 17, 64, 100] {
            let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
            let (d, p) = (dot(&a, &b), dot_plain(&a, &b));
            assert!(
                (d - p).abs() <= 1e-5 * (1.0 + p.abs()),
                "dot {n}: {d} vs {p}"
            );
            let (mut o1, mut o2) = (a.clone(), a.clone());
            axpy(&mut o1, 0.37, &b);
            axpy_plain(&mut o2, 0.37, &b);
            assert!(o1
                .iter()
                .zip(&o2)
                .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs())));
        }
    }
}
