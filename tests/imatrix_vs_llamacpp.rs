//! `dsrun imatrix` against llama-imatrix, and `dsrun quantize --imatrix` against
//! `llama-quantize --imatrix`, on the tiny Qwen3-MoE (2 chunks of 128 tokens: seconds).
//!
//! The importance matrices are computed by two engines whose activations differ by rounding, so
//! they are compared within a tolerance: the same entries, the same token counts per expert (the
//! routing agrees), and each entry's sums of squares within 0.2% (relative L2). Quantizing with the
//! same file must give the same bytes as llama-quantize, including the types that need one.

mod common;

use common::{dsrun, TINY_F16};
use dsrun::imatrix::Imatrix;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("build/llama.cpp/build/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-llamacpp.sh",
        p.display()
    );
    p
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("imatrix-test", name)
}

fn text() -> String {
    common::model("tiny-qwen3moe/heldout.txt")
        .to_string_lossy()
        .into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// llama-imatrix's file for the tiny MoE (computed once per test process).
fn llama_imatrix() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = scratch("llama-imatrix.gguf");
        let model = common::model(TINY_F16);
        let r = Command::new(bin("llama-imatrix"))
            .args(["-m", s(&model), "-f", &text(), "-o", s(&out)])
            .args(["-c", "128", "--chunks", "2", "-t", "2", "--no-ppl"])
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "llama-imatrix: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        out
    })
    .clone()
}

fn dsrun_imatrix(out: &Path, extra: &[&str]) {
    let model = common::model(TINY_F16);
    let mut args = vec!["imatrix", "-m", s(&model), "-o", s(out)];
    let t = text();
    args.extend_from_slice(&["-f", &t, "-c", "128", "--chunks", "2", "-t", "2"]);
    args.extend_from_slice(extra);
    let r = dsrun(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn imatrix_matches_llama_imatrix() {
    let ours_path = scratch("dsrun-imatrix.gguf");
    dsrun_imatrix(&ours_path, &[]);
    let ours = Imatrix::read(&ours_path).unwrap();
    let theirs = Imatrix::read(&llama_imatrix()).unwrap();
    assert!(ours.has_metadata && theirs.has_metadata);
    assert_eq!(ours.chunk_count, theirs.chunk_count);
    assert_eq!(ours.chunk_size, theirs.chunk_size);
    assert_eq!(ours.datasets, theirs.datasets);
    let names = |m: &Imatrix| m.entries.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs));
    // 6 layers of q, k, v, output, router and three expert tensors.
    assert_eq!(ours.entries.len(), 48);
    // Worst relative L2 difference of the sums of squares and of the plain sums.
    let mut worst = [(0.0f64, String::new()), (0.0f64, String::new())];
    for (name, a) in &ours.entries {
        let b = &theirs.entries[name];
        assert_eq!(a.counts, b.counts, "{name}: tokens per expert");
        assert_eq!(a.sum2.len(), b.sum2.len(), "{name}");
        for (k, x, y) in [(0, &a.sum2, &b.sum2), (1, &a.sum, &b.sum)] {
            let diff: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q) as f64 * (p - q) as f64)
                .sum();
            let norm: f64 = y.iter().map(|q| *q as f64 * *q as f64).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            if rel > worst[k].0 {
                worst[k] = (rel, name.clone());
            }
        }
    }
    eprintln!(
        "worst relative L2 differences: in_sum2 {:.2e} ({}), in_sum {:.2e} ({})",
        worst[0].0, worst[0].1, worst[1].0, worst[1].1
    );
    // Measured 2.1e-4 for both (2026-11-29): a tenfold margin.
    assert!(worst[0].0 < 2e-3, "in_sum2: {:?}", worst[0]);
    assert!(worst[1].0 < 2e-3, "in_sum: {:?}", worst[1]);
}

/// dsrun quantize --imatrix F and llama-quantize --imatrix F give the same bytes.
fn same_bytes(imatrix: &Path, ftype: &str) {
    let model = common::model(TINY_F16);
    let stem = imatrix.file_stem().unwrap().to_string_lossy().to_string();
    let ours = scratch(&format!("dsrun-{stem}-{ftype}.gguf"));
    let theirs = scratch(&format!("llama-{stem}-{ftype}.gguf"));
    let r = dsrun(&[
        "quantize",
        "-q",
        "-t",
        "2",
        "--imatrix",
        s(imatrix),
        s(&model),
        s(&ours),
        ftype,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = Command::new(bin("llama-quantize"))
        .args(["--imatrix", s(imatrix), s(&model), s(&theirs), ftype, "2"])
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "llama-quantize {ftype}: {}",
        String::from_utf8_lossy(&r.stdout)
    );
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{ftype}: file sizes differ");
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first, None, "{ftype} with {stem}: first differing byte");
    std::fs::remove_file(&ours).unwrap();
    std::fs::remove_file(&theirs).unwrap();
}

#[test]
fn quantize_with_llama_imatrix_is_byte_identical() {
    let m = llama_imatrix();
    for ftype in ["Q4_K_M", "IQ4_XS", "IQ2_XXS"] {
        same_bytes(&m, ftype);
    }
}

#[test]
fn llama_quantize_reads_dsrun_imatrix_files() {
    // GGUF, and the legacy .dat format (read back through llama.cpp's loader too).
    let gguf = scratch("ours.gguf");
    dsrun_imatrix(&gguf, &[]);
    same_bytes(&gguf, "Q2_K_S");
    let dat = scratch("ours.dat");
    dsrun_imatrix(&dat, &["--output-format", "dat"]);
    same_bytes(&dat, "Q4_K_S");
}

#[test]
fn imatrix_only_types_need_an_imatrix() {
    let model = common::model(TINY_F16);
    let out = scratch("refused.gguf");
    let r = dsrun(&["quantize", "-q", s(&model), s(&out), "IQ2_XXS"]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("needs an importance matrix"), "{err}");
    assert!(!out.exists());
}

#[test]
fn bad_imatrix_input_is_one_error_line() {
    let model = common::model(TINY_F16);
    let out = scratch("bad.gguf");
    let junk = scratch("junk.dat");
    std::fs::write(&junk, b"\x01\x00\x00\x00\xff\xff\xff\x7f").unwrap();
    // An importance matrix whose entries do not fit the model's tensors.
    let other = scratch("other.gguf");
    let r = dsrun(&[
        "imatrix",
        "-m",
        s(&common::model(common::SMOLLM2)),
        "-f",
        &text(),
        "-o",
        s(&other),
        "-c",
        "64",
        "--chunks",
        "1",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for (m, want) in [
        (junk.as_path(), "out of range"),
        (Path::new("/nonexistent/imatrix.gguf"), "No such file"),
        (other.as_path(), "the tensor needs"),
    ] {
        let r = dsrun(&[
            "quantize",
            "-q",
            "--imatrix",
            s(m),
            s(&model),
            s(&out),
            "Q4_K_M",
        ]);
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
    // Too little text for two chunks.
    let r = dsrun(&[
        "imatrix",
        "-m",
        s(&model),
        "-f",
        &text(),
        "-o",
        s(&out),
        "-c",
        "100000",
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("needs at least"));
    assert!(!out.exists());
}
