//! The quantized KV cache (`-ctk/-ctv` q8_0, q4_0) against llama.cpp in-process with the same
//! cache types (and flash attention, which llama.cpp needs for a quantized V): teacher-forced on
//! one prompt, dsrun's logits at every position against llama.cpp's.
//!
//! What the test pins down: with a q8_0 cache the two engines agree about as closely as with f16
//! (the cache adds little rounding); with q4_0 both engines move visibly away from their f16
//! results, and dsrun's q4_0 logits are nearer llama.cpp's q4_0 logits than llama.cpp's f16 ones
//! — so dsrun stores what llama.cpp stores (Hadamard-rotated rows in the same blocks), not merely
//! "something lossy". Measured 2026-11-29 (mean rel. L2 over 76 positions / top-1 agreement):
//!
//! | model       | f16          | q8_0         | q4_0         | dsrun q4_0 vs llama.cpp f16 |
//! |-------------|--------------|--------------|--------------|-----------------------------|
//! | Qwen2.5-0.5B| 0.018 / 0.96 | 0.019 / 0.95 | 0.093 / 0.80 | 0.31                        |
//! | SmolLM2-135M| 0.042 / 0.97 | 0.051 / 0.96 | 0.152 / 0.88 | 0.20                        |
//!
//! Without the rotation dsrun's q4_0 was 0.47 from llama.cpp's on Qwen2.5 (further than from
//! its f16), which is how the rotation was found.

mod common;

use dsrun::gguf::GgufFile;
use dsrun::model::forward::forward;
use dsrun::model::{HParams, KvCache, KvTypes, Weights};
use dsrun::sampling::argmax;
use dsrun::tensor::GgmlType;
use dsrun_quantize::llama::{LlamaContext, LlamaModel};

const PROMPT: &str = "It is a truth universally acknowledged, that a single man in possession \
of a good fortune, must be in want of a wife. However little known the feelings or views of such \
a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of \
the surrounding families, that he is considered the rightful property of some one or other of \
their daughters.";

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

struct Run {
    logits: Vec<f32>,
}

fn dsrun_logits(file: &GgufFile, ids: &[u32], types: KvTypes) -> Run {
    let hp = HParams::from_gguf(file).unwrap();
    let w = Weights::load(file, &hp).unwrap();
    let mut kv = KvCache::with_types(hp.n_layer, 256, hp.n_head_kv * hp.head_dim, types).unwrap();
    Run {
        logits: forward(&hp, &w, &mut kv, ids, true),
    }
}

/// (mean rel. L2 over positions, share of positions whose argmax agrees).
fn compare(a: &[f32], b: &[f32], n_vocab: usize) -> (f64, f64) {
    let n = a.len() / n_vocab;
    let (mut l2, mut same) = (0.0, 0);
    for p in 0..n {
        let (x, y) = (&a[p * n_vocab..][..n_vocab], &b[p * n_vocab..][..n_vocab]);
        l2 += rel_l2(x, y);
        same += (argmax(x) == argmax(y)) as usize;
    }
    (l2 / n as f64, same as f64 / n as f64)
}

fn check(name: &str) {
    let path = common::model(name);
    let lm = LlamaModel::load(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let n_vocab = lm.n_vocab();
    let ids: Vec<i32> = lm.tokenize(PROMPT, true, false);
    let ids_u: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let theirs = |t: GgmlType| {
        let id = t.id();
        LlamaContext::with_kv_types(&lm, 256, 256, 2, true, (id, id))
            .unwrap()
            .eval(&ids, true)
            .unwrap()
    };
    let same = |t| KvTypes { k: t, v: t };
    let (ref16, ref8, ref4) = (
        theirs(GgmlType::F16),
        theirs(GgmlType::Q8_0),
        theirs(GgmlType::Q4_0),
    );
    let our16 = dsrun_logits(&file, &ids_u, same(GgmlType::F16)).logits;
    let our8 = dsrun_logits(&file, &ids_u, same(GgmlType::Q8_0)).logits;
    let our4 = dsrun_logits(&file, &ids_u, same(GgmlType::Q4_0)).logits;
    let f16 = compare(&our16, &ref16, n_vocab);
    let q8 = compare(&our8, &ref8, n_vocab);
    let q4 = compare(&our4, &ref4, n_vocab);
    let q4_vs_their16 = compare(&our4, &ref16, n_vocab);
    let their_shift = compare(&ref4, &ref16, n_vocab);
    eprintln!(
        "{name} ({} tokens): dsrun vs llama.cpp, mean rel. L2 / top-1 agreement: \
         f16 {:.4}/{:.3}, q8_0 {:.4}/{:.3}, q4_0 {:.4}/{:.3}; dsrun q4_0 vs llama.cpp f16 \
         {:.4}; llama.cpp q4_0 vs its f16 {:.4}",
        ids.len(),
        f16.0,
        f16.1,
        q8.0,
        q8.1,
        q4.0,
        q4.1,
        q4_vs_their16.0,
        their_shift.0
    );
    eprintln!(
        "{name}: q8_0 vs f16: llama.cpp {:.4}, dsrun {:.4}; q4_0 vs f16: dsrun {:.4}",
        compare(&ref8, &ref16, n_vocab).0,
        compare(&our8, &our16, n_vocab).0,
        compare(&our4, &our16, n_vocab).0
    );
    assert!(
        q8.0 < 1.5 * f16.0 + 0.01,
        "{name}: q8_0 cache drifts from llama.cpp's"
    );
    // Top-1 agreement moves by a few of the 76 positions (near-ties) with the float order of
    // the matrix products alone: SmolLM2 at f16 / q8_0 gave 0.97 / 0.96 with the AVX-512 row
    // kernels, 0.961 / 0.908 with the AVX2 ones (`DSRUN_SIMD=avx2`) and 0.987 / 0.934 with the
    // prompt GEMM (the plain kernels' order), mean rel. L2 staying within 0.039-0.058. Hence a
    // margin of 0.1 (7 positions); the L2 bound above carries the comparison.
    assert!(q8.1 >= f16.1 - 0.1, "{name}: q8_0 top-1 agreement");
    assert!(q4.0 < 0.2, "{name}: q4_0 cache drifts from llama.cpp's");
    assert!(q4.1 >= 0.75, "{name}: q4_0 top-1 agreement");
    assert!(
        q4.0 < 0.85 * q4_vs_their16.0,
        "{name}: dsrun's q4_0 logits are not nearer llama.cpp's q4_0 than its f16"
    );
}

#[test]
fn qwen2_05b_q8_0_and_q4_0_cache() {
    check(common::QWEN05);
}

#[test]
fn smollm2_q8_0_and_q4_0_cache() {
    check(common::SMOLLM2);
}
