//! The SIMD kernels against the plain twin (bit for bit), and the plain twin against an f64
//! computation of softmax attention.

use super::*;

use crate::rng::Rng;

struct Case {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    pos0: usize,
    n: usize,
    window: Option<usize>,
}

const CASES: &[Case] = &[
    // decode, one head group
    Case {
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        pos0: 37,
        n: 1,
        window: None,
    },
    // prompt with GQA, key counts not multiples of 8
    Case {
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        pos0: 0,
        n: 21,
        window: None,
    },
    // continuing batch with a sliding window shorter than the context
    Case {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
        pos0: 11,
        n: 13,
        window: Some(7),
    },
    // head_dim 72: not a multiple of 64 (partial value chunk)
    Case {
        n_head: 2,
        n_head_kv: 2,
        head_dim: 72,
        pos0: 3,
        n: 5,
        window: None,
    },
    // head_dim 56: passes of 32, 16 and 8 values
    Case {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 56,
        pos0: 9,
        n: 4,
        window: None,
    },
    // Qwen2.5-1.5B's groups: six heads per key/value head (values four then two at a time),
    // enough work to go parallel
    Case {
        n_head: 12,
        n_head_kv: 2,
        head_dim: 128,
        pos0: 5,
        n: 40,
        window: None,
    },
    // gemma3's shape with a window, key counts past several blocks of eight
    Case {
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        pos0: 3,
        n: 70,
        window: Some(50),
    },
    // Qwen2.5-0.5B's groups of seven heads (values four, two, then one at a time), past two
    // blocks of keys, token tiles of eight and a last partial tile
    Case {
        n_head: 14,
        n_head_kv: 2,
        head_dim: 64,
        pos0: 600,
        n: 21,
        window: None,
    },
    // a window whose edge moves through a block of keys inside a tile
    Case {
        n_head: 6,
        n_head_kv: 2,
        head_dim: 32,
        pos0: 250,
        n: 19,
        window: Some(260),
    },
    // head_dim 48: the second head's columns start inside a block of 32 (quantized rows),
    // past a block of keys
    Case {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 48,
        pos0: 300,
        n: 9,
        window: None,
    },
    // head_dim 12: not a multiple of 8 (plain everywhere)
    Case {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 12,
        pos0: 2,
        n: 3,
        window: Some(100),
    },
];

fn inputs(c: &Case, rng: &mut Rng, mag: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let kv = (c.pos0 + c.n) * c.n_head_kv * c.head_dim;
    (
        rng.vec(c.n * c.n_head * c.head_dim, mag),
        rng.vec(kv, mag),
        rng.vec(kv, 1.0),
    )
}

fn input<'a>(c: &Case, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> AttnInput<'a> {
    AttnInput {
        q,
        k: Rows::F32(k),
        v: Rows::F32(v),
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        pos0: c.pos0,
        window: c.window,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
        sinks: None,
    }
}

#[test]
fn sinks_take_probability_mass_but_add_no_value() {
    let mut rng = Rng::new(11);
    for c in CASES {
        let (q, k, v) = inputs(c, &mut rng, 1.0);
        let inp = input(c, &q, &k, &v);
        let mut plain = vec![0.0; q.len()];
        attention(&inp, &mut plain);
        // A sink at -inf (in effect) changes nothing, bit for bit.
        let off = vec![-1e30f32; c.n_head];
        let mut got = vec![0.0; q.len()];
        attention(
            &AttnInput {
                sinks: Some(&off),
                ..inp
            },
            &mut got,
        );
        assert_eq!(got, plain);
        // A dominant sink takes nearly all the mass: the output nearly vanishes.
        let on = vec![60.0f32; c.n_head];
        attention(
            &AttnInput {
                sinks: Some(&on),
                ..inp
            },
            &mut got,
        );
        assert!(
            got.iter().all(|x| x.abs() < 1e-6),
            "head_dim {}",
            c.head_dim
        );
    }
}

#[test]
fn simd_matches_plain_bit_for_bit() {
    let mut rng = Rng::new(5);
    for c in CASES {
        // Large magnitudes make the scores cancel, where any change of order would show.
        for mag in [1.0, 40.0] {
            let (q, k, v) = inputs(c, &mut rng, mag);
            let inp = input(c, &q, &k, &v);
            let mut want = vec![0.0; q.len()];
            attention_at(SimdLevel::Plain, &inp, &mut want);
            for level in SimdLevel::available() {
                let mut got = vec![1.0; q.len()];
                attention_at(level, &inp, &mut got);
                assert_eq!(got, want, "{level:?} head_dim {}", c.head_dim);
            }
        }
    }
}

#[test]
fn plain_matches_f64_softmax_attention() {
    let mut rng = Rng::new(9);
    for c in CASES {
        let (q, k, v) = inputs(c, &mut rng, 3.0);
        let inp = input(c, &q, &k, &v);
        let mut got = vec![0.0; q.len()];
        attention_at(SimdLevel::Plain, &inp, &mut got);
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
        for t in 0..c.n {
            for h in 0..c.n_head {
                let pos = c.pos0 + t;
                let lo = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let kvo = (h / (c.n_head / c.n_head_kv)) * hd;
                let qv = &q[t * q_dim + h * hd..][..hd];
                let s: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        let kr = &k[j * kv_dim + kvo..][..hd];
                        let d: f64 = qv.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        d * inp.scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    let want: f64 = (lo..=pos)
                        .zip(&e)
                        .map(|(j, &p)| p / sum * v[j * kv_dim + kvo + d] as f64)
                        .sum();
                    let g = got[t * q_dim + h * hd + d] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "t {t} head {h} d {d}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "fewer than pos0 + n")]
fn short_cache_view_panics() {
    let c = &CASES[1];
    let mut rng = Rng::new(1);
    let (q, k, v) = inputs(c, &mut rng, 1.0);
    let inp = input(c, &q, &k[..k.len() - 1], &v);
    attention(&inp, &mut vec![0.0; q.len()]);
}

/// A view of stored rows: f16 ones, or quantized ones of `row_bytes`.
fn view(
    ty: crate::tensor::GgmlType,
    row_bytes: usize,
    (h, b): &(Vec<half::f16>, Vec<u8>),
) -> Rows<'_> {
    match ty {
        crate::tensor::GgmlType::F16 => Rows::F16(h),
        _ => Rows::Quant {
            ty,
            data: b,
            row_bytes,
        },
    }
}

/// A cache's own rows, read in place (f16, q8_0, q4_0: the tiled path widens a block of one
/// head at a time, the per-head path the whole view), give what the same rows widened to f32
/// beforehand give, bit for bit, at every level.
#[test]
fn stored_rows_read_in_place_equal_rows_widened_first() {
    use crate::tensor::{quants, GgmlType};
    use half::f16;
    let mut rng = Rng::new(17);
    for c in CASES {
        let kv_dim = c.n_head_kv * c.head_dim;
        let (q, k, v) = inputs(c, &mut rng, 4.0);
        for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
            let (stored, widened): (Vec<_>, Vec<Vec<f32>>) = if ty == GgmlType::F16 {
                let h = |x: &[f32]| x.iter().map(|&a| f16::from_f32(a)).collect::<Vec<_>>();
                let (kh, vh) = (h(&k), h(&v));
                let w = |x: &[f16]| x.iter().map(|a| a.to_f32()).collect();
                let widened = vec![w(&kh), w(&vh)];
                (vec![(kh, Vec::new()), (vh, Vec::new())], widened)
            } else {
                if !kv_dim.is_multiple_of(32) {
                    continue;
                }
                let enc = |x: &[f32]| {
                    let mut b = vec![0u8; x.len() / 32 * ty.type_size().unwrap()];
                    quants::quantize(ty, x, &mut b).unwrap();
                    let mut w = vec![0.0f32; x.len()];
                    quants::dequantize(ty, &b, &mut w).unwrap();
                    ((Vec::new(), b), w)
                };
                let ((ks, kw), (vs, vw)) = (enc(&k), enc(&v));
                (vec![ks, vs], vec![kw, vw])
            };
            let row_bytes = kv_dim / 32 * ty.type_size().unwrap_or(0);
            let plain_in = input(c, &q, &widened[0], &widened[1]);
            let mut want = vec![0.0; q.len()];
            attention_at(SimdLevel::Plain, &plain_in, &mut want);
            for level in SimdLevel::available() {
                let inp = AttnInput {
                    k: view(ty, row_bytes, &stored[0]),
                    v: view(ty, row_bytes, &stored[1]),
                    ..plain_in
                };
                let mut got = vec![1.0; q.len()];
                attention_at(level, &inp, &mut got);
                assert_eq!(got, want, "{ty} {level:?} head_dim {}", c.head_dim);
            }
        }
    }
}
