//! `--kv-window W --kv-sinks S` (and the summary) on SmolLM2, W = 16, S = 4, 200 tokens:
//! - the fast path (sinks, a ring of the cache's type, queries turned once per key group)
//!   gives the logits of the reference path (every key rotated explicitly to its position in
//!   the cache, from every token's raw K/V), at every token: the first ones, the moment the
//!   window fills, batches that straddle it, and long after; with the cache poisoned with NaN,
//!   so that reading a slot never written shows;
//! - the result does not depend on how the tokens are batched;
//! - before the window fills, it is full attention: a window longer than the text gives the
//!   logits of the full cache.

mod common;

use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::model::kv_window::{Assign, SinkPos, SlotKeys, StreamConfig, SummaryConfig};
use dsrun::model::KvTypes;
use dsrun::sampling::argmax;
use std::sync::Arc;

const N_TOK: usize = 200;

fn text() -> String {
    let t = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpora/janeausten/prideprejudice.txt"),
    )
    .or_else(|_| std::fs::read_to_string("/work/shared/corpora/janeausten/prideprejudice.txt"))
    .expect("the Pride and Prejudice corpus (shared/corpora)");
    let start = t.find("It is a truth").unwrap_or(0);
    t[start..start + 2000].to_string()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Logits of every token, fed in batches of the given sizes (cycled).
fn logits(
    s: &mut Session,
    ids: &[u32],
    batches: &[usize],
    stream: Option<StreamConfig>,
    types: KvTypes,
) -> Vec<f32> {
    s.set_kv(types, stream).unwrap();
    s.kv.poison();
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < ids.len() {
        let n = batches[i % batches.len()].min(ids.len() - at);
        out.extend(s.eval_all(&ids[at..at + n]).unwrap());
        at += n;
        i += 1;
    }
    out
}

/// Mean per-token relative L2 and top-1 agreement.
fn compare(a: &[f32], b: &[f32], n_vocab: usize) -> (f64, f64) {
    assert!(
        a.iter().all(|x| x.is_finite()),
        "NaN: a slot was read before it was written"
    );
    assert!(
        b.iter().all(|x| x.is_finite()),
        "NaN: a slot was read before it was written"
    );
    let (mut sum, mut same) = (0.0f64, 0);
    let n = a.len() / n_vocab;
    for p in 0..n {
        let (x, y) = (&a[p * n_vocab..][..n_vocab], &b[p * n_vocab..][..n_vocab]);
        sum += rel_l2(x, y);
        same += (argmax(x) == argmax(y)) as usize;
    }
    (sum / n as f64, same as f64 / n as f64)
}

fn cfg(
    window: usize,
    sinks: usize,
    summary: Option<SummaryConfig>,
    reference: bool,
) -> StreamConfig {
    StreamConfig {
        window,
        sinks,
        sink_pos: SinkPos::Cache,
        summary,
        reference,
    }
}

#[test]
fn window_sinks_and_summary_match_the_reference_path() {
    let path = common::model(common::SMOLLM2);
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let mut ids = model.tokenizer.encode(&text(), true, false).unwrap();
    ids.truncate(N_TOK);
    assert_eq!(ids.len(), N_TOK);
    let nv = model.hp.n_vocab;
    let hp = &model.hp;
    let mut s = Session::new(&model, 256, 64).unwrap();
    let f16 = KvTypes::default();
    // The window fills at token 20 (S + W); batches of 7 and 13 straddle it and every later
    // eviction point; batch 1 is decoding.
    let batches: &[usize] = &[1, 2, 7, 13, 1, 40, 3];

    // The noise floor: a window longer than the text evicts nothing, so it is full attention
    // computed in another order (f32 sinks, the query turned per key group). This model's
    // logits move visibly with such rounding (its query/key products are large and cancel).
    let full = logits(&mut s, &ids, batches, None, f16);
    let long = logits(&mut s, &ids, batches, Some(cfg(512, 4, None, false)), f16);
    let (noise, top1) = compare(&long, &full, nv);
    eprintln!(
        "full cache vs a window longer than the text: mean rel. L2 {noise:.2e}, top-1 {top1:.3}"
    );
    assert!(
        noise < 0.05 && top1 > 0.95,
        "a window that evicts nothing must be full attention"
    );

    // Random centroids stand in for learned ones: the path is the same.
    let mut rng = dsrun::rng::Rng::new(5);
    let m = 3;
    let cents = rng.vec(hp.n_layer * hp.n_head_kv * m * hp.head_dim, 1.0);
    let summaries = [
        None,
        Some(SummaryConfig {
            n_slot: m,
            assign: Assign::Centroids(Arc::new(cents)),
            log_weight: 1.0,
            keys: SlotKeys::Window,
            horizon: 0,
        }),
        Some(SummaryConfig {
            n_slot: 4,
            assign: Assign::RoundRobin,
            log_weight: 0.0,
            keys: SlotKeys::TruePos,
            horizon: 0,
        }),
    ];
    for summary in summaries {
        let what = format!("{:?}", summary.as_ref().map(|s| s.n_slot));
        let fast = logits(
            &mut s,
            &ids,
            batches,
            Some(cfg(16, 4, summary.clone(), false)),
            f16,
        );
        let reference = logits(
            &mut s,
            &ids,
            batches,
            Some(cfg(16, 4, summary.clone(), true)),
            f16,
        );
        let (d, top1) = compare(&fast, &reference, nv);
        eprintln!("summary slots {what}: fast vs reference: mean rel. L2 {d:.2e}, top-1 {top1:.3}");
        assert!(
            d < 2.0 * noise.max(1e-3) && top1 >= 0.93,
            "{what}: fast path != reference"
        );
        // The window matters: far more than the rounding noise.
        let (moved, _) = compare(&fast[40 * nv..], &full[40 * nv..], nv);
        eprintln!("summary slots {what}: vs the full cache past token 40: {moved:.2e}");
        assert!(
            moved > 4.0 * d,
            "{what}: a window of 16 should change later logits"
        );
    }

    // A quantized cache goes through the same path (Hadamard rotation in and out).
    let q8 = KvTypes {
        k: dsrun::tensor::GgmlType::Q8_0,
        v: dsrun::tensor::GgmlType::Q8_0,
    };
    let fast = logits(&mut s, &ids, batches, Some(cfg(16, 4, None, false)), q8);
    let reference = logits(&mut s, &ids, batches, Some(cfg(16, 4, None, true)), q8);
    let (d, top1) = compare(&fast, &reference, nv);
    eprintln!("q8_0 cache: fast vs reference: mean rel. L2 {d:.2e}, top-1 {top1:.3}");
    assert!(d < 2.0 * noise.max(1e-3) && top1 >= 0.93);
}
