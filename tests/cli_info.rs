//! `dsrun info` as a user runs it: output for a real model, and one clear line plus a non-zero
//! exit for files that are not models.

mod common;

use std::process::Command;

fn dsrun(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn info_on_the_tiny_moe() {
    let p = common::model(common::TINY_Q4KM);
    let (code, out, err) = dsrun(&["info", p.to_str().unwrap(), "-c", "4096"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("architecture:   qwen3moe"), "{out}");
    assert!(out.contains("24.08 M total, 9.92 M active"), "{out}");
    assert!(out.contains("16 total, 4 used per token"), "{out}");
    assert!(out.contains("vocab 8192"), "{out}");
    assert!(out.contains("Q4_K") && out.contains("Q6_K"), "{out}");
    // 6 layers x 4096 tokens x 2 kv heads x (32 + 32) dims x 2 bytes = 6 MiB
    assert!(
        out.contains("f16/f16 KV cache for 4096 tokens 6.0 MiB"),
        "{out}"
    );
    // q8_0: 34 bytes per 32 values, so 6 x 4096 x 2 x (34 + 34) bytes = 3.19 MiB; llama.cpp's
    // spelling -ctk/-ctv works too.
    let args = [
        "info",
        p.to_str().unwrap(),
        "-c",
        "4096",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
    ];
    let (code, out, err) = dsrun(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("q8_0/q8_0 KV cache for 4096 tokens 3.2 MiB"),
        "{out}"
    );
    let (code, _, err) = dsrun(&["info", p.to_str().unwrap(), "--cache-type-k", "q5_k"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown KV cache type \"q5_k\""), "{err}");

    let (code, out, _) = dsrun(&["info", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "qwen3moe");
    assert_eq!(v["n_params_active"], 9_924_224);
    assert_eq!(v["expert_count"], 16);
}

#[test]
fn info_on_bad_files_fails_with_one_line() {
    let dir = common::scratch("cli-info", "");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "just some text\n").unwrap();
    let truncated = dir.join("truncated.gguf");
    let real = std::fs::read(common::model(common::TINY_Q4KM)).unwrap();
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    for (path, want) in [
        (dir.join("missing.gguf"), "No such file"),
        (dir.clone(), "directory"),
        (empty, "empty"),
        (text, "not a GGUF file"),
        (truncated, "truncated"),
    ] {
        let (code, out, err) = dsrun(&["info", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {err}", path.display());
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("dsrun: error: ") && err.contains(want),
            "{err}"
        );
        assert!(!err.contains("panicked"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
