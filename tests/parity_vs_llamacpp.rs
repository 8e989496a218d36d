//! dsrun's reference forward pass against llama.cpp in-process, on the real models: the logits
//! of the first generated position, and a greedy continuation checked token by token.
//!
//! Tolerances, and why: llama.cpp multiplies quantized weights with activations that it
//! quantizes to 8 bits (Q8_0/Q8_K) and keeps the KV cache in f16, while dsrun's reference path
//! keeps activations and the cache in f32. That difference is a rounding-level noise on the
//! logits: we require the same top-1 token and a relative L2 error of the logit vector under 10%.
//! Measured (2026-11-29): 0.0001–0.0003 on the f16 tiny MoE, where llama.cpp's activations stay
//! f16 — the architecture itself agrees to rounding — and 0.002–0.064 on quantized files, where
//! the error is llama.cpp's 8-bit activations (gemma3, with the largest activations, is highest).
//! Greedy text is compared with llama.cpp's own greedy tokens fed to both engines (teacher forcing): at every position dsrun's argmax must equal
//! llama.cpp's, except where llama.cpp's own top two logits are within 0.05 of each other — a
//! tie that rounding may break either way (such positions are counted and printed).
//!
//! CI runs a few prompts per model so the suite stays fast; `scripts/parity.sh` runs the full set
//! (10 prompts x 32 tokens for each model) with `--ignored`.

mod common;

use dsrun::gguf::GgufFile;
use dsrun::model::forward::forward;
use dsrun::model::{HParams, KvCache, Weights};
use dsrun::sampling::argmax;
use dsrun_quantize::llama::{LlamaContext, LlamaModel};

const PROMPTS: &[&str] = &[
    "The capital of France is Paris. The capital of Germany is",
    "It is a truth universally acknowledged, that",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colours are",
    "Q: What is 12 times 7?\nA:",
    "ROMEO.\n",
    "Photosynthesis is the process by which",
    "The quick brown fox",
    "In 1492, Columbus",
];

struct Report {
    rel_l2: f64,
    steps: usize,
    ties: usize,
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Top-1 and the gap to the runner-up.
fn top2_gap(l: &[f32]) -> (u32, f32) {
    let best = argmax(l);
    let second = l
        .iter()
        .enumerate()
        .filter(|&(i, _)| i as u32 != best)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (best, l[best as usize] - second)
}

fn check_model(name: &str, prompts: &[&str], n_gen: usize) {
    let path = common::model(name);
    let lm = LlamaModel::load(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let hp = HParams::from_gguf(&file).unwrap();
    let w = Weights::load(&file, &hp).unwrap();
    let n_vocab = hp.n_vocab;
    let mut worst = 0.0f64;
    for prompt in prompts {
        let ids: Vec<i32> = lm.tokenize(prompt, true, false);
        // llama.cpp: greedy continuation and the logits at every step.
        let mut ctx = LlamaContext::new(&lm, 512, 512, 2).unwrap();
        let mut ref_logits = vec![ctx.eval(&ids, false).unwrap()];
        let mut gen = Vec::new();
        for _ in 0..n_gen {
            let t = argmax(ref_logits.last().unwrap()) as i32;
            gen.push(t);
            ref_logits.push(ctx.eval(&[t], false).unwrap());
        }
        // dsrun, teacher-forced on the same tokens, all logits in one batch.
        let all: Vec<u32> = ids.iter().chain(&gen).map(|&t| t as u32).collect();
        let mut kv = KvCache::new(hp.n_layer, 512, hp.n_head_kv * hp.head_dim);
        let ours = forward(&hp, &w, &mut kv, &all, true);
        let mut rep = Report {
            rel_l2: 0.0,
            steps: 0,
            ties: 0,
        };
        for (step, theirs) in ref_logits.iter().take(n_gen).enumerate() {
            let pos = ids.len() - 1 + step;
            let mine = &ours[pos * n_vocab..(pos + 1) * n_vocab];
            let (their_top, gap) = top2_gap(theirs);
            if step == 0 {
                rep.rel_l2 = rel_l2(mine, theirs);
                assert_eq!(
                    argmax(mine),
                    their_top,
                    "{name}: {prompt:?}: first token differs"
                );
                assert!(
                    rep.rel_l2 < 0.10,
                    "{name}: {prompt:?}: logits rel. L2 {:.4}",
                    rep.rel_l2
                );
            }
            if argmax(mine) != their_top {
                assert!(
                    gap < 0.05,
                    "{name}: {prompt:?}: step {step}: dsrun picks {} but llama.cpp {their_top} (gap {gap})",
                    argmax(mine)
                );
                rep.ties += 1;
            }
            rep.steps += 1;
        }
        worst = worst.max(rep.rel_l2);
        eprintln!(
            "{name}: {prompt:?}: first-logit rel. L2 {:.5}, {} steps, {} near-ties",
            rep.rel_l2, rep.steps, rep.ties
        );
    }
    eprintln!("{name}: worst first-logit rel. L2 {worst:.5}");
}

#[test]
fn tiny_moe_f16_q8_q4km() {
    check_model(common::TINY_F16, PROMPTS, 32);
    check_model(common::TINY_Q8, &PROMPTS[..3], 32);
    check_model(common::TINY_Q4KM, &PROMPTS[..3], 32);
}

#[test]
fn smollm2() {
    check_model(common::SMOLLM2, &PROMPTS[..3], 16);
}

#[test]
fn gemma3() {
    check_model(common::GEMMA3, &PROMPTS[..2], 8);
}

#[test]
fn qwen2_05b() {
    check_model(common::QWEN05, &PROMPTS[..2], 8);
}

#[test]
fn qwen2_15b() {
    check_model(common::QWEN15, &PROMPTS[..1], 4);
}

/// The full set: every model, 10 prompts, 32 tokens (`scripts/parity.sh`).
#[test]
#[ignore]
fn full_parity_all_models() {
    for name in [
        common::SMOLLM2,
        common::GEMMA3,
        common::QWEN05,
        common::QWEN15,
        common::TINY_Q8,
        common::TINY_Q4KM,
    ] {
        check_model(name, PROMPTS, 32);
    }
}
