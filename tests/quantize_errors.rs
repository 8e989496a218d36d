//! `dsrun quantize` on bad input and in bad conditions: corrupt safetensors, a folder without
//! config.json, an unsupported architecture, an unwritable output, a full disk, Ctrl-C. Each is
//! one error line, a non-zero exit code, and no output file (nor its temporary) left behind.

mod common;

use common::dsrun;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dsrun-quantize-errors-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `dsrun quantize -q IN OUT TYPE`, expects failure with one line containing `expect`, and
/// no OUT or OUT.tmp afterwards.
fn fails(input: &Path, out: &Path, ftype: &str, expect: &str) {
    let r = dsrun(&[
        "quantize",
        "-q",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        ftype,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("dsrun: error: "), "{err}");
    assert!(!out.exists(), "{} was left", out.display());
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(!Path::new(&tmp).exists(), "the temporary file was left");
}

/// A Hugging Face folder with the tiny model's config.json and one hand-made safetensors file.
fn folder_with(name: &str, safetensors: &[u8]) -> PathBuf {
    let dir = scratch_dir(name);
    let hf = common::models_dir().join("tiny-qwen3moe/hf");
    std::fs::copy(hf.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(hf.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors).unwrap();
    dir
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn corrupt_safetensors() {
    let mut bad_len = 1_000_000_000_000u64.to_le_bytes().to_vec();
    bad_len.extend_from_slice(b"{}");
    let dir = folder_with("badlen", &bad_len);
    fails(&dir, &dir.join("o.gguf"), "F16", "header length");
    std::fs::remove_dir_all(&dir).unwrap();

    let header = r#"{"model.norm.weight":{"dtype":"BF16","shape":[256],"data_offsets":[0,512]}}"#;
    let dir = folder_with("range", &safetensors(header, &[0; 100]));
    fails(&dir, &dir.join("o.gguf"), "F16", "outside the file");
    std::fs::remove_dir_all(&dir).unwrap();

    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[256],"data_offsets":[0,512]}}"#;
    let dir = folder_with("dtype", &safetensors(header, &[0; 512]));
    fails(&dir, &dir.join("o.gguf"), "F16", "need 1024 bytes");
    std::fs::remove_dir_all(&dir).unwrap();

    let header = r#"{"model.norm.weight":{"dtype":"I32","shape":[256],"data_offsets":[0,1024]}}"#;
    let dir = folder_with("i32", &safetensors(header, &[0; 1024]));
    fails(
        &dir,
        &dir.join("o.gguf"),
        "F16",
        "dtype I32 is not supported",
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let header = r#"{"model.layers.0.mlp.mystery.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let dir = folder_with("unknown", &safetensors(header, &[0; 16]));
    fails(&dir, &dir.join("o.gguf"), "F16", "no GGUF name");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_config_and_unsupported_architecture() {
    let dir = scratch_dir("noconfig");
    std::fs::write(dir.join("model.safetensors"), b"").unwrap();
    fails(&dir, &dir.join("o.gguf"), "Q8_0", "no config.json");
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = folder_with("gpt2", &safetensors("{}", &[]));
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "n_layer": 2}"#,
    )
    .unwrap();
    fails(
        &dir,
        &dir.join("o.gguf"),
        "Q8_0",
        "architecture GPT2LMHeadModel is not supported",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwritable_output() {
    let input = common::model(common::TINY_F16);
    fails(
        &input,
        Path::new("/nonexistent-dir/o.gguf"),
        "Q8_0",
        "/nonexistent-dir/o.gguf",
    );
    let dir = scratch_dir("isdir");
    let r = dsrun(&[
        "quantize",
        "-q",
        input.to_str().unwrap(),
        dir.to_str().unwrap(),
        "Q8_0",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Unmounts on drop, so that a failing assertion does not leave the mount.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_leaves_nothing() {
    let input = common::model(common::TINY_F16);
    // A real full filesystem: a 2 MiB tmpfs, where mounting is allowed (root); ENOSPC.
    let dir = scratch_dir("tmpfs");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if mounted {
        let _guard = Mount(dir.clone());
        fails(
            &input,
            &dir.join("o.gguf"),
            "Q8_0",
            "No space left on device",
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(_guard);
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        eprintln!(
            "mount is not allowed here: the full disk is simulated with a file size limit only"
        );
    }
    // Everywhere: a 1 MiB file size limit (SIGXFSZ ignored, so the write fails with EFBIG).
    let dir = scratch_dir("fsize");
    let out = dir.join("o.gguf");
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec {} quantize -q {} {} Q8_0",
        env!("CARGO_BIN_EXE_dsrun"),
        input.display(),
        out.display()
    );
    let r = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kill -SIG` mid-write: one line saying so, exit code 128 + the signal, no file left.
fn signal_leaves_nothing(sig: &str, code: i32, said: &str) {
    let input = common::model(common::SMOLLM2);
    let dir = scratch_dir(&format!("sig{sig}"));
    let out = dir.join("o.gguf");
    let child = Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(["quantize", "-q", "--allow-requantize", "-t", "1"])
        .arg(&input)
        .arg(&out)
        .arg("Q4_K_M")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = dir.join("o.gguf.tmp");
    let t0 = Instant::now();
    while !tmp.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(tmp.exists(), "the temporary file never appeared");
    let killed = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(code), "{err}");
    assert!(err.contains(said), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_leaves_nothing() {
    signal_leaves_nothing("INT", 130, "interrupted");
}

#[test]
fn sigterm_leaves_nothing() {
    signal_leaves_nothing("TERM", 143, "terminated");
}
