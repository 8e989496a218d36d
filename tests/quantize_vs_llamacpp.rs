//! `dsrun quantize` against llama-quantize (the oracle, built in build/llama.cpp): the same input
//! and preset give the same file, byte for byte; llama.cpp loads and runs the result; errors
//! leave no file behind.

mod common;

use common::dsrun;

use dsrun_quantize::llama::{LlamaContext, LlamaModel};
use std::path::{Path, PathBuf};
use std::process::Command;

fn llama_quantize() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/llama.cpp/build/bin/llama-quantize");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-llamacpp.sh",
        p.display()
    );
    p
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("quantize-test", name)
}

/// dsrun and llama-quantize on the same input and preset; returns dsrun's output path.
fn same_as_llama_quantize(model: &str, ftype: &str, extra: &[&str]) -> PathBuf {
    same_as_llama_quantize_with(model, ftype, extra, extra)
}

/// As `same_as_llama_quantize`, with different flags for each tool.
fn same_as_llama_quantize_with(
    model: &str,
    ftype: &str,
    extra: &[&str],
    llama_extra: &[&str],
) -> PathBuf {
    let input = common::model(model);
    let stem = input.file_stem().unwrap().to_string_lossy().to_string();
    let ours = scratch(&format!("dsrun-{stem}-{ftype}.gguf"));
    let theirs = scratch(&format!("llama-{stem}-{ftype}.gguf"));
    let mut args = vec!["quantize", "-q", "-t", "2"];
    args.extend_from_slice(extra);
    let (i, o) = (input.to_str().unwrap(), ours.to_str().unwrap());
    args.extend_from_slice(&[i, o, ftype]);
    let out = dsrun(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = Command::new(llama_quantize())
        .args(llama_extra)
        .args([&input, &theirs])
        .args([ftype, "2"])
        .output()
        .unwrap();
    assert!(status.status.success(), "llama-quantize {model} {ftype}");
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{model} {ftype}: file sizes differ");
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first, None, "{model} {ftype}: first differing byte");
    std::fs::remove_file(&theirs).unwrap();
    ours
}

/// llama.cpp loads the file and its greedy next token after a prompt is a real token.
fn llama_runs(path: &Path) {
    let m = LlamaModel::load(path).unwrap();
    let mut ctx = LlamaContext::new(&m, 64, 64, 2).unwrap();
    let ids = m.tokenize("It is a truth universally acknowledged", false, false);
    let logits = ctx.eval(&ids, false).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn tiny_moe_f16_to_q4_k_m_and_q8_0_equal_llama_quantize() {
    for ftype in ["Q4_K_M", "Q8_0"] {
        let out = same_as_llama_quantize(common::TINY_F16, ftype, &[]);
        llama_runs(&out);
        std::fs::remove_file(out).unwrap();
    }
}

#[test]
fn requantize_real_model_equals_llama_quantize() {
    let out = same_as_llama_quantize(common::SMOLLM2, "Q4_K_M", &["--allow-requantize"]);
    llama_runs(&out);
    std::fs::remove_file(out).unwrap();
}

#[test]
fn requantize_without_the_flag_is_refused_and_leaves_nothing() {
    let input = common::model(common::TINY_Q8);
    let out = scratch("refused.gguf");
    let r = dsrun(&[
        "quantize",
        "-q",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q4_K_M",
    ]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--allow-requantize"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
    assert!(!scratch("refused.gguf.tmp").exists());
}

#[test]
fn bad_type_and_unwritable_output_are_clear_errors() {
    let input = common::model(common::TINY_F16);
    let i = input.to_str().unwrap();
    let r = dsrun(&["quantize", i, "/tmp/x.gguf", "Q9_K"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown type \"Q9_K\""));
    let r = dsrun(&["quantize", "-q", i, "/nonexistent-dir/out.gguf", "Q8_0"]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("/nonexistent-dir/out.gguf"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn recipe_file_equals_llama_quantize_tensor_type_overrides() {
    let recipe = scratch("recipe.json");
    std::fs::write(
        &recipe,
        r#"{"tensors": {"blk.0.attn_v.weight": "Q8_0", "output.weight": "Q5_K",
            "blk.3.ffn_down_exps.weight": "Q3_K"}}"#,
    )
    .unwrap();
    let out = same_as_llama_quantize_with(
        common::TINY_F16,
        "Q4_K_M",
        &["--recipe", recipe.to_str().unwrap()],
        &[
            "--tensor-type",
            r"blk\.0\.attn_v\.weight=q8_0",
            "--tensor-type",
            r"^output\.weight=q5_K",
            "--tensor-type",
            r"blk\.3\.ffn_down_exps\.weight=q3_K",
        ],
    );
    std::fs::remove_file(out).unwrap();
    std::fs::remove_file(recipe).unwrap();
}

/// `--target-size` end to end on a small calibration (one chunk of 16 tokens): every candidate
/// run, then only Q4_K run and the others estimated; the probe's measurements equal the full
/// run's, the estimates are filled in, and both files meet the size and load in llama.cpp.
#[test]
fn target_size_with_and_without_probe() {
    let input = common::model(common::TINY_F16);
    let calib = common::model("tiny-qwen3moe/heldout.txt");
    let target = "14000000";
    let mut recipes = Vec::new();
    for (tag, extra) in [("full", vec![]), ("probe", vec!["--probe-type", "Q4_K"])] {
        let out = scratch(&format!("adaptive-{tag}.gguf"));
        let recipe = scratch(&format!("adaptive-{tag}.json"));
        let mut args = vec![
            "quantize",
            "-q",
            "-t",
            "2",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "Q4_K_M",
            "--target-size",
            target,
            "-f",
            calib.to_str().unwrap(),
            "--calib-chunks",
            "1",
            "--calib-ctx",
            "16",
            "--recipe-out",
            recipe.to_str().unwrap(),
        ];
        args.extend_from_slice(&extra);
        let r = dsrun(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&recipe).unwrap()).unwrap();
        assert!(json["bytes"].as_u64().unwrap() <= 14_000_000);
        llama_runs(&out);
        std::fs::remove_file(&out).unwrap();
        recipes.push(json);
    }
    let (full, probe) = (
        &recipes[0]["sensitivity"]["tensors"],
        &recipes[1]["sensitivity"]["tensors"],
    );
    let tensors = full.as_object().unwrap();
    assert_eq!(tensors.len(), 44);
    for (name, cands) in tensors {
        for (a, b) in cands
            .as_array()
            .unwrap()
            .iter()
            .zip(probe[name].as_array().unwrap())
        {
            assert_eq!(a["type"], b["type"]);
            assert_eq!(a["measured"], true);
            assert_eq!(b["measured"], b["type"] == "Q4_K", "{name} {}", b["type"]);
            assert_eq!(a["weighted_error"], b["weighted_error"], "{name}");
            let (ka, kb) = (a["kld"].as_f64().unwrap(), b["kld"].as_f64().unwrap());
            if b["type"] == "Q4_K" {
                assert_eq!(ka, kb, "{name}: the probe is the same measurement");
            } else {
                assert!(kb.is_finite() && kb >= 0.0, "{name}: estimate {kb}");
            }
        }
    }
}
