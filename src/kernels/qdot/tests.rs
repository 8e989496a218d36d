//! Every weight type at every SIMD level this CPU has, on random data and odd block counts:
//!
//! (a) SIMD against the plain twin, within 1e-6 of `sum |w_i * a_i|` (the integer part is the
//!     same; only the order of float additions of block sums differs);
//! (b) plain against an f64 dot of the dequantized weights and dequantized activations, within
//!     1e-5 of the same scale;
//! (c) plain against the f32 dot of the dequantized weights with the unquantized activations,
//!     within the error of the activation format (half a quantization step per value, see
//!     [`act_error_bound`]), and under ggml's `MAX_DOT_PRODUCT_ERROR` on ggml's own test data;
//! (e) `qmatmul` against `kernels::matmul::matmul`, and against `vec_dot` element by element.
//!
//! Byte-exactness of the activation quantizers against ggml is in `tests/qdot_vs_ggml.rs`.

use super::*;
use crate::kernels::matmul::matmul;
use crate::tensor::quants::{as_blocks_mut, k_quants, legacy};
use crate::tensor::{dequantize, TensorView};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit() * 2.0 - 1.0).sum::<f32>() * 0.87
    }
    /// Mostly normal values, with a few outliers as real activations have.
    fn activation(&mut self) -> f32 {
        let x = self.normal();
        if self.next().is_multiple_of(61) {
            x * 20.0
        } else {
            x
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// f16 bits of a random value of magnitude 2^-10 .. 2^-4.
    fn scale_f16(&mut self) -> [u8; 2] {
        let exp = 5 + (self.next() % 7) as u16; // biased exponent: 2^-10 .. 2^-4
        let bits = ((self.next() % 2) as u16) << 15 | exp << 10 | (self.next() % 1024) as u16;
        bits.to_le_bytes()
    }
}

/// Every type with a kernel or the fallback.
const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Iq4Nl,
    GgmlType::Mxfp4,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Xs,
    GgmlType::Q8_1,
    GgmlType::Q8K,
];

/// Row lengths: 1, 3, 7, 8 and 33 blocks (for float types also a long row, so SIMD main loops
/// run).
fn lengths(ty: GgmlType) -> Vec<usize> {
    let bs = ty.block_size().unwrap();
    let mut v: Vec<usize> = [1, 3, 7, 8, 33].iter().map(|n| n * bs).collect();
    if bs == 1 {
        v.extend([64, 1031]);
    }
    v
}

/// Weight rows that ggml's quantizer made from random floats.
fn quantized_rows(ty: GgmlType, k: usize, n_rows: usize, rng: &mut Rng) -> Vec<u8> {
    let x: Vec<f32> = (0..k * n_rows).map(|_| rng.normal()).collect();
    dsrun_quantize::ggml_quantize(ty.id(), &x, k).expect("ggml quantizes the type")
}

/// Weight rows of random bytes whose float scales are made finite and moderate, so every quant
/// bit pattern occurs (Q8_0's -128, Q6_K's extremes, large k-quant scales).
fn random_rows(ty: GgmlType, k: usize, n_rows: usize, rng: &mut Rng) -> Vec<u8> {
    let mut w = rng.bytes(ty.row_bytes((k * n_rows) as u64).unwrap() as usize);
    match ty {
        GgmlType::F32 => {
            for c in w.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.normal().to_le_bytes());
            }
        }
        GgmlType::F16 | GgmlType::Bf16 => {
            for c in w.chunks_exact_mut(2) {
                let x = rng.normal();
                let bits = if ty == GgmlType::F16 {
                    half::f16::from_f32(x).to_bits()
                } else {
                    half::bf16::from_f32(x).to_bits()
                };
                c.copy_from_slice(&bits.to_le_bytes());
            }
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Iq4Nl => {
            let size = ty.type_size().unwrap();
            for b in w.chunks_exact_mut(size) {
                b[..2].copy_from_slice(&rng.scale_f16());
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => {
            let size = ty.type_size().unwrap();
            for b in w.chunks_exact_mut(size) {
                b[..2].copy_from_slice(&rng.scale_f16());
                b[2..4].copy_from_slice(&rng.scale_f16());
            }
        }
        GgmlType::Mxfp4 => {
            for b in w.chunks_exact_mut(17) {
                b[0] = 118 + (rng.next() % 12) as u8;
            }
        }
        GgmlType::Q2K => {
            for b in as_blocks_mut::<k_quants::BlockQ2K>(&mut w) {
                (b.d, b.dmin) = (rng.scale_f16(), rng.scale_f16());
            }
        }
        GgmlType::Q3K => {
            for b in as_blocks_mut::<k_quants::BlockQ3K>(&mut w) {
                b.d = rng.scale_f16();
            }
        }
        GgmlType::Q6K => {
            for b in as_blocks_mut::<k_quants::BlockQ6K>(&mut w) {
                b.d = rng.scale_f16();
            }
        }
        GgmlType::Iq4Xs => {
            for b in w.chunks_exact_mut(136) {
                b[..2].copy_from_slice(&rng.scale_f16());
            }
        }
        GgmlType::Q8_1 => {
            for b in as_blocks_mut::<legacy::BlockQ8_1>(&mut w) {
                (b.d, b.s) = (rng.scale_f16(), rng.scale_f16());
            }
        }
        GgmlType::Q8K => {
            for b in as_blocks_mut::<k_quants::BlockQ8K>(&mut w) {
                b.d = (rng.unit() * 0.01).to_le_bytes();
            }
        }
        _ => unreachable!(),
    }
    w
}

fn activations(k: usize, n_tok: usize, rng: &mut Rng) -> Vec<f32> {
    (0..k * n_tok).map(|_| rng.activation()).collect()
}

fn dequant(ty: GgmlType, bytes: &[u8], k: usize) -> Vec<f32> {
    let mut out = vec![0.0; k];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

/// The activations as the kernels see them, dequantized.
fn dequant_acts(a: &QuantizedActs, t: usize) -> Vec<f32> {
    let r = a.row(t);
    match a.kind() {
        ActKind::F32 => r.f.to_vec(),
        ActKind::Q8_0 | ActKind::Q8_1 => (0..a.k())
            .map(|i| r.qs[i] as f32 * r.d[i / QK8_0])
            .collect(),
        ActKind::Q8K => (0..a.k()).map(|i| r.qs[i] as f32 * r.d[i / QK_K]).collect(),
    }
}

/// f64 reference of what the kernels compute: dequantized weights times dequantized
/// activations, with the min term of Q4_1/Q5_1 taken against Q8_1's stored `s` (as ggml does)
/// instead of the block's exact sum. Returns (value, sum |w_i * a_i|).
fn reference(ty: GgmlType, w: &[u8], a: &QuantizedActs, t: usize) -> (f64, f64) {
    let k = a.k();
    let wf = dequant(ty, w, k);
    let af = dequant_acts(a, t);
    let mut dot: f64 = wf.iter().zip(&af).map(|(&x, &y)| x as f64 * y as f64).sum();
    let scale: f64 = wf
        .iter()
        .zip(&af)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    if a.kind() == ActKind::Q8_1 {
        // w = d q + m: replace m * sum(a) by m * s for each block.
        let r = a.row(t);
        for (i, b) in w.chunks_exact(ty.type_size().unwrap()).enumerate() {
            let m = crate::tensor::quants::float::f16_to_f32([b[2], b[3]]) as f64;
            let exact: f64 = af[i * QK8_0..(i + 1) * QK8_0]
                .iter()
                .map(|&v| v as f64)
                .sum();
            dot += m * (r.s[i] as f64 - exact);
        }
    }
    (dot, scale)
}

/// A bound on |dot(w, x) - dot(w, x_quantized)|: half an activation quantization step per
/// value (Q8_0/Q8_1 quantize with the f32 scale and store it as f16, which moves each value by
/// up to 127 * 2^-11 steps more: 0.5 + 0.062 steps), plus for Q8_1 the f16 rounding of `s`.
fn act_error_bound(ty: GgmlType, w: &[f32], wb: &[u8], a: &QuantizedActs, t: usize) -> f64 {
    let r = a.row(t);
    let (steps, block) = match a.kind() {
        ActKind::F32 => return 0.0,
        ActKind::Q8_0 | ActKind::Q8_1 => (0.5 + 127.0 / 2048.0, QK8_0),
        ActKind::Q8K => (0.5, QK_K),
    };
    let mut bound: f64 = w
        .iter()
        .enumerate()
        .map(|(i, &v)| v.abs() as f64 * steps * r.d[i / block].abs() as f64)
        .sum();
    if a.kind() == ActKind::Q8_1 {
        for (i, b) in wb.chunks_exact(ty.type_size().unwrap()).enumerate() {
            let m = crate::tensor::quants::float::f16_to_f32([b[2], b[3]]) as f64;
            bound += m.abs() * r.s[i].abs() as f64 / 2048.0;
        }
    }
    bound
}

/// Runs `check(ty, k, weights, acts)` over every type, row length, weight source and a few
/// tokens.
fn for_all_cases(mut check: impl FnMut(GgmlType, usize, &[u8], &QuantizedActs, &[f32])) {
    let mut rng = Rng::new(0x5EED_0D07);
    for &ty in TYPES {
        for k in lengths(ty) {
            let n_rows = 2;
            for source in 0..2 {
                let w = if source == 0 {
                    quantized_rows(ty, k, n_rows, &mut rng)
                } else {
                    random_rows(ty, k, n_rows, &mut rng)
                };
                let x = activations(k, 3, &mut rng);
                let a = quantize_acts(ty, &x, 3, k);
                check(ty, k, &w, &a, &x);
            }
        }
    }
}

#[test]
fn simd_matches_plain() {
    let levels = SimdLevel::available();
    let mut worst = vec![(0.0f64, GgmlType::F32); levels.len()];
    for_all_cases(|ty, _k, w, a, _| {
        let row_bytes = w.len() / 2;
        for wr in w.chunks_exact(row_bytes) {
            for t in 0..a.n_tok() {
                let plain = vec_dot_at(SimdLevel::Plain, ty, wr, a, t);
                let (_, scale) = reference(ty, wr, a, t);
                for (li, &level) in levels.iter().enumerate() {
                    let got = vec_dot_at(level, ty, wr, a, t);
                    let err = (got as f64 - plain as f64).abs() / scale.max(f64::MIN_POSITIVE);
                    if err > worst[li].0 {
                        worst[li] = (err, ty);
                    }
                    assert!(
                        err <= 1e-6,
                        "{ty} at {level:?}: {got} vs plain {plain} (relative {err:e})"
                    );
                }
            }
        }
    });
    for (level, (w, ty)) in levels.iter().zip(worst) {
        eprintln!("{level:?}: worst |simd - plain| / sum|w*a| = {w:.2e} ({ty})");
    }
}

#[test]
fn plain_matches_f64_reference() {
    let mut worst = 0.0f64;
    for_all_cases(|ty, _k, w, a, _| {
        let row_bytes = w.len() / 2;
        for wr in w.chunks_exact(row_bytes) {
            for t in 0..a.n_tok() {
                let got = vec_dot_at(SimdLevel::Plain, ty, wr, a, t) as f64;
                let (want, scale) = reference(ty, wr, a, t);
                let err = (got - want).abs() / scale.max(f64::MIN_POSITIVE);
                worst = worst.max(err);
                assert!(err <= 1e-5, "{ty}: {got} vs {want} (relative {err:e})");
            }
        }
    });
    eprintln!("worst |plain - f64| / sum|w*a| = {worst:e}");
}

#[test]
fn quantized_acts_error_is_bounded() {
    let mut worst = 0.0f64;
    for_all_cases(|ty, k, w, a, x| {
        let row_bytes = w.len() / 2;
        for wr in w.chunks_exact(row_bytes) {
            let wf = dequant(ty, wr, k);
            for t in 0..a.n_tok() {
                let got = vec_dot_at(SimdLevel::Plain, ty, wr, a, t) as f64;
                let xt = &x[t * k..(t + 1) * k];
                let want: f64 = wf.iter().zip(xt).map(|(&p, &q)| p as f64 * q as f64).sum();
                let scale: f64 = wf
                    .iter()
                    .zip(xt)
                    .map(|(&p, &q)| (p as f64 * q as f64).abs())
                    .sum();
                let bound = act_error_bound(ty, &wf, wr, a, t);
                let err = (got - want).abs();
                if bound > 0.0 {
                    worst = worst.max(err / bound);
                }
                assert!(
                    err <= bound + 1e-5 * scale,
                    "{ty} k={k}: {got} vs f32 {want}, error {err:e} > bound {bound:e}"
                );
            }
        }
    });
    eprintln!("worst activation-quantization error / bound = {worst:.3}");
}

/// ggml's `test-quantize-fns`: weights and activations `0.1 + 2 cos(i + offset)`, 4096 values,
/// both quantized; |result - f32 dot| / 4096 must stay under 0.02 (0.04 for Q2_K).
#[test]
fn ggml_dot_product_error() {
    let n = 4096;
    let gen = |offset: f32| -> Vec<f32> {
        (0..n)
            .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
            .collect()
    };
    let (w, x) = (gen(0.0), gen(1.0));
    let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let mut worst = (0.0f64, GgmlType::F32);
    for &ty in TYPES {
        if matches!(ty, GgmlType::Q8_1 | GgmlType::Q8K) {
            continue; // not weight types in ggml
        }
        let wq = dsrun_quantize::ggml_quantize(ty.id(), &w, n).unwrap();
        let a = quantize_acts(ty, &x, 1, n);
        for level in SimdLevel::available() {
            let got = vec_dot_at(level, ty, &wq, &a, 0) as f64;
            let err = (got - exact).abs() / n as f64;
            let max = if ty == GgmlType::Q2K { 0.04 } else { 0.02 };
            assert!(err < max, "{ty} at {level:?}: dot error {err}");
            if err > worst.0 {
                worst = (err, ty);
            }
        }
    }
    eprintln!("worst ggml dot product error: {:.4} ({})", worst.0, worst.1);
}

#[test]
fn qmatmul_matches_matmul_and_vec_dot() {
    let mut rng = Rng::new(77);
    for &ty in TYPES {
        // 33 blocks of 32 (two 16-block AVX-512 groups and a tail), 3 of 256, or 100 floats.
        let k = match ty.block_size().unwrap() {
            32 => 33 * 32,
            256 => 3 * 256,
            _ => 100,
        };
        let m = 37;
        let wb = quantized_rows(ty, k, m, &mut rng);
        let view = TensorView {
            name: "w",
            ty,
            n_cols: k,
            n_rows: m,
            row_bytes: ty.row_bytes(k as u64).unwrap() as usize,
            data: &wb,
        };
        for n_tok in [1, 5, 19] {
            let x = activations(k, n_tok, &mut rng);
            let mut want = vec![0.0; n_tok * m];
            matmul(&view, &x, n_tok, &mut want);
            let a = quantize_acts(ty, &x, n_tok, k);
            for level in SimdLevel::available() {
                let mut got = vec![0.0; n_tok * m];
                qmatmul_acts_at(level, &view, &a, &mut got);
                // Prompt-sized products through the GEMM equal the plain kernels.
                let row_level = if uses_gemm(level, ty, n_tok) {
                    SimdLevel::Plain
                } else {
                    level
                };
                for t in 0..n_tok {
                    for r in 0..m {
                        let v = vec_dot_at(row_level, ty, view.row(r), &a, t);
                        assert_eq!(got[t * m + r], v, "{ty} {level:?} t={t} r={r}");
                        let wf = dequant(ty, view.row(r), k);
                        let bound = act_error_bound(ty, &wf, view.row(r), &a, t);
                        let scale: f64 = wf
                            .iter()
                            .zip(&x[t * k..])
                            .map(|(&p, &q)| (p as f64 * q as f64).abs())
                            .sum();
                        let err = (v as f64 - want[t * m + r] as f64).abs();
                        assert!(
                            err <= bound + 1e-5 * scale,
                            "{ty} {level:?}: {v} vs matmul {} ({err:e} > {bound:e})",
                            want[t * m + r]
                        );
                    }
                }
            }
        }
        // The public entry point quantizes itself and uses the selected level.
        let x = activations(k, 2, &mut rng);
        let (mut p, mut q) = (vec![0.0; 2 * m], vec![0.0; 2 * m]);
        qmatmul(&view, &x, 2, &mut p);
        qmatmul_acts_at(
            selected_level(),
            &view,
            &quantize_acts(ty, &x, 2, k),
            &mut q,
        );
        assert_eq!(p, q);
    }
}

/// The GEMM against the plain kernels, bit for bit, on random bytes (every quant pattern) and
/// ggml-quantized rows: odd block counts, row counts that leave partial panels and strips,
/// token counts that leave partial tiles, 1 and 2 threads.
#[test]
fn gemm_matches_plain_bit_for_bit() {
    for level in SimdLevel::available() {
        gemm_matches_plain_at(level);
    }
}

/// [`gemm_matches_plain_bit_for_bit`] at one level (every level with a GEMM is checked, so the
/// AVX2 GEMM runs on AVX-512 machines too).
fn gemm_matches_plain_at(level: SimdLevel) {
    let mut rng = Rng::new(2026);
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Iq4Nl,
        GgmlType::Q4_1,
        GgmlType::Q5_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];
    let mut checked = 0;
    for ty in types {
        if !uses_gemm(level, ty, gemm::MIN_TOK) {
            continue;
        }
        let bs = ty.block_size().unwrap();
        for (n_blocks, m, n_tok) in [
            (1, 1, 16),
            (3, 37, 19),
            (7, 64, 17),
            (2, 100, 35),
            (2, 40, 4),
            (3, 33, 7),
        ] {
            if !uses_gemm(level, ty, n_tok) {
                continue;
            }
            let k = n_blocks * bs;
            for random in [true, false] {
                let wb = if random {
                    random_rows(ty, k, m, &mut rng)
                } else {
                    quantized_rows(ty, k, m, &mut rng)
                };
                let view = TensorView {
                    name: "w",
                    ty,
                    n_cols: k,
                    n_rows: m,
                    row_bytes: ty.row_bytes(k as u64).unwrap() as usize,
                    data: &wb,
                };
                let a = quantize_acts(ty, &activations(k, n_tok, &mut rng), n_tok, k);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![f32::NAN; n_tok * m];
                    pool.install(|| qmatmul_acts_at(level, &view, &a, &mut got));
                    for t in 0..n_tok {
                        for r in 0..m {
                            let want = vec_dot_at(SimdLevel::Plain, ty, view.row(r), &a, t);
                            assert_eq!(
                                got[t * m + r].to_bits(),
                                want.to_bits(),
                                "{ty} k={k} m={m} n_tok={n_tok} t={t} r={r}: {} vs {want}",
                                got[t * m + r]
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    if matches!(level, SimdLevel::Avx512Vnni | SimdLevel::Avx2) {
        assert!(checked >= types.len() * 16, "{level:?}");
    }
}

/// The GEMMs at their integer limits: every weight at the value of largest magnitude the
/// kernels multiply (the AVX2 GEMM's i16 sums are closest to saturating there) and every
/// activation at +127 or -127, still equal to the plain kernels bit for bit.
#[test]
fn gemm_extreme_values_match_plain() {
    let mut rng = Rng::new(77);
    // Per type: the byte range of a block's quants, and the byte that makes them extreme
    // (nibbles 15 and high bits set; Q8_0's -128; IQ4_NL's nibble 0, value -127).
    let types = [
        (GgmlType::Q4_0, 2..18, 0xff),
        (GgmlType::Q4_1, 4..20, 0xff),
        (GgmlType::Q5_0, 2..22, 0xff),
        (GgmlType::Q5_1, 4..24, 0xff),
        (GgmlType::Q8_0, 2..34, 0x80),
        (GgmlType::Iq4Nl, 2..18, 0x00),
        (GgmlType::Q4K, 16..144, 0xff),
        (GgmlType::Q6K, 0..192, 0xff),
    ];
    let mut checked = 0;
    for level in SimdLevel::available() {
        for (ty, quants, byte) in types.clone() {
            if !uses_gemm(level, ty, gemm::MIN_TOK) {
                continue;
            }
            let (k, m, n_tok) = (2 * 256, 40, 18);
            let mut wb = random_rows(ty, k, m, &mut rng);
            for b in wb.chunks_exact_mut(ty.type_size().unwrap()) {
                b[quants.clone()].fill(byte);
            }
            let view = TensorView {
                name: "w",
                ty,
                n_cols: k,
                n_rows: m,
                row_bytes: ty.row_bytes(k as u64).unwrap() as usize,
                data: &wb,
            };
            for sign in [1.0f32, -1.0] {
                let a = quantize_acts(ty, &vec![sign; n_tok * k], n_tok, k);
                let mut got = vec![f32::NAN; n_tok * m];
                qmatmul_acts_at(level, &view, &a, &mut got);
                for t in 0..n_tok {
                    for r in 0..m {
                        let want = vec_dot_at(SimdLevel::Plain, ty, view.row(r), &a, t);
                        assert_eq!(got[t * m + r].to_bits(), want.to_bits(), "{ty} {level:?}");
                    }
                }
                checked += 1;
            }
        }
    }
    if SimdLevel::available().contains(&SimdLevel::Avx2) {
        assert!(checked >= types.len() * 2);
    }
}

#[test]
fn packed_k4_scales_match_plain() {
    let mut rng = Rng::new(3);
    for _ in 0..10_000 {
        let s: [u8; 12] = rng.bytes(12).try_into().unwrap();
        assert_eq!(
            plain::k4_scales_mins_packed(&s),
            plain::k4_scales_mins(&s),
            "{s:?}"
        );
    }
}

#[test]
fn level_choice() {
    use SimdLevel::*;
    let x86 = [Plain, Avx2, Avx512Vnni];
    assert_eq!(SimdLevel::choose(None, &x86), Avx512Vnni);
    assert_eq!(SimdLevel::choose(Some("avx2"), &x86), Avx2);
    assert_eq!(SimdLevel::choose(Some("PLAIN"), &x86), Plain);
    assert_eq!(SimdLevel::choose(Some("avx512"), &x86), Avx512Vnni);
    assert_eq!(SimdLevel::choose(Some("avx512"), &[Plain, Avx2]), Avx2);
    assert_eq!(SimdLevel::choose(Some("bogus"), &x86), Avx512Vnni);
    assert_eq!(SimdLevel::choose(Some("neon"), &x86), Plain);
    assert_eq!(SimdLevel::choose(Some("avx2"), &[Plain, Neon]), Plain);
    assert_eq!(SimdLevel::choose(None, &[Plain, Neon]), Neon);
    assert!(SimdLevel::available().contains(&selected_level()));
    assert_eq!(simd_level(), selected_level().name());
}

#[test]
#[should_panic(expected = "activations quantized for another kind")]
fn mismatched_activations_panic() {
    let a = quantize_acts(GgmlType::Q4K, &[0.0; 256], 1, 256);
    vec_dot(GgmlType::Q4_0, &[0u8; 8 * 18], &a, 0);
}

/// Long inputs are quantized on several threads; each row must come out as it does alone.
#[test]
fn threaded_quantization_matches_rows() {
    let mut rng = Rng::new(11);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K] {
        let (k, n_tok) = (512, 301);
        let x = activations(k, n_tok, &mut rng);
        let all = quantize_acts(ty, &x, n_tok, k);
        for t in [0, 1, 150, 299, 300] {
            let one = quantize_acts(ty, &x[t * k..(t + 1) * k], 1, k);
            assert_eq!(all.to_ggml_row(t), one.to_ggml_row(0), "{ty} token {t}");
            assert_eq!(all.row(t).sums, one.row(0).sums, "{ty} token {t}");
        }
    }
}

/// The multi-row decode kernels against the single-row kernel of their level, bit for bit (and
/// so, through `simd_matches_plain`, against the plain twins within 1e-6): every type, odd
/// block counts, random bytes (every quant pattern) and ggml-quantized rows.
#[test]
fn rows_kernels_equal_single_row_bit_for_bit() {
    let mut rng = Rng::new(0x0DEC_0DE5);
    let mut checked = 0;
    for level in SimdLevel::available() {
        for &ty in TYPES {
            if !ty.is_supported() {
                continue;
            }
            for k in lengths(ty) {
                for random in [true, false] {
                    let w = if random {
                        random_rows(ty, k, ROWS, &mut rng)
                    } else {
                        quantized_rows(ty, k, ROWS, &mut rng)
                    };
                    let a = quantize_acts(ty, &activations(k, 2, &mut rng), 2, k);
                    let kernel = Kernel::new(level, ty, &a);
                    if !kernel.has_rows() {
                        continue;
                    }
                    let rb = w.len() / ROWS;
                    for t in 0..2 {
                        let got = kernel.call_rows(&w, rb, &a.row(t));
                        for (r, g) in got.iter().enumerate() {
                            let want = kernel.call(&w[r * rb..(r + 1) * rb], &a.row(t));
                            assert_eq!(
                                g.to_bits(),
                                want.to_bits(),
                                "{ty} at {level:?}, k={k} row {r}: {g} vs {want}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    if SimdLevel::Avx512Vnni.is_available() {
        // Q4_0 and Q4_1, 5 lengths, 2 sources.
        assert!(
            checked >= 2 * 5 * 2,
            "only {checked} cases had a multi-row kernel"
        );
    }
}
