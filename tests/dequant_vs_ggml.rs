//! dsrun's block decoders and reference encoders against ggml's own, bit for bit.
//!
//! Every supported type is decoded from (a) bytes that ggml's quantizer produced from random
//! floats, (b) random bytes whose f16/f32 scales are made finite, and (c) fully random bytes,
//! NaN payloads included. dsrun's `quantize` is compared byte for byte with ggml's
//! `quantize_row_*_ref` on random and awkward inputs. The seed is printed on any failure; set
//! `DSRUN_TEST_SEED` to rerun with another one.

use dsrun::tensor::quants::quantize;
use dsrun::tensor::{dequantize, GgmlType};
use dsrun_quantize::{ggml_dequantize, ggml_quantize, ggml_quantize_row_ref};

/// xorshift64*: small, deterministic, good enough to shake out layout bugs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }
    /// Roughly normal: sum of four uniforms.
    fn normalish(&mut self) -> f32 {
        (0..4).map(|_| self.signed()).sum::<f32>() * 0.87
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    /// A finite f16 (zero and subnormals included), as bits.
    fn finite_f16(&mut self) -> u16 {
        let sign = (self.below(2) as u16) << 15;
        let exp = (self.below(31) as u16) << 10;
        sign | exp | self.below(1024) as u16
    }
}

fn base_seed() -> u64 {
    std::env::var("DSRUN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x005E_EDD5_2024)
}

/// Decodes `bytes` with dsrun and with ggml and demands identical bits.
fn assert_same_decoding(ty: GgmlType, bytes: &[u8], what: &str, seed: u64) {
    let n = bytes.len() / ty.type_size().unwrap() * ty.block_size().unwrap();
    let mut ours = vec![0f32; n];
    dequantize(ty, bytes, &mut ours).unwrap_or_else(|e| panic!("{ty} {what}: {e}"));
    let theirs = ggml_decode(ty, bytes, n);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if a.to_bits() != b.to_bits() {
            let bs = ty.block_size().unwrap();
            let ts = ty.type_size().unwrap();
            let block = &bytes[i / bs * ts..(i / bs + 1) * ts];
            panic!(
                "{ty} {what} (seed {seed}): value {i} (block {}, index {}) is {a:e} ({:#010x}) in \
                 dsrun but {b:e} ({:#010x}) in ggml; block bytes {block:02x?}",
                i / bs,
                i % bs,
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

/// ggml's decoding. ggml has no Q8_1 decoder; Q8_1 is Q8_0 plus a sum, so its d and quants are
/// decoded as a Q8_0 block.
fn ggml_decode(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    if ty == GgmlType::Q8_1 {
        let q8_0: Vec<u8> = bytes
            .chunks_exact(36)
            .flat_map(|b| b[..2].iter().chain(&b[4..]).copied())
            .collect();
        return ggml_decode(GgmlType::Q8_0, &q8_0, n);
    }
    ggml_dequantize(ty.id(), bytes, n).unwrap_or_else(|| panic!("ggml cannot decode {ty}"))
}

/// Where a block keeps its scales: (byte offset, kind).
#[derive(Clone, Copy)]
enum Scale {
    F16(usize),
    Bf16(usize),
    F32(usize),
}

fn scale_fields(ty: GgmlType) -> &'static [Scale] {
    use Scale::*;
    match ty {
        GgmlType::F32 => &[F32(0)],
        GgmlType::F16
        | GgmlType::Q4_0
        | GgmlType::Q5_0
        | GgmlType::Q8_0
        | GgmlType::Iq4Nl
        | GgmlType::Iq4Xs => &[F16(0)],
        GgmlType::Q3K => &[F16(108)],
        GgmlType::Q6K => &[F16(208)],
        GgmlType::Q2K => &[F16(80), F16(82)],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4K | GgmlType::Q5K => {
            &[F16(0), F16(2)]
        }
        GgmlType::Bf16 => &[Bf16(0)],
        GgmlType::Q8K => &[F32(0)],
        GgmlType::Mxfp4 => &[], // an E8M0 exponent: every byte is a finite scale
        other => panic!("no scale layout for {other}"),
    }
}

/// Random bytes for `n_blocks` blocks, with every scale overwritten by a finite value.
fn random_blocks_finite_scales(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let ts = ty.type_size().unwrap();
    let mut bytes = rng.bytes(n_blocks * ts);
    for block in bytes.chunks_exact_mut(ts) {
        for &field in scale_fields(ty) {
            match field {
                Scale::F16(o) => block[o..o + 2].copy_from_slice(&rng.finite_f16().to_le_bytes()),
                Scale::Bf16(o) => {
                    // A finite bf16 (exponent below 255), from random bits.
                    let bits = (rng.next_u64() as u16) & !(1 << 14);
                    block[o..o + 2].copy_from_slice(&bits.to_le_bytes());
                }
                Scale::F32(o) => {
                    let x = rng.signed() * 10f32.powi(rng.below(20) as i32 - 10);
                    block[o..o + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// Every type whose decoding is checked: all supported ones but F32 (a plain copy).
fn checked_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::supported().filter(|&t| t != GgmlType::F32)
}

/// Random floats of one of several shapes, `n` of them.
fn random_floats(rng: &mut Rng, n: usize, shape: u64) -> Vec<f32> {
    let scale = 10f32.powi(rng.below(13) as i32 - 6);
    (0..n)
        .map(|i| match shape {
            0 => rng.signed() * scale,
            1 => rng.normalish() * scale,
            // Mostly small with rare outliers, as in real weight matrices.
            2 => {
                let x = rng.normalish() * scale;
                if rng.below(50) == 0 {
                    x * 40.0
                } else {
                    x
                }
            }
            // All positive, shifted: exercises the min of the `_1` and k-quant types.
            3 => (rng.unit() + 0.5) * scale,
            // Blocks of 32 that are constant.
            _ => {
                let mut r = Rng::new((i / 32) as u64 + shape);
                r.signed() * scale
            }
        })
        .collect()
}

#[test]
fn dequantize_matches_ggml_on_ggml_quantized_data() {
    let seed = base_seed();
    let mut rng = Rng::new(seed);
    for ty in checked_types() {
        let bs = ty.block_size().unwrap();
        let n_per_row = bs * 8;
        for shape in 0..5 {
            let x = random_floats(&mut rng, n_per_row * 3, shape);
            let bytes = ggml_quantize(ty.id(), &x, n_per_row)
                .unwrap_or_else(|| panic!("ggml cannot quantize to {ty}"));
            assert_same_decoding(ty, &bytes, &format!("ggml-quantized, shape {shape}"), seed);
        }
    }
}

#[test]
fn dequantize_matches_ggml_on_random_blocks_with_finite_scales() {
    let seed = base_seed() ^ 1;
    let mut rng = Rng::new(seed);
    for ty in checked_types() {
        for round in 0..20 {
            let n_blocks = if ty.block_size() == Some(1) { 4096 } else { 64 };
            let bytes = random_blocks_finite_scales(&mut rng, ty, n_blocks);
            assert_same_decoding(ty, &bytes, &format!("random blocks, round {round}"), seed);
        }
    }
}

#[test]
fn dequantize_matches_ggml_on_fully_random_bytes() {
    let seed = base_seed() ^ 2;
    let mut rng = Rng::new(seed);
    for ty in checked_types() {
        let n_blocks = if ty.block_size() == Some(1) {
            1 << 16
        } else {
            1024
        };
        let bytes = rng.bytes(n_blocks * ty.type_size().unwrap());
        assert_same_decoding(ty, &bytes, "fully random bytes", seed);
    }
}

#[test]
fn every_f16_and_bf16_value_matches_ggml() {
    let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    assert_same_decoding(GgmlType::F16, &all, "all 65536 values", 0);
    assert_same_decoding(GgmlType::Bf16, &all, "all 65536 values", 0);
}

/// The types dsrun quantizes itself.
const SIMPLE_TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
];

/// dsrun's and ggml's reference encodings of `x`, which must be identical.
fn assert_same_encoding(ty: GgmlType, x: &[f32], what: &str, seed: u64) {
    let mut ours = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quantize(ty, x, &mut ours).unwrap_or_else(|e| panic!("{ty} {what}: {e}"));
    let theirs = if ty == GgmlType::F32 {
        x.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        ggml_quantize_row_ref(ty.id(), x).unwrap_or_else(|| panic!("ggml has no {ty} ref"))
    };
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        let ts = ty.type_size().unwrap();
        let bs = ty.block_size().unwrap();
        let b = i / ts;
        panic!(
            "{ty} {what} (seed {seed}): byte {i} (block {b}, offset {}) differs\n  dsrun {:02x?}\n  \
             ggml  {:02x?}\n  input {:?}",
            i % ts,
            &ours[b * ts..(b + 1) * ts],
            &theirs[b * ts..(b + 1) * ts],
            &x[b * bs..(b + 1) * bs]
        );
    }
}

/// Blocks of 32 that have tripped quantizers before: zeros, signed zeros, subnormals, values
/// near f32 and f16 limits, constant blocks, a lone nonzero, exact ties.
fn awkward_blocks() -> Vec<(&'static str, Vec<f32>)> {
    let ramp = |scale: f32| (0..32).map(move |i| (i as f32 - 15.5) * scale);
    vec![
        ("zeros", vec![0.0; 32]),
        ("negative zeros", vec![-0.0; 32]),
        (
            "mixed zeros",
            (0..32)
                .map(|i| if i % 2 == 0 { 0.0 } else { -0.0 })
                .collect(),
        ),
        ("subnormal f32", ramp(1e-45).collect()),
        ("tiny", ramp(1e-30).collect()),
        ("below f16 range", ramp(1e-9).collect()),
        ("f16 limit", ramp(65504.0 / 15.5).collect()),
        ("above f16 range", ramp(1e6).collect()),
        ("huge", ramp(1e37).collect()),
        (
            "f32 max",
            (0..32)
                .map(|i| if i % 3 == 0 { f32::MAX } else { -f32::MAX })
                .collect(),
        ),
        ("all equal positive", vec![0.37; 32]),
        ("all equal negative", vec![-2.5; 32]),
        ("all equal huge", vec![3e38; 32]),
        (
            "one nonzero",
            (0..32).map(|i| if i == 7 { -1.0 } else { 0.0 }).collect(),
        ),
        (
            "max and min tie",
            (0..32)
                .map(|i| {
                    if i == 3 {
                        1.0
                    } else if i == 9 {
                        -1.0
                    } else {
                        0.5
                    }
                })
                .collect(),
        ),
        ("integers", ramp(1.0).collect()),
        (
            "half steps",
            (0..32).map(|i| i as f32 * 0.5 - 8.0).collect(),
        ),
    ]
}

#[test]
fn quantize_matches_ggml_reference_on_random_data() {
    let seed = base_seed() ^ 3;
    let mut rng = Rng::new(seed);
    for ty in SIMPLE_TYPES {
        for shape in 0..5 {
            for round in 0..10 {
                let x = random_floats(&mut rng, 32 * 64, shape);
                assert_same_encoding(ty, &x, &format!("shape {shape}, round {round}"), seed);
            }
        }
    }
}

#[test]
fn quantize_matches_ggml_reference_on_awkward_blocks() {
    for ty in SIMPLE_TYPES {
        for (name, x) in awkward_blocks() {
            assert_same_encoding(ty, &x, name, 0);
        }
    }
}

#[test]
fn quantize_matches_ggml_reference_on_nan_and_infinity() {
    let blocks: Vec<(&str, Vec<f32>)> = vec![
        (
            "one infinity",
            (0..32)
                .map(|i| if i == 5 { f32::INFINITY } else { i as f32 })
                .collect(),
        ),
        (
            "one -infinity",
            (0..32)
                .map(|i| if i == 0 { f32::NEG_INFINITY } else { 1.0 })
                .collect(),
        ),
        (
            "one NaN",
            (0..32)
                .map(|i| if i == 4 { f32::NAN } else { i as f32 - 9.0 })
                .collect(),
        ),
        (
            "NaN last",
            (0..32)
                .map(|i| if i == 31 { f32::NAN } else { i as f32 })
                .collect(),
        ),
        ("all NaN", vec![f32::NAN; 32]),
    ];
    for ty in SIMPLE_TYPES {
        for (name, x) in &blocks {
            assert_same_encoding(ty, x, name, 0);
        }
    }
}

#[test]
fn float_conversions_match_ggml_on_random_bit_patterns() {
    let seed = base_seed() ^ 4;
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..1 << 20)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    for ty in [GgmlType::F16, GgmlType::Bf16] {
        assert_same_encoding(ty, &x, "random f32 bit patterns", seed);
    }
    // Every f32 just around each f16 rounding boundary.
    let near: Vec<f32> = (0..=0x7bffu32)
        .flat_map(|h| {
            let mid = half::f16::from_bits(h as u16).to_f32() * (1.0 + 2f32.powi(-11));
            let b = mid.to_bits();
            [b.wrapping_sub(1), b, b + 1].map(f32::from_bits)
        })
        .collect();
    assert_same_encoding(GgmlType::F16, &near, "f16 rounding boundaries", 0);
}
