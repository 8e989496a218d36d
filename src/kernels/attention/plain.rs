//! The plain twins: the obvious loops, in the order the SIMD kernels reproduce.

/// Attention score q · k: eight partial sums added in order at the end (see the module docs for
/// why this order).
pub(super) fn dot_seq(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
        for i in 0..x.len() {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

pub(super) fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, s: &mut [f32]) {
    let hd = q.len();
    for (j, sj) in s.iter_mut().enumerate() {
        *sj = dot_seq(q, &k[j * stride..j * stride + hd]) * scale;
    }
}

/// `o += sum_j p[j] * v_rows[j]`, keys in order (callers start from zeros, or from the sum
/// over the keys before `p`'s: the same operations in the same order either way).
pub(super) fn values(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    let hd = o.len();
    for (j, &pj) in p.iter().enumerate() {
        for (a, &b) in o.iter_mut().zip(&v[j * stride..j * stride + hd]) {
            *a += pj * b;
        }
    }
}
