//! Writes random-weight GGUF models (`dsrun::synth`) with the tokenizer of an existing model:
//! the tiny per-architecture files the tests use, for running them by hand, and a
//! Qwen3-30B-A3B-shaped `qwen3moe` for speed benchmarks (`scripts/synth-models.sh`).
//!
//! ```text
//! cargo run --release --example synth_gguf -- ARCH OUT.gguf [--vocab MODEL.gguf] [--layers N]
//!     [--type T] [--expert-type T]
//! ```
//!
//! ARCH is one of the tiny presets (qwen3moe, qwen2moe, llama, olmoe, granitemoe, deepseek2,
//! gpt-oss) or
//! `qwen3-30b-a3b` (hidden 2048, 128 experts of width 768, 8 active, 32/4 heads; `--layers`,
//! default 4, about 1.5 GB in Q4_K). `--type` sets the weight matrices' type (default F32 for the
//! tiny presets, Q4_K for the large one; the k-quants are encoded by ggml itself), and
//! `--expert-type` that of the stacked experts only (e.g. MXFP4 for gpt-oss). The vocabulary
//! comes from `models/tiny-qwen3moe/tiny-qwen3moe-f16.gguf` unless `--vocab` names another file.

use dsrun::gguf::GgufFile;
use dsrun::synth::{self, presets};
use dsrun::tensor::GgmlType;
use dsrun::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// ggml's encoders for every type (k-quants included), rows of `n_per_row`.
fn encode_ggml(ty: GgmlType, values: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    if matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return synth::encode_dsrun(ty, values, n_per_row);
    }
    dsrun_quantize::ggml::ggml_quantize(ty.id(), values, n_per_row)
        .ok_or_else(|| Error::Invalid(format!("ggml cannot encode {ty} rows of {n_per_row}")))
}

fn parse_type(s: &str) -> Result<GgmlType> {
    GgmlType::from_name(s).ok_or_else(|| Error::Invalid(format!("unknown tensor type {s:?}")))
}

fn run(args: &[String]) -> Result<()> {
    let usage = || {
        Error::Invalid(
            "usage: synth_gguf ARCH OUT.gguf [--vocab MODEL.gguf] [--layers N] [--type T] \
             [--expert-type T]"
                .into(),
        )
    };
    let (arch, out) = match args {
        [a, o, ..] => (a.as_str(), PathBuf::from(o)),
        _ => return Err(usage()),
    };
    let mut vocab = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/tiny-qwen3moe/tiny-qwen3moe-f16.gguf");
    let (mut layers, mut ty, mut expert_ty) = (4usize, None, None);
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(usage)?;
        match flag.as_str() {
            "--vocab" => vocab = PathBuf::from(value),
            "--layers" => layers = value.parse().ok().filter(|&n| n > 0).ok_or_else(usage)?,
            "--type" => ty = Some(parse_type(value)?),
            "--expert-type" => expert_ty = Some(parse_type(value)?),
            _ => return Err(usage()),
        }
    }
    let mut spec = match arch {
        "qwen3-30b-a3b" => presets::qwen3_30b_a3b(layers, GgmlType::Q4K),
        _ => presets::tiny(arch).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown ARCH {arch:?}: one of {}, qwen3-30b-a3b",
                presets::TINY_ARCHS.join(", ")
            ))
        })?,
    };
    if let Some(t) = ty {
        spec.weight_type = t;
    }
    spec.expert_type = expert_ty.or(spec.expert_type);
    let vocab = GgufFile::open(&vocab)?;
    synth::write(&spec, &vocab, &out, &encode_ggml)?;
    eprintln!("wrote {} ({arch}, {})", out.display(), spec.weight_type);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synth_gguf: {e}");
            ExitCode::FAILURE
        }
    }
}
