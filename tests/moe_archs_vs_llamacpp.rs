//! Every MoE architecture of the table against llama.cpp in-process, on random-weight files
//! written at test time by `dsrun::synth` (a few MB each, with the tiny Qwen3-MoE's tokenizer):
//! the logits of all 64 positions of one sequence, and a file whose experts disagree with its
//! metadata refused with a clear error.
//!
//! Tolerance: the files are F32, so both engines compute in f32; what differs is the order of
//! sums and llama.cpp's f16 rounding of Q in its flash attention (both keep K/V in f16).
//! Measured (2026-11-29, this machine): worst relative L2 over the 64 positions 3e-7 to 3e-5
//! depending on the architecture (printed by the test). We require under 0.001 at every position, and the
//! same top-1 token at every position. A missing feature (an unscaled residual, an ungated or
//! absent shared expert, normalised weights where the model has none) gives 0.03 to 0.3.

mod common;

use dsrun::engine::{Model, Session};
use dsrun::gguf::writer::GgufWriter;
use dsrun::gguf::GgufFile;
use dsrun::sampling::argmax;
use dsrun::synth::{self, presets};
use dsrun::tensor::GgmlType;
use dsrun_quantize::llama::{LlamaContext, LlamaModel};
use std::path::Path;

const TOL: f64 = 1e-3;
const N_POS: usize = 64;

const TEXT: &str = "It is a truth universally acknowledged, that a single man in possession of a \
good fortune, must be in want of a wife. However little known the feelings or views of such a man \
may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the \
surrounding families, that he is considered as the rightful property of some one or other of \
their daughters.";

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A random-weight GGUF's path in the temporary directory, removed when dropped.
fn temp_gguf(tag: &str) -> common::TempFile {
    common::TempFile::new(&format!("synth-{tag}.gguf"))
}

fn vocab() -> GgufFile {
    GgufFile::open(common::model(common::TINY_F16)).unwrap()
}

/// llama.cpp's top-1 and its margin over the runner-up.
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

/// dsrun and llama.cpp on the same 64 tokens: the worst relative L2 error, or what went wrong.
/// Every position must be within `tol` with the same top-1 token.
fn compare(path: &Path, tol: f64) -> Result<f64, String> {
    let c = compare_positions(path, tol, 0.0);
    match c.bad.first() {
        Some(msg) => Err(msg.clone()),
        None => Ok(c.worst),
    }
}

/// Per-position comparison.
struct Comparison {
    /// Worst relative L2 error over the positions within the tolerance.
    worst: f64,
    /// Positions out of tolerance or with another top-1, described.
    bad: Vec<String>,
    /// Positions whose top-1 differs where llama.cpp's own top two are within the tie margin.
    ties: usize,
}

fn compare_positions(path: &Path, tol: f64, tie: f32) -> Comparison {
    let file = GgufFile::open(path).unwrap();
    let model = Model::load(&file).unwrap();
    let ids = model.tokenizer.encode(TEXT, true, false).unwrap();
    assert!(ids.len() >= N_POS, "the text has {} tokens", ids.len());
    let ids = &ids[..N_POS];
    let mut s = Session::new(&model, 128, 128).unwrap();
    let ours = s.eval_all(ids).unwrap();

    let lm = LlamaModel::load(path).expect("llama.cpp loads the synthetic file");
    let mut ctx = LlamaContext::new(&lm, 128, 128, 2).unwrap();
    let li: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let theirs = ctx.eval(&li, true).unwrap();

    let nv = model.hp.n_vocab;
    let mut c = Comparison {
        worst: 0.0,
        bad: Vec::new(),
        ties: 0,
    };
    for p in 0..N_POS {
        let (o, t) = (&ours[p * nv..(p + 1) * nv], &theirs[p * nv..(p + 1) * nv]);
        let e = rel_l2(o, t);
        if e >= tol {
            c.bad.push(format!("position {p}: relative L2 {e:.2e}"));
            continue;
        }
        c.worst = c.worst.max(e);
        let (their_top, gap) = top2_gap(t);
        if argmax(o) != their_top {
            if gap < tie {
                c.ties += 1;
            } else {
                c.bad.push(format!(
                    "position {p}: top-1 {} but llama.cpp {their_top} (margin {gap})",
                    argmax(o),
                ));
            }
        }
    }
    c
}

#[test]
fn each_moe_architecture_matches_llamacpp() {
    let vocab = vocab();
    let mut failed = Vec::new();
    for &arch in presets::TINY_ARCHS {
        let spec = presets::tiny(arch).unwrap();
        let tmp = temp_gguf(arch);
        synth::write(&spec, &vocab, &tmp.0, &synth::encode_dsrun).unwrap();
        match compare(&tmp.0, TOL) {
            Ok(worst) => {
                eprintln!("{arch}: {N_POS} positions, worst relative L2 {worst:.2e}, top-1 equal")
            }
            Err(e) => {
                eprintln!("{arch}: {e}");
                failed.push(arch);
            }
        }
    }
    assert!(failed.is_empty(), "differ from llama.cpp: {failed:?}");
}

/// gpt-oss as it ships: experts in MXFP4 (encoded by ggml), the rest F32. Both engines then
/// quantize the activations the experts see to Q8_0, the same way, so the tolerance stays.
/// Measured (2026-11-29): worst relative L2 over 64 positions 2.9e-5.
#[test]
fn gpt_oss_with_mxfp4_experts_matches_llamacpp() {
    let vocab = vocab();
    let spec = synth::SynthSpec {
        expert_type: Some(GgmlType::Mxfp4),
        ..presets::tiny("gpt-oss").unwrap()
    };
    let encode = |ty: GgmlType, v: &[f32], row: usize| -> dsrun::Result<Vec<u8>> {
        if ty == GgmlType::Mxfp4 {
            Ok(dsrun_quantize::ggml::ggml_quantize(ty.id(), v, row).expect("ggml encodes MXFP4"))
        } else {
            synth::encode_dsrun(ty, v, row)
        }
    };
    let tmp = temp_gguf("gpt-oss-mxfp4");
    synth::write(&spec, &vocab, &tmp.0, &encode).unwrap();
    let worst = compare(&tmp.0, TOL).unwrap();
    eprintln!("gpt-oss, MXFP4 experts: worst relative L2 {worst:.2e}, top-1 equal");
}

/// Every architecture with its weight matrices in Q8_0 (dsrun's encoder, bit for bit ggml's):
/// the quantized kernels, with activations rounded to 8 bits by both engines (at different
/// places), so the tolerance is the one of the real-model parity tests (15%), and a top-1 may
/// differ where llama.cpp's top two are within 0.25 (as in `tests/parity_vs_llamacpp.rs`).
///
/// Rounding can also flip a token's choice of experts where two are nearly tied, which changes
/// that position's logits by a lot: the DeepSeek preset (sigmoid scores, a selection bias and
/// groups of two experts) has one such position (53, where the second layer's best two groups
/// are 0.01 apart), its neighbours agreeing to 1–2%. So up to 2 of the 64 positions may be out;
/// a wrong block would put them all out. (With `DSRUN_REFERENCE=1` dsrun multiplies in f32 while
/// llama.cpp still rounds activations to 8 bits: then deepseek2 has 4 such positions, olmoe and
/// gpt-oss 1 each, and this test fails by design.)
/// Measured (2026-11-29): worst relative L2 of the other positions 6e-8 (qwen3moe, llama,
/// gpt-oss: the same integer dot products) to 0.023 (deepseek2).
#[test]
fn each_moe_architecture_in_q8_0_matches_llamacpp() {
    let vocab = vocab();
    let mut failed = Vec::new();
    for &arch in presets::TINY_ARCHS {
        let spec = synth::SynthSpec {
            weight_type: GgmlType::Q8_0,
            ..presets::tiny(arch).unwrap()
        };
        let tmp = temp_gguf(&format!("{arch}-q8"));
        synth::write(&spec, &vocab, &tmp.0, &synth::encode_dsrun).unwrap();
        let c = compare_positions(&tmp.0, 0.15, 0.25);
        eprintln!(
            "{arch} Q8_0: worst relative L2 {:.2e}, {} near-ties, out: {:?}",
            c.worst, c.ties, c.bad
        );
        if c.bad.len() > 2 {
            failed.push(arch);
        }
    }
    assert!(failed.is_empty(), "differ from llama.cpp: {failed:?}");
}

/// The logits are not flat: a random model whose top token barely stands out would make the
/// top-1 check above meaningless.
#[test]
fn synthetic_logits_are_peaked() {
    let vocab = vocab();
    let spec = presets::tiny("qwen2moe").unwrap();
    let tmp = temp_gguf("peak");
    synth::write(&spec, &vocab, &tmp.0, &synth::encode_dsrun).unwrap();
    let file = GgufFile::open(&tmp.0).unwrap();
    let model = Model::load(&file).unwrap();
    let mut s = Session::new(&model, 16, 16).unwrap();
    let mut l = s.eval(&[1, 2, 3]).unwrap();
    dsrun::kernels::softmax::softmax(&mut l);
    let top = l.iter().copied().fold(0.0f32, f32::max);
    assert!(top > 100.0 / l.len() as f32, "top probability {top}");
}

/// Writes `spec`'s file with its tensor list changed by `edit` (data all zero: loading must
/// fail before any is read), and returns dsrun's error.
fn load_error(
    tag: &str,
    edit_meta: impl Fn(&mut GgufWriter),
    edit: impl Fn(&mut Vec<synth::SynthTensor>),
) -> String {
    load_error_of("qwen3moe", tag, edit_meta, edit)
}

fn load_error_of(
    arch: &str,
    tag: &str,
    edit_meta: impl Fn(&mut GgufWriter),
    edit: impl Fn(&mut Vec<synth::SynthTensor>),
) -> String {
    let vocab = vocab();
    let spec = presets::tiny(arch).unwrap();
    let (tok, n_vocab) = synth::tokenizer_metadata(&vocab).unwrap();
    let mut list = synth::tensors(&spec, n_vocab);
    edit(&mut list);
    let mut w = GgufWriter::new();
    for (k, v) in synth::metadata(&spec).into_iter().chain(tok) {
        w.set(&k, v);
    }
    edit_meta(&mut w);
    for t in &list {
        w.add_tensor(&t.name, GgmlType::F32, &t.dims);
    }
    let tmp = temp_gguf(tag);
    w.write_file(&tmp.0, |i| {
        let n: u64 = list[i].dims.iter().product();
        Ok(vec![0u8; n as usize * 4])
    })
    .unwrap();
    let file = GgufFile::open(&tmp.0).unwrap();
    let err = Model::load(&file).err().expect("the file must be refused");

    // The command line says it in one line and exits with 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(["run", "-m"])
        .arg(&tmp.0)
        .args(["-n", "1", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    err.to_string()
}

#[test]
fn expert_count_disagreeing_with_tensors_is_refused() {
    // Metadata says 4 experts, the tensors hold 8.
    let e = load_error(
        "count",
        |w| w.set("qwen3moe.expert_count", dsrun::gguf::Value::U32(4)),
        |_| {},
    );
    assert!(e.contains("expert_count is 4"), "{e}");
}

#[test]
fn stacked_experts_of_the_wrong_count_are_refused() {
    // One layer's up experts stack 7 experts instead of 8.
    let e = load_error(
        "stack",
        |_| {},
        |list| {
            let t = list
                .iter_mut()
                .find(|t| t.name == "blk.1.ffn_up_exps.weight")
                .unwrap();
            t.dims[2] = 7;
        },
    );
    assert!(
        e.contains("blk.1.ffn_up_exps.weight holds 7 experts") && e.contains("expert_count is 8"),
        "{e}"
    );
}

#[test]
fn router_of_the_wrong_shape_is_refused() {
    let e = load_error(
        "router",
        |_| {},
        |list| {
            let t = list
                .iter_mut()
                .find(|t| t.name == "blk.0.ffn_gate_inp.weight")
                .unwrap();
            t.dims = vec![64, 9];
        },
    );
    assert!(
        e.contains("router blk.0.ffn_gate_inp.weight has shape [64, 9], expected [64, 8]"),
        "{e}"
    );
}

#[test]
fn missing_router_is_refused() {
    let e = load_error(
        "norouter",
        |_| {},
        |list| list.retain(|t| t.name != "blk.0.ffn_gate_inp.weight"),
    );
    assert!(e.contains("blk.0.ffn_gate_inp.weight is missing"), "{e}");
}

#[test]
fn deepseek_with_another_mla_layout_is_refused() {
    // (DeepSeek's YaRN runs since session 6: tests/rope_scaling_vs_llamacpp.rs.)
    use dsrun::gguf::Value;
    // The pre-MLA layout (one K/V head per query head) is named, not run wrongly.
    let e = load_error_of(
        "deepseek2",
        "mha",
        |w| w.set("deepseek2.attention.head_count_kv", Value::U32(4)),
        |_| {},
    );
    assert!(e.contains("only the MLA layout"), "{e}");
}

#[test]
fn gpt_oss_without_sinks_is_refused() {
    let e = load_error_of(
        "gpt-oss",
        "nosinks",
        |_| {},
        |list| list.retain(|t| t.name != "blk.1.attn_sinks.weight"),
    );
    assert!(e.contains("blk.1.attn_sinks.weight is missing"), "{e}");
}
