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

/// `name` in a scratch folder of this test process (`tag` tells the test files apart).
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsrun-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
