//! The quantized activations of `kernels::qdot` against ggml's own reference quantizers, byte for
//! byte: Q8_0 (`quantize_row_q8_0_ref`), Q8_1 (`quantize_row_q8_1_ref`, with its f16 `s`) and
//! Q8_K (`quantize_row_q8_K_ref`, with its f32 scale and 16-value sums), on random rows and on
//! awkward ones (ties, zeros, one large value, subnormals, infinities, NaNs). The seed is printed
//! on failure; `DSRUN_TEST_SEED` reruns with another.

use dsrun::kernels::qdot::{quantize_acts, ActKind, QuantizedActs};
use dsrun::tensor::GgmlType;
use dsrun_quantize::ggml_quantize_row_ref;

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
    fn signed(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn base_seed() -> u64 {
    std::env::var("DSRUN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0D07_5EED)
}

/// (a weight type whose activations take this form, ggml's id of the form, its block size)
const FORMS: &[(GgmlType, u32, usize)] = &[
    (GgmlType::Q4_0, 8, 32),
    (GgmlType::Q4_1, 9, 32),
    (GgmlType::Q4K, 15, 256),
];

fn check(weight_ty: GgmlType, act_id: u32, x: &[f32], n_tok: usize, what: &str) {
    let k = x.len() / n_tok;
    let acts: QuantizedActs = quantize_acts(weight_ty, x, n_tok, k);
    for t in 0..n_tok {
        let row = &x[t * k..(t + 1) * k];
        let want = ggml_quantize_row_ref(act_id, row).expect("ggml has a reference quantizer");
        let got = acts.to_ggml_row(t);
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "{weight_ty} activations ({what}), token {t}: bytes differ from ggml at {at:?} \
                 of {} (seed {})",
                want.len(),
                base_seed()
            );
        }
    }
}

#[test]
fn forms_are_ggmls_vec_dot_types() {
    let kind = |ty| quantize_acts(ty, &[0.0; 256], 1, 256).kind();
    assert_eq!(kind(GgmlType::Q4_0), ActKind::Q8_0);
    assert_eq!(kind(GgmlType::Mxfp4), ActKind::Q8_0);
    assert_eq!(kind(GgmlType::Q5_1), ActKind::Q8_1);
    assert_eq!(kind(GgmlType::Q6K), ActKind::Q8K);
    assert_eq!(kind(GgmlType::Iq4Xs), ActKind::Q8K);
    assert_eq!(kind(GgmlType::F16), ActKind::F32);
}

#[test]
fn random_rows_match_ggml() {
    let mut rng = Rng::new(base_seed());
    for &(ty, id, bs) in FORMS {
        for n_blocks in [1, 3, 7, 33] {
            for scale in [1e-3f32, 1.0, 300.0] {
                let n_tok = 3;
                let x: Vec<f32> = (0..n_blocks * bs * n_tok)
                    .map(|_| rng.signed() * scale)
                    .collect();
                check(ty, id, &x, n_tok, &format!("{n_blocks} blocks x {scale}"));
            }
        }
    }
}

#[test]
fn awkward_rows_match_ggml() {
    let mut rng = Rng::new(base_seed() ^ 0xA5A5);
    for &(ty, id, bs) in FORMS {
        let mut cases: Vec<(&str, Vec<f32>)> = vec![
            ("zeros", vec![0.0; bs]),
            ("negative zeros", vec![-0.0; bs]),
            (
                "one value",
                (0..bs).map(|i| if i == 5 { 3.0 } else { 0.0 }).collect(),
            ),
            (
                "negative max",
                (0..bs).map(|i| if i == 0 { -7.0 } else { 1.0 }).collect(),
            ),
            // amax 127: the step is 1 and every other value sits on a tie.
            (
                "ties",
                (0..bs)
                    .map(|i| {
                        if i == 0 {
                            127.0
                        } else {
                            (i % 60) as f32 - 29.5
                        }
                    })
                    .collect(),
            ),
            (
                "negative ties",
                (0..bs)
                    .map(|i| {
                        if i == 0 {
                            -127.0
                        } else {
                            (i % 60) as f32 - 29.5
                        }
                    })
                    .collect(),
            ),
            (
                "subnormals",
                (0..bs).map(|i| (i as f32 - 9.0) * 1e-41).collect(),
            ),
            ("huge", (0..bs).map(|i| (i as f32 - 9.0) * 1e36).collect()),
            (
                "one infinity",
                (0..bs)
                    .map(|i| if i == 2 { f32::INFINITY } else { 1.0 })
                    .collect(),
            ),
            (
                "one NaN",
                (0..bs)
                    .map(|i| if i == 3 { f32::NAN } else { i as f32 })
                    .collect(),
            ),
        ];
        // Values that are exact multiples of a step, and random ones rounded to the f16 grid.
        let d = 0.013f32;
        cases.push((
            "multiples",
            (0..bs)
                .map(|i| ((i * 37) % 255) as f32 * d - 127.0 * d)
                .collect(),
        ));
        cases.push((
            "f16 grid",
            (0..bs)
                .map(|_| half::f16::from_f32(rng.signed() * 4.0).to_f32())
                .collect(),
        ));
        for (what, x) in cases {
            check(ty, id, &x, 1, what);
        }
    }
}
