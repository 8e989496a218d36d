//! The fast path against the reference, with the cache poisoned.

use super::*;
use crate::kernels::rope::RopeKind;
use crate::model::kv_cache::KvCache;
use crate::model::KvTypes;
use crate::rng::Rng;
use crate::tensor::GgmlType;
use std::sync::Arc;

const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HD: usize = 64;

fn rope() -> RopeParams {
    RopeParams {
        kind: RopeKind::Neox,
        n_rot: HD,
        freq_base: 10000.0,
        freq_scale: 1.0,
        yarn: crate::kernels::rope::Yarn::NONE,
        factors: None,
    }
}

/// Runs `n_tok` random tokens through one stream layer in batches of `batches` (cycled),
/// with the cache poisoned; returns every token's output.
fn run(cfg: &StreamConfig, types: KvTypes, batches: &[usize], n_tok: usize, seed: u64) -> Vec<f32> {
    let kv_dim = N_HEAD_KV * HD;
    let mut kv = KvCache::with_stream(
        n_tok.max(4096),
        kv_dim,
        types,
        &[None],
        Some((cfg.clone(), N_HEAD_KV, HD)),
    )
    .unwrap();
    kv.poison();
    let mut rng = Rng::new(seed);
    let q = rng.vec(n_tok * N_HEAD * HD, 1.0);
    let k = rng.vec(n_tok * kv_dim, 1.0);
    let v = rng.vec(n_tok * kv_dim, 1.0);
    let sinks = [0.3f32, -1.0, 0.0, 2.0];
    let rope = rope();
    let mut out = vec![0.0f32; n_tok * N_HEAD * HD];
    let (mut at, mut i) = (0, 0);
    while at < n_tok {
        let n = batches[i % batches.len()].min(n_tok - at);
        let inp = StreamInput {
            q: &q[at * N_HEAD * HD..(at + n) * N_HEAD * HD],
            k: &k[at * kv_dim..(at + n) * kv_dim],
            v: &v[at * kv_dim..(at + n) * kv_dim],
            n_head: N_HEAD,
            n_head_kv: N_HEAD_KV,
            head_dim: HD,
            rope: &rope,
            scale: 0.125,
            head_sinks: Some(&sinks),
            pos0: at,
        };
        attend(
            &mut kv,
            0,
            &inp,
            &mut out[at * N_HEAD * HD..(at + n) * N_HEAD * HD],
        );
        at += n;
        i += 1;
    }
    out
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert!(
        a.iter().chain(b).all(|x| x.is_finite()),
        "NaN: an unwritten slot was read"
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fast path equals the explicit reference at every token (the first ones, the moment
/// the window fills at S + W = 20, batches straddling it, 200 tokens), for each summary
/// kind and cache type, whatever the batching, and never reads a poisoned slot.
#[test]
fn fast_path_equals_reference() {
    let mut rng = Rng::new(9);
    let cents = Arc::new(rng.vec(N_HEAD_KV * 3 * HD, 1.0));
    let summaries = [
        None,
        Some(SummaryConfig {
            n_slot: 3,
            assign: Assign::Centroids(cents),
            log_weight: 0.5,
            keys: SlotKeys::TruePos,
            horizon: 0,
        }),
        Some(SummaryConfig {
            n_slot: 5,
            assign: Assign::RoundRobin,
            log_weight: 1.0,
            keys: SlotKeys::TruePos,
            horizon: 9,
        }),
        Some(SummaryConfig {
            n_slot: 4,
            assign: Assign::RoundRobin,
            log_weight: 0.0,
            keys: SlotKeys::Window,
            horizon: 0,
        }),
        Some(SummaryConfig {
            n_slot: 2,
            assign: Assign::Recency,
            log_weight: 1.0,
            keys: SlotKeys::Window,
            horizon: 0,
        }),
    ];
    let q8 = KvTypes {
        k: GgmlType::Q8_0,
        v: GgmlType::Q4_0,
    };
    for types in [KvTypes::default(), q8] {
        for sink_pos in [SinkPos::Cache, SinkPos::Absolute] {
            for summary in summaries.clone() {
                for sinks in [4, 0] {
                    let mut cfg = StreamConfig {
                        window: 16,
                        sinks,
                        sink_pos,
                        summary: summary.clone(),
                        reference: false,
                    };
                    let fast = run(&cfg, types, &[1, 2, 7, 13, 1, 40, 3], 200, 1);
                    let one = run(&cfg, types, &[1], 200, 1);
                    cfg.reference = true;
                    let reference = run(&cfg, types, &[200], 200, 1);
                    let what = format!(
                        "{types:?} {sink_pos:?} S={sinks} {:?}",
                        summary
                            .as_ref()
                            .map(|s| &s.assign)
                            .map(|a| format!("{a:?}").chars().take(12).collect::<String>())
                    );
                    let e = max_err(&fast, &reference);
                    assert!(e < 1e-4, "{what}: fast vs reference {e}");
                    assert_eq!(fast, one, "{what}: batching changed the result");
                }
            }
        }
    }
}

/// The fast path against the reference past 16K positions, with learned-style slots and
/// true-position keys (the setting whose perplexity fails at 32K on Qwen2.5-0.5B): the last
/// tokens of a 20,000-token run. Slow (the reference is quadratic; 22 minutes on 2 cores):
/// `cargo test --release --lib long_run -- --ignored`. Passed on 2026-11-29, so the fast path
/// is not what breaks the 32K summary (README, "Quality at 4K, 16K and 32K").
#[test]
#[ignore]
fn long_run_fast_equals_reference() {
    let mut rng = Rng::new(11);
    let cents = Arc::new(rng.vec(N_HEAD_KV * 64 * HD, 1.0));
    let mut cfg = StreamConfig {
        window: 512,
        sinks: 4,
        sink_pos: SinkPos::Cache,
        summary: Some(SummaryConfig {
            n_slot: 64,
            assign: Assign::Centroids(cents),
            log_weight: 1.25,
            keys: SlotKeys::TruePos,
            horizon: 0,
        }),
        reference: false,
    };
    let n = 20_000;
    let fast = run(&cfg, KvTypes::default(), &[512], n, 3);
    cfg.reference = true;
    let reference = run(&cfg, KvTypes::default(), &[n], n, 3);
    let tail = (n - 64) * N_HEAD * HD;
    let e = max_err(&fast[tail..], &reference[tail..]);
    assert!(
        e < 1e-3,
        "fast vs reference at positions {}..{n}: {e}",
        n - 64
    );
}

/// A slot no token joins empties once its count would pass 1e-30 (no f32 denormals in a very
/// long run), and a token joining an empty slot becomes its mean exactly; the next one moves
/// the f16 means halfway.
#[test]
fn forgotten_slots_empty_and_join_cleanly() {
    use super::summary::{forget, join};
    use half::f16;
    let (mut k, mut v) = (vec![f16::from_f32(3.0); 2], vec![f16::from_f32(-1.0); 2]);
    let mut c = [5.0f32, 0.0];
    let mut steps = 0;
    while c[0] > 0.0 {
        forget(&mut c, 1.0 - 1.0 / 2048.0);
        assert!(
            c[0] == 0.0 || c[0] >= 1e-30,
            "count {} after {steps} steps",
            c[0]
        );
        steps += 1;
    }
    assert!(
        (140_000..150_000).contains(&steps),
        "emptied after {steps} steps"
    );
    join(&mut k, &mut v, &mut c[0], &[1.5, -2.0], &[0.25, 7.0], 1);
    let f = |m: &[f16]| m.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    assert_eq!(
        (c[0], f(&k), f(&v)),
        (1.0, vec![1.5, -2.0], vec![0.25, 7.0])
    );
    join(&mut k, &mut v, &mut c[0], &[3.5, 0.0], &[0.75, 1.0], 2);
    assert_eq!((c[0], f(&k), f(&v)), (2.0, vec![2.5, -1.0], vec![0.5, 4.0]));
}

/// Stochastic rounding keeps exact values, always lands on one of the two neighbouring f16
/// values, and goes up as often as the remainder says (so a mean's small steps add up on
/// average instead of vanishing), on both sides of zero and below the smallest subnormal.
#[test]
fn stochastic_rounding_is_unbiased() {
    use super::summary::round_stochastic;
    use half::f16;
    let mut rng = crate::rng::Rng::new(7);
    assert_eq!(round_stochastic(1.5, rng.next_u64()).to_f32(), 1.5);
    let ulp = 1.0 / 1024.0;
    let tiny = f16::from_bits(1).to_f32();
    for (y, lo, hi) in [
        (1.0 + 0.25 * ulp, 1.0, 1.0 + ulp),
        (-(1.0 + 0.75 * ulp), -(1.0 + ulp), -1.0),
        (0.3 * tiny, 0.0, tiny),
        (-0.6 * tiny, -tiny, 0.0),
    ] {
        let n = 20_000;
        let ups = (0..n)
            .map(|_| round_stochastic(y, rng.next_u64()).to_f32())
            .inspect(|&r| assert!(r == lo || r == hi, "{y} rounded to {r}"))
            .filter(|&r| r == hi)
            .count();
        let want = (y - lo) / (hi - lo);
        let got = ups as f32 / n as f32;
        assert!((got - want).abs() < 0.015, "{y}: up {got}, expected {want}");
    }
}
