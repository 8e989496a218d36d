//! Sliding-window layers that keep only their window (a ring of 512 positions on gemma3) on a
//! ~700-token prompt, longer than the window:
//! - the ring gives exactly the logits of a full cache masked by the window (same rows, same
//!   masking distances), fed in batches that straddle the moment the window fills;
//! - both match llama.cpp teacher-forced (top-1 and relative L2 at every position past the
//!   window), and do so far better than the same model with the window switched off — so the
//!   comparison can tell a wrong window from a right one.

mod common;

use dsrun::engine::layer_windows;
use dsrun::gguf::GgufFile;
use dsrun::model::forward::forward;
use dsrun::model::{HParams, KvCache, KvTypes, Weights};
use dsrun::sampling::argmax;
use dsrun_quantize::llama::{LlamaContext, LlamaModel};

const N_TOK: usize = 700;

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// (mean rel. L2, top-1 agreement) over positions `from..`.
fn compare(a: &[f32], b: &[f32], n_vocab: usize, from: usize) -> (f64, f64) {
    let n = a.len() / n_vocab;
    let (mut l2, mut same) = (0.0, 0);
    for p in from..n {
        let (x, y) = (&a[p * n_vocab..][..n_vocab], &b[p * n_vocab..][..n_vocab]);
        l2 += rel_l2(x, y);
        same += (argmax(x) == argmax(y)) as usize;
    }
    let m = (n - from) as f64;
    (l2 / m, same as f64 / m)
}

#[test]
fn gemma3_ring_matches_full_cache_and_llamacpp_past_the_window() {
    let path = common::model(common::GEMMA3);
    let lm = LlamaModel::load(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let hp = HParams::from_gguf(&file).unwrap();
    let w = Weights::load(&file, &hp).unwrap();
    let window = hp.sliding_window.expect("gemma3 has a sliding window");
    assert!(N_TOK > window + 100, "the prompt must pass the window");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpora/janeausten/prideprejudice.txt"),
    )
    .or_else(|_| std::fs::read_to_string("/work/shared/corpora/janeausten/prideprejudice.txt"))
    .expect("the Pride and Prejudice corpus (shared/corpora)");
    let start = text.find("It is a truth").unwrap_or(0);
    let mut ids: Vec<i32> = lm.tokenize(&text[start..start + 6000], true, false);
    ids.truncate(N_TOK);
    assert_eq!(ids.len(), N_TOK);
    let ids_u: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let (n_ctx, kv_dim, n_vocab) = (1024, hp.n_head_kv * hp.head_dim, hp.n_vocab);

    // Batches of 300 (the second fills the window midway) and one of 1 at the end, for the full
    // cache and the rings alike: a batch of one token takes the decoding kernels, whose float
    // order differs (by rounding) from the prompt GEMM's, so equal batches make equal logits.
    let batches = [
        &ids_u[..300],
        &ids_u[300..600],
        &ids_u[600..699],
        &ids_u[699..],
    ];
    let mut full = KvCache::new(hp.n_layer, n_ctx, kv_dim);
    let mut full_logits = Vec::new();
    for batch in batches {
        full_logits.extend(forward(&hp, &w, &mut full, batch, true));
    }
    // Rings.
    let windows = layer_windows(&hp);
    assert!(windows.iter().any(Option::is_some) && windows.iter().any(Option::is_none));
    let mut ring = KvCache::with_windows(n_ctx, kv_dim, KvTypes::default(), &windows).unwrap();
    let n_local = windows.iter().filter(|w| w.is_some()).count();
    let positions = n_local * window + (hp.n_layer - n_local) * n_ctx;
    assert_eq!(
        ring.bytes(),
        positions * kv_dim * 2 * 2,
        "the local layers keep their window"
    );
    let mut ring_logits = Vec::new();
    for batch in batches {
        ring_logits.extend(forward(&hp, &w, &mut ring, batch, true));
    }
    assert!(
        ring_logits == full_logits,
        "the ring's logits differ from the full cache's (worst rel. L2 {:.2e})",
        compare(&ring_logits, &full_logits, n_vocab, 0).0
    );

    // The window switched off: what a wrong window looks like.
    let mut no_window = hp.clone();
    no_window.sliding_window = None;
    let mut kv = KvCache::new(hp.n_layer, n_ctx, kv_dim);
    let unwindowed = forward(&no_window, &w, &mut kv, &ids_u, true);

    let theirs = LlamaContext::new(&lm, n_ctx as u32, n_ctx as u32, 2)
        .unwrap()
        .eval(&ids, true)
        .unwrap();
    let ours = compare(&ring_logits, &theirs, n_vocab, window);
    let wrong = compare(&unwindowed, &theirs, n_vocab, window);
    let before = compare(
        &ring_logits[..window * n_vocab],
        &theirs[..window * n_vocab],
        n_vocab,
        0,
    );
    eprintln!(
        "gemma3, {N_TOK} tokens, mean rel. L2 / top-1 vs llama.cpp: positions < {window}: \
         {:.4}/{:.3}; positions >= {window}: ring {:.4}/{:.3}, no window {:.4}/{:.3}",
        before.0, before.1, ours.0, ours.1, wrong.0, wrong.1
    );
    assert!(ours.0 < 0.15, "past the window: rel. L2 {:.4}", ours.0);
    assert!(
        ours.1 >= 0.9,
        "past the window: top-1 agreement {:.3}",
        ours.1
    );
    assert!(
        ours.0 < 0.5 * wrong.0,
        "the window makes no visible difference"
    );
}
