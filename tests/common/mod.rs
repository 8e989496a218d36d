//! Shared helpers of the integration tests: where the real models are.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Path of a model under `models/`; fails the test with the fix when it is missing.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
pub const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-awq.gguf";
pub const QWEN15: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
pub const TINY_F16: &str = "tiny-qwen3moe/tiny-qwen3moe-f16.gguf";
pub const TINY_Q8: &str = "tiny-qwen3moe/tiny-qwen3moe-q8_0.gguf";
pub const TINY_Q4KM: &str = "tiny-qwen3moe/tiny-qwen3moe-q4_k_m.gguf";

/// Every model file of shared/MODELS.md.
pub const ALL_MODELS: &[&str] = &[
    SMOLLM2, GEMMA3, QWEN05, QWEN15, TINY_F16, TINY_Q8, TINY_Q4KM,
];

/// Runs the dsrun binary built for these tests with `args`; stdin is empty.
pub fn dsrun(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `name` in this test binary's scratch folder for `tag`: `target/tmp/dsrun-{tag}`, emptied
/// the first time a process asks for it, so runs do not pile files up (and `cargo clean`
/// removes them).
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    static CLEARED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dsrun-{tag}"));
    let mut cleared = CLEARED.lock().unwrap_or_else(|e| e.into_inner());
    if !cleared.iter().any(|t| t == tag) {
        let _ = std::fs::remove_dir_all(&dir);
        cleared.push(tag.to_string());
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A file in the temporary directory, removed when dropped, so a failing test leaves nothing
/// behind (`name` tells the files of one test process apart).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("dsrun-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A copy of `plain` beside it named `name`, with metadata `meta` set and, given
/// `rope_freqs`, the tensor `rope_freqs.weight` (F32) added.
pub fn copy_with(
    plain: &std::path::Path,
    name: &str,
    meta: &[(&str, dsrun::gguf::Value)],
    rope_freqs: Option<Vec<f32>>,
) -> std::path::PathBuf {
    use dsrun::gguf::writer::GgufWriter;
    use dsrun::tensor::GgmlType;

    let src = dsrun::gguf::GgufFile::open(plain).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.header().metadata {
        w.set(k, v.clone());
    }
    for (k, v) in meta {
        w.set(k, v.clone());
    }
    let tensors = &src.header().tensors;
    for t in tensors {
        w.add_tensor(&t.name, t.ty, &t.dims);
    }
    if let Some(f) = &rope_freqs {
        w.add_tensor("rope_freqs.weight", GgmlType::F32, &[f.len() as u64]);
    }
    let path = plain.with_file_name(name);
    w.write_file(&path, |i| match tensors.get(i) {
        Some(t) => Ok(src.tensor_data(t)?.to_vec()),
        None => Ok(rope_freqs
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect()),
    })
    .unwrap();
    path
}

/// The tiny random-weight model of `arch` (`dsrun::synth::presets::tiny`, F32, the tiny
/// Qwen3-MoE's vocabulary) written to the scratch folder `tag`: its spec and path.
pub fn tiny_synth(arch: &str, tag: &str) -> (dsrun::synth::SynthSpec, PathBuf) {
    use dsrun::synth::{self, presets};
    let vocab = dsrun::gguf::GgufFile::open(model(TINY_F16)).unwrap();
    let spec = presets::tiny(arch).unwrap();
    let path = scratch(tag, &format!("{arch}.gguf"));
    synth::write(&spec, &vocab, &path, &synth::encode_dsrun).unwrap();
    (spec, path)
}
