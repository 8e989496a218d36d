//! Matrix products of a (quantized) weight matrix with f32 activations.
//!
//! The plain path: each weight row is decoded to f32 once and dotted with every token of the
//! batch, so a prompt of n tokens reads the weights once, not n times. Rows are split across
//! rayon threads; each output element is the same sequential dot product as in the serial twin,
//! so the threaded result is bit-identical.

use crate::tensor::TensorView;
use rayon::prelude::*;

/// Dot product with eight interleaved partial sums (lane i sums elements i, i+8, …), added
/// pairwise at the end. The fixed order makes it deterministic, and independent lanes let the
/// compiler use SIMD registers on any target (a single running sum cannot be vectorised).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[i] += x * y;
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// `out[t][r] = W[r] · x[t]` for `n_tok` tokens. `x` is (n_tok, n_cols), `out` is (n_tok, n_rows).
pub fn matmul_serial(w: &TensorView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    let (k, m) = (w.n_cols, w.n_rows);
    assert_eq!(x.len(), n_tok * k, "{}: input shape", w.name);
    assert_eq!(out.len(), n_tok * m, "{}: output shape", w.name);
    let mut row = vec![0.0f32; k];
    for r in 0..m {
        w.dequantize_row(r, &mut row);
        for t in 0..n_tok {
            out[t * m + r] = dot(&row, &x[t * k..(t + 1) * k]);
        }
    }
}

/// Rows per rayon task: enough work to amortise scheduling, small enough to balance two cores.
const ROWS_PER_TASK: usize = 16;

/// Threaded twin of [`matmul_serial`]: same result, bit for bit.
pub fn matmul(w: &TensorView, x: &[f32], n_tok: usize, out: &mut [f32]) {
    let (k, m) = (w.n_cols, w.n_rows);
    assert_eq!(x.len(), n_tok * k, "{}: input shape", w.name);
    assert_eq!(out.len(), n_tok * m, "{}: output shape", w.name);
    // (m, n_tok) blocks computed in parallel, then transposed into (n_tok, m).
    let blocks: Vec<Vec<f32>> = (0..m.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|b| {
            let r0 = b * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(m);
            let mut row = vec![0.0f32; k];
            let mut res = Vec::with_capacity((r1 - r0) * n_tok);
            for r in r0..r1 {
                w.dequantize_row(r, &mut row);
                for t in 0..n_tok {
                    res.push(dot(&row, &x[t * k..(t + 1) * k]));
                }
            }
            res
        })
        .collect();
    for (b, res) in blocks.iter().enumerate() {
        let r0 = b * ROWS_PER_TASK;
        for (i, chunk) in res.chunks_exact(n_tok).enumerate() {
            for (t, &v) in chunk.iter().enumerate() {
                out[t * m + r0 + i] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::GgmlType;

    #[test]
    fn threaded_equals_serial() {
        let (k, m, n_tok) = (64, 37, 3);
        let w: Vec<f32> = (0..k * m)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView {
            name: "w",
            ty: GgmlType::F32,
            n_cols: k,
            n_rows: m,
            row_bytes: k * 4,
            data: &bytes,
        };
        let x: Vec<f32> = (0..k * n_tok)
            .map(|i| (i % 13) as f32 / 7.0 - 0.9)
            .collect();
        let mut a = vec![0.0; n_tok * m];
        let mut b = vec![0.0; n_tok * m];
        matmul_serial(&view, &x, n_tok, &mut a);
        matmul(&view, &x, n_tok, &mut b);
        assert_eq!(a, b);
        let want: f32 = (0..k).map(|i| w[5 * k + i] * x[k + i]).sum();
        assert!((a[m + 5] - want).abs() < 1e-4);
    }
}
