//! RoPE scaling against llama.cpp in-process: the logits of one prompt on Qwen2.5-Coder-0.5B
//! with YaRN (factor 4 over an original context of 32768, as Qwen2.5's model card asks for
//! 128K) and with linear scaling (factor 2), set through the same parameters on both sides
//! (llama.cpp's context parameters, dsrun's `RopeOverrides`).
//!
//! Tolerance as in tests/parity_vs_llamacpp.rs: the last position's logits within a relative
//! L2 of 0.15 (the two engines round activations and the f16 cache at different places; Qwen
//! measured 0.006–0.05 there) and the same top-1. The test can fail: dsrun without the scaling,
//! YaRN as plain linear x4 (no ramp) and YaRN without its magnitude 1 + 0.1 ln 4 must each land
//! at least 2.5x further from llama.cpp (measured 2026-11-29: YaRN 0.017 from llama.cpp, the
//! wrong ones 0.055 / 0.44 / 0.053; linear 0.019, unscaled 0.28).

mod common;

use dsrun::gguf::{GgufFile, Value};
use dsrun::model::forward::forward;
use dsrun::model::rope_scaling::{RopeOverrides, RopeScalingType};
use dsrun::model::{HParams, KvCache, Weights};
use dsrun::sampling::argmax;
use dsrun_quantize::llama::{LlamaContext, LlamaModel, RopeOptions};

const REL_L2: f64 = 0.15;

const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when \
    Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press. \
    Within fifty years printers worked in more than two hundred cities across Europe, and the \
    cost of books fell so far that reading spread from monasteries and universities to \
    merchants, craftsmen and their families. The consequences were";

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn yarn_and_linear_match_llama_cpp() {
    let path = common::model("qwen2.5-coder-0.5b-instruct-awq.gguf");
    let lm = LlamaModel::load(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let hp0 = HParams::from_gguf(&file).unwrap();
    let w = Weights::load(&file, &hp0).unwrap();
    let ids: Vec<i32> = lm.tokenize(PROMPT, true, false);
    let toks: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let n = toks.len();
    let last = |l: &[f32]| l[(n - 1) * hp0.n_vocab..].to_vec();
    let ours = |hp: &HParams| {
        let mut kv = KvCache::new(hp.n_layer, 256, hp.n_head_kv * hp.head_dim);
        last(&forward(hp, &w, &mut kv, &toks, true))
    };
    let plain = ours(&hp0);
    let cases = [
        (
            "yarn x4 over 32768",
            RopeOptions {
                scaling_type: Some(2),
                freq_scale: 0.25,
                yarn_orig_ctx: 32768,
                ..Default::default()
            },
            RopeOverrides {
                scaling: Some(RopeScalingType::Yarn),
                freq_scale: Some(0.25),
                yarn_orig_ctx: Some(32768),
                ..Default::default()
            },
        ),
        (
            "linear x2",
            RopeOptions {
                scaling_type: Some(1),
                freq_scale: 0.5,
                ..Default::default()
            },
            RopeOverrides {
                scaling: Some(RopeScalingType::Linear),
                freq_scale: Some(0.5),
                ..Default::default()
            },
        ),
    ];
    let mut failures = Vec::new();
    for (name, theirs_opts, ours_opts) in cases {
        let mut ctx =
            LlamaContext::with_rope(&lm, 256, 256, 2, true, (1, 1), &theirs_opts).unwrap();
        let theirs = ctx.eval(&ids, false).unwrap();
        let hp = hp0.clone().with_rope(&ours_opts).unwrap();
        let mine = ours(&hp);
        let l2 = rel_l2(&mine, &theirs);
        let (a, b) = (argmax(&mine), argmax(&theirs));
        eprintln!("{name}: {n} tokens, rel. L2 to llama.cpp {l2:.5}, top-1 {a} / {b}");
        if l2 >= REL_L2 || a != b {
            failures.push(format!(
                "{name}: rel. L2 {l2:.4} (limit {REL_L2}), top-1 {a} vs {b}"
            ));
        }
        // Wrong implementations must land well outside that distance.
        let mut wrong = vec![("no scaling", plain.clone())];
        if ours_opts.scaling == Some(RopeScalingType::Yarn) {
            let linear = RopeOverrides {
                scaling: Some(RopeScalingType::Linear),
                ..ours_opts
            };
            wrong.push((
                "linear x4 (no ramp)",
                ours(&hp0.clone().with_rope(&linear).unwrap()),
            ));
            let mut no_mscale = hp.clone();
            no_mscale.rope.yarn.attn_factor /= 1.0 + 0.1 * 4f32.ln();
            wrong.push(("YaRN without its magnitude", ours(&no_mscale)));
        }
        for (what, logits) in wrong {
            let d = rel_l2(&logits, &theirs);
            eprintln!("  {what}: {d:.5} from llama.cpp");
            if d < 2.5 * l2 {
                failures.push(format!(
                    "{name}: {what} is {d:.4} from llama.cpp, under 2.5x dsrun's {l2:.4}: \
                     this prompt cannot tell them apart"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// YaRN from the file's keys, as gpt-oss ships them (factor 32 over 4096), on the tiny
/// random-weight gpt-oss (F32, sliding-window layers every other one, which keep the file's
/// scaling in llama.cpp): the logits of 48 positions against llama.cpp within 1.5e-3 relative
/// L2 and the same top-1. YaRN's magnitude (1 + 0.1 ln 32 on q and k: scores x1.81) sharpens
/// these random attentions, so rounding shows more than without it (measured 2026-11-29: worst
/// 8.5e-4 here, 1.6e-5 for the plain file in tests/moe_archs_vs_llamacpp.rs); a magnitude off
/// by 0.1% either way measured 2.1e-3, the file without the keys 0.86.
#[test]
fn gpt_oss_yarn_from_metadata_matches_llama_cpp() {
    let (_, plain) = common::tiny_synth("gpt-oss", "rope");
    let path = common::copy_with(
        &plain,
        "gpt-oss-yarn.gguf",
        &[
            ("gpt-oss.rope.scaling.type", Value::String("yarn".into())),
            ("gpt-oss.rope.scaling.factor", Value::F32(32.0)),
            (
                "gpt-oss.rope.scaling.original_context_length",
                Value::U32(4096),
            ),
        ],
        None,
    );

    let (n, worst, moved) = against_llama_cpp(&path, &plain);
    eprintln!(
        "gpt-oss YaRN x32 over 4096: {n} positions, worst rel. L2 {worst:.2e}; without the \
         keys {moved:.2e}"
    );
    assert!(worst < 1.5e-3, "worst rel. L2 {worst}");
    assert!(moved > 1e-1, "the keys should matter: {moved}");
}

/// The first 48 positions of PROMPT on the synthetic file `path` against llama.cpp: the count
/// of positions, the worst relative L2 of dsrun's logits to llama.cpp's, and the worst of
/// `plain`'s (the same file without the feature under test); every top-1 must agree.
fn against_llama_cpp(path: &std::path::Path, plain: &std::path::Path) -> (usize, f64, f64) {
    use dsrun::engine::{Model, Session};

    let logits = |p: &std::path::Path| {
        let file = GgufFile::open(p).unwrap();
        let model = Model::load(&file).unwrap();
        let mut ids = model.tokenizer.encode(PROMPT, true, false).unwrap();
        ids.truncate(48);
        let mut s = Session::new(&model, 128, 128).unwrap();
        (ids.clone(), model.hp.n_vocab, s.eval_all(&ids).unwrap())
    };
    let (ids, nv, ours) = logits(path);
    let (_, _, unscaled) = logits(plain);
    let lm = LlamaModel::load(path).unwrap();
    let mut ctx = LlamaContext::new(&lm, 128, 128, 2).unwrap();
    let li: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let theirs = ctx.eval(&li, true).unwrap();
    let (mut worst, mut moved) = (0.0f64, 0.0f64);
    for p in 0..ids.len() {
        let r = p * nv..(p + 1) * nv;
        worst = worst.max(rel_l2(&ours[r.clone()], &theirs[r.clone()]));
        moved = moved.max(rel_l2(&unscaled[r.clone()], &theirs[r.clone()]));
        assert_eq!(argmax(&ours[r.clone()]), argmax(&theirs[r]), "position {p}");
    }
    (ids.len(), worst, moved)
}

/// Llama 3.1's frequency factors (`rope_freqs.weight`, one divisor per rotated pair, shared by
/// every layer) on the tiny random-weight llama (F32): the logits of 48 positions against
/// llama.cpp within 1e-3 relative L2 and the same top-1; the same file without the tensor must
/// land far away. The factors here (0.5 to 4, cycling) move every pair, not only the slow ones
/// that Llama 3.1's scheme stretches, so that 48 positions show a difference. Measured
/// 2026-12-06: worst 6.9e-4 (all factors 1: 2.5e-4 to 4.8e-4 at positions 1-11, this
/// harness's rounding), without the factors 0.57. The cycle started at 1 instead of 4 meets a
/// near-tie of the random model at position 18 (0.14 there, 3.5e-4 before it); the other
/// three starting points pass.
#[test]
fn rope_freqs_match_llama_cpp() {
    let (spec, plain) = common::tiny_synth("llama", "rope-freqs");
    let factors: Vec<f32> = (0..spec.head_dim / 2)
        .map(|i| [4.0, 0.5, 2.0, 1.0][i % 4])
        .collect();
    let path = common::copy_with(&plain, "llama-freqs.gguf", &[], Some(factors));
    let (n, worst, moved) = against_llama_cpp(&path, &plain);
    eprintln!(
        "llama rope_freqs: {n} positions, worst rel. L2 {worst:.2e}; without the factors \
         {moved:.2e}"
    );
    assert!(worst < 1e-3, "worst rel. L2 {worst}");
    assert!(
        moved > 20.0 * worst.max(1e-4),
        "the factors should matter: {moved}"
    );
}

/// DeepSeek's YaRN (as DeepSeek-V2/V3 files ship it: factor over the original context, and
/// `mscale_all_dim` stored ×0.1 as `yarn_log_multiplier`) on the tiny random-weight deepseek2
/// (F32, latent attention): the score scale becomes mscale² / sqrt(dk) with mscale =
/// 1 + 0.1 · mscale_all_dim · ln(factor), and the RoPE magnitude cancels. 48 positions against
/// llama.cpp within 2.5e-3 relative L2 and the same top-1; the same file without the log
/// multiplier (the scale without mscale²) must land far away. Measured 2026-12-06: worst
/// 1.7e-3, at the rounding level of this harness on this model (the file without YaRN: worst
/// 1.45e-3; the f16 latent cache), without mscale² 1.03.
#[test]
fn deepseek2_yarn_matches_llama_cpp() {
    let (_, plain) = common::tiny_synth("deepseek2", "rope-deepseek");
    let yarn = |log_mul: f32| {
        vec![
            ("deepseek2.rope.scaling.type", Value::String("yarn".into())),
            ("deepseek2.rope.scaling.factor", Value::F32(40.0)),
            (
                "deepseek2.rope.scaling.original_context_length",
                Value::U32(4096),
            ),
            (
                "deepseek2.rope.scaling.yarn_log_multiplier",
                Value::F32(log_mul),
            ),
        ]
    };
    // DeepSeek-V2-Lite: factor 40, mscale_all_dim 0.707, stored as 0.0707.
    let path = common::copy_with(&plain, "deepseek2-yarn.gguf", &yarn(0.0707), None);
    let no_mscale = common::copy_with(&plain, "deepseek2-yarn-no-mscale.gguf", &yarn(0.0), None);
    let (n, worst, moved) = against_llama_cpp(&path, &no_mscale);
    eprintln!(
        "deepseek2 YaRN x40 over 4096: {n} positions, worst rel. L2 {worst:.2e}; without \
         mscale² {moved:.2e}"
    );
    assert!(worst < 2.5e-3, "worst rel. L2 {worst}");
    assert!(moved > 20.0 * worst, "mscale² should matter: {moved}");
}
