//! The whole forward pass on the GPU (lavapipe in CI) against the CPU, end to end: greedy text
//! for 32 tokens, and the logits of a prompt.
//!
//! The GPU rounds activations to the 8-bit grid the CPU's quantized products use (ggml's
//! `vec_dot_type`), so both compute the same products up to summation order: the tiny MoE's
//! logits agree to 1e-7 and its greedy text token for token; SmolLM2's (whose attention scores
//! cancel heavily) by KL divergence, and its text token for token where both take f32
//! activations (`DSRUN_REFERENCE=1`).
//!
//! Without an adapter these tests print why and pass, unless `DSRUN_REQUIRE_GPU=1` (`.ci/run`).

mod common;

use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::gpu::{GpuContext, GpuOptions};
use std::process::Command;
use std::sync::Arc;

fn gpu() -> Option<GpuContext> {
    let c = GpuContext::new().expect("the adapter opens a device");
    if c.is_none() {
        assert!(
            std::env::var("DSRUN_REQUIRE_GPU").as_deref() != Ok("1"),
            "DSRUN_REQUIRE_GPU=1 but wgpu finds no adapter"
        );
        eprintln!("no GPU adapter: GPU test skipped");
    }
    c
}

const PROMPT: &str = "The capital of France is";

/// Greedy text of 32 tokens with `args` added, and optionally `DSRUN_REFERENCE=1`.
fn greedy(model: &str, args: &[&str], reference: bool) -> String {
    let env: &[(&str, &str)] = if reference {
        &[("DSRUN_REFERENCE", "1")]
    } else {
        &[]
    };
    greedy_env(model, args, env)
}

/// [`greedy`] with environment variables set.
fn greedy_env(model: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    greedy_at(&common::model(model), args, env)
}

/// [`greedy_env`] of the model file at `m`.
fn greedy_at(m: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dsrun"));
    cmd.args(["run", "-m", m.to_str().unwrap()])
        .args(["--temp", "0", "-n", "32", "-c", "128", "-q"])
        .args(args)
        .arg(PROMPT);
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsrun {args:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tiny_moe_greedy_text_on_gpu_equals_cpu_with_and_without_cpu_experts() {
    if gpu().is_none() {
        return;
    }
    let cpu = greedy(common::TINY_Q8, &[], false);
    let gpu = greedy(common::TINY_Q8, &["--device", "gpu"], false);
    let split = greedy(
        common::TINY_Q8,
        &["--device", "gpu", "--n-cpu-moe", "3"],
        false,
    );
    assert!(
        cpu.split_whitespace().count() > 5,
        "too short a text: {cpu:?}"
    );
    assert_eq!(gpu, cpu, "GPU vs CPU");
    assert_eq!(
        split, cpu,
        "GPU with the experts of 3 layers on the CPU vs CPU"
    );
    // -ngl as llama.cpp counts it (6 layers + the output): 0 all on the CPU, 1 the output only,
    // 2 the last layer and the output, 7 everything; with CPU experts in a GPU layer too.
    for args in [
        &["-ngl", "0"][..],
        &["-ngl", "1"],
        &["-ngl", "2"],
        &["-ngl", "7"],
        &["-ngl", "4", "--n-cpu-moe", "4"],
        // The VRAM expert cache: some of the CPU layers' experts on the GPU, swapped as the
        // counts change (every 16 tokens); and all 16 of them.
        &["--n-cpu-moe", "6", "--moe-gpu-cache", "4"],
        &["-ngl", "4", "--n-cpu-moe", "5", "--moe-gpu-cache", "16"],
    ] {
        let text = greedy(
            common::TINY_Q8,
            &[&["--device", "gpu"], args].concat(),
            false,
        );
        assert_eq!(text, cpu, "GPU with {args:?} vs CPU");
    }
    // The shader variants: attention's f16 Q·K (opt-in), the reductions without subgroups, and
    // one token's products with the threads over blocks.
    for env in [
        ("DSRUN_GPU_F16", "1"),
        ("DSRUN_GPU_SUBGROUPS", "0"),
        ("DSRUN_GPU_DECODE", "block"),
    ] {
        let text = greedy_env(common::TINY_Q8, &["--device", "gpu"], &[env]);
        assert_eq!(text, cpu, "GPU with {env:?} vs CPU");
    }
}

/// `--verbose` reports the VRAM expert cache's hit rate; 4 of 16 experts chosen by their counts
/// serve more than the 25% a fixed choice would on average.
#[test]
fn expert_cache_hit_rate_is_reported() {
    if gpu().is_none() {
        return;
    }
    let m = common::model(common::TINY_Q8);
    let out = common::dsrun(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "--temp",
        "0",
        "-n",
        "32",
        "-c",
        "128",
        "--verbose",
        "--device",
        "gpu",
        "--cpu-moe",
        "--moe-gpu-cache",
        "4",
        PROMPT,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("(4 of each cached in VRAM)"), "{err}");
    let rate: f64 = err
        .split("VRAM expert cache hit rate ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no hit rate in {err}"));
    assert!(rate > 30.0 && rate < 100.0, "hit rate {rate}%");
}

/// With `DSRUN_REFERENCE=1` both sides take f32 activations. (With the default rounded ones,
/// SmolLM2's text parts at the 20th token, "311" against "321" million: see `logits_*` for how
/// near the two are.)
#[test]
fn smollm2_greedy_text_on_gpu_equals_cpu_reference() {
    if gpu().is_none() {
        return;
    }
    let cpu = greedy(common::SMOLLM2, &[], true);
    let gpu = greedy(common::SMOLLM2, &["--device", "gpu"], true);
    assert!(
        cpu.split_whitespace().count() > 5,
        "too short a text: {cpu:?}"
    );
    assert_eq!(gpu, cpu);
    // 30 layers: the first 15 on the CPU, the hidden state crossing once per batch.
    let half = greedy(common::SMOLLM2, &["-ngl", "16"], true);
    assert_eq!(half, cpu, "-ngl 16 vs CPU");
}

/// `--kv-window` with sinks and a learned summary on the GPU: the tiny MoE's greedy text equals
/// the CPU's (the prompt and 32 tokens pass a window of 4 many times, in one prompt batch and
/// then token by token), all layers on the GPU and with the first 3 on the CPU; with round-robin
/// slots, and the window alone. SmolLM2's text as well, both sides in f32. (Recency slots and
/// sinks at absolute positions are in `gpu::tests_stream`: with them the tiny MoE's text parts
/// at a near-tie, its perplexity within 0.04% of the CPU's token by token.)
#[test]
fn windowed_attention_greedy_text_on_gpu_equals_cpu() {
    if gpu().is_none() {
        return;
    }
    // Learn 4 slots per KV head on a short text.
    let calib = common::scratch("gpu-kvw", "calib.txt");
    let t = "It is a truth universally acknowledged, that a single man in possession of a good \
             fortune, must be in want of a wife. "
        .repeat(20);
    std::fs::write(&calib, t).unwrap();
    let learned = common::scratch("gpu-kvw", "tiny-kvsum4.gguf");
    let m = common::model(common::TINY_Q8);
    let r = common::dsrun(&[
        "calibrate",
        "-m",
        m.to_str().unwrap(),
        "-f",
        calib.to_str().unwrap(),
        "-c",
        "64",
        "--chunks",
        "2",
        "--kv-summary",
        "4",
        "-o",
        learned.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let win = ["--kv-window", "4"];
    let rr = ["--kv-summary", "3", "--kv-summary-assign", "round-robin"];
    for (path, extra) in [
        (&learned, &["--kv-sinks", "2"][..]),
        (&m, &[&rr[..], &["--kv-sinks", "2"]].concat()[..]),
        (&m, &["--kv-sinks", "0", "--kv-summary", "0"][..]),
    ] {
        let args = [&win[..], extra].concat();
        let cpu = greedy_at(path, &args, &[]);
        assert!(cpu.split_whitespace().count() > 5, "too short: {cpu:?}");
        for dev in [&["--device", "gpu"][..], &["-ngl", "4"][..]] {
            let gpu = greedy_at(path, &[&args[..], dev].concat(), &[]);
            assert_eq!(gpu, cpu, "GPU {dev:?} with {args:?} vs CPU");
        }
    }
    let args = [&["--kv-window", "16", "--kv-sinks", "4"][..], &rr[..]].concat();
    let cpu = greedy(common::SMOLLM2, &args, true);
    let gpu = greedy(
        common::SMOLLM2,
        &[&args[..], &["--device", "gpu"]].concat(),
        true,
    );
    assert_eq!(gpu, cpu, "SmolLM2 with {args:?}");
}

/// How far one row of GPU logits is from the CPU's.
struct Gap {
    /// Relative L2 distance of the logits.
    rel: f64,
    /// KL divergence of the GPU's next-token distribution from the CPU's.
    kld: f64,
    /// The top tokens agree, or the CPU's top two are within 0.05 of each other.
    top: bool,
}

fn gap(gpu: &[f32], cpu: &[f32]) -> Gap {
    let num: f64 = gpu
        .iter()
        .zip(cpu)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = cpu.iter().map(|b| (*b as f64).powi(2)).sum();
    let log_softmax = |v: &[f32]| -> Vec<f64> {
        let m = v.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let z = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        v.iter().map(|&x| x as f64 - z).collect()
    };
    let (lg, lc) = (log_softmax(gpu), log_softmax(cpu));
    let kld = lc.iter().zip(&lg).map(|(c, g)| c.exp() * (c - g)).sum();
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let mut sorted = cpu.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    Gap {
        rel: (num / den).sqrt(),
        kld,
        top: argmax(gpu) == argmax(cpu) || sorted[0] - sorted[1] < 0.05,
    }
}

/// The last token's logits after feeding `ids` one token at a time.
fn decoded(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model, 64, 512).unwrap();
    let mut next = Vec::new();
    for &t in ids {
        next = s.eval(&[t]).unwrap();
    }
    next
}

/// The prompt's logits on the GPU (as one batch with every row, and token by token) against the
/// CPU's (the same way: the CPU's batch takes the GEMM for products of a few tokens or more, whose
/// float order is not the row kernels'): relative L2 under `max_rel` and KL divergence under
/// `max_kld` on every row.
fn logits_close(name: &str, opts: GpuOptions, max_rel: f64, max_kld: f64) {
    logits_close_at(&common::model(name), opts, max_rel, max_kld)
}

fn logits_close_at(path: &std::path::Path, opts: GpuOptions, max_rel: f64, max_kld: f64) {
    let Some(ctx) = gpu() else { return };
    let name = path.file_name().unwrap().to_string_lossy();
    let file = GgufFile::open(path).unwrap();
    let mut model = Model::load(&file).unwrap();
    let ids = model.tokenizer.encode(PROMPT, true, true).unwrap();
    let n_vocab = model.hp.n_vocab;
    let cpu = Session::new(&model, 64, 512)
        .unwrap()
        .eval_all(&ids)
        .unwrap();
    let cpu_next = decoded(&model, &ids);
    model.use_gpu(Arc::new(ctx), opts).unwrap();
    let all = Session::new(&model, 64, 512)
        .unwrap()
        .eval_all(&ids)
        .unwrap();
    let next = decoded(&model, &ids);
    assert_eq!(all.len(), cpu.len());
    let rows = all.chunks(n_vocab).chain([&next[..]]);
    for (i, (g, c)) in rows
        .zip(cpu.chunks(n_vocab).chain([&cpu_next[..]]))
        .enumerate()
    {
        let d = gap(g, c);
        eprintln!("{name} row {i}: rel L2 {:.2e}, KLD {:.2e}", d.rel, d.kld);
        assert!(
            d.rel < max_rel && d.kld < max_kld && d.top,
            "{name} row {i} (the last: decoded token by token): rel L2 {}, KLD {}, top agrees {}",
            d.rel,
            d.kld,
            d.top
        );
    }
}

#[test]
fn logits_on_gpu_are_close_to_cpu() {
    // The tiny MoE's Q8_0 products are exact on both sides but for summation order; the next
    // layer's 8-bit activations can turn that into a whole step: most rows agree to 1e-7, but
    // with the CPU's batch in the GEMM's (plain) float order and the GPU's in its own, one row of
    // this prompt differs by rel L2 7.1e-4, KLD 3e-6 (2026-11-29).
    const Q8_REL: f64 = 2e-3;
    const Q8_KLD: f64 = 1e-5;
    logits_close(common::TINY_Q8, GpuOptions::default(), Q8_REL, Q8_KLD);
    let cpu_experts = GpuOptions {
        n_cpu_moe: 6,
        ..Default::default()
    };
    logits_close(common::TINY_Q8, cpu_experts, Q8_REL, Q8_KLD);
    let half = GpuOptions {
        n_gpu_layers: Some(4),
        n_cpu_moe: 4,
        ..Default::default()
    };
    logits_close(common::TINY_Q8, half, Q8_REL, Q8_KLD);
    // Q4_K_M all on the GPU, with the experts in RAM, and with 4 of each layer's cached in VRAM.
    // Its activations are rounded to Q8_K, whose 8-bit grid turns the last-bit differences of
    // the two sides into a few whole steps: seen up to rel L2 1.6e-3, KLD 2.1e-5 (all on the
    // GPU too: 6.4e-4 at the decoded token), against 1e-7 on the other rows.
    for (n_cpu_moe, cache) in [(0, 0), (6, 0), (6, 4)] {
        let opts = GpuOptions {
            n_cpu_moe,
            moe_gpu_cache: cache,
            ..Default::default()
        };
        logits_close(common::TINY_Q4KM, opts, 1e-2, 1e-4);
    }
    // SmolLM2's attention scores are large and cancel, so summation order shows more; Q4_1's
    // activation sums are f16 on the CPU and f32 here. For scale: the CPU's f32 reference and
    // its default path differ by a KL divergence of 0.004 on average, 0.022 at most, over 4
    // chunks of 128 tokens of heldout.txt (`dsrun perplexity --kl-divergence`); a wrong index
    // or a missing term gives far more than 1.
    logits_close(common::SMOLLM2, GpuOptions::default(), 0.2, 0.03);
}

/// Llama 3.1's RoPE frequency factors (`rope_freqs.weight`) in `rope.wgsl`: the tiny random
/// llama (F32) with factors 4, 0.5, 2, 1 over its 8 pairs (tests/rope_scaling_vs_llamacpp.rs
/// holds the CPU to llama.cpp on the same file), GPU against CPU.
#[test]
fn rope_freqs_on_gpu_match_cpu() {
    let (spec, plain) = common::tiny_synth("llama", "gpu-rope-freqs");
    let factors = (0..spec.head_dim / 2)
        .map(|i| [4.0, 0.5, 2.0, 1.0][i % 4])
        .collect();
    let path = common::copy_with(&plain, "llama-freqs.gguf", &[], Some(factors));
    logits_close_at(&path, GpuOptions::default(), 1e-3, 1e-5);
}

#[test]
fn unsupported_requests_are_clear_errors() {
    if gpu().is_none() {
        return;
    }
    let m = common::model(common::TINY_Q8);
    let m = m.to_str().unwrap();
    for (args, says) in [
        (vec!["--device", "tpu"], "expected cpu or gpu"),
        (vec!["--device", "gpu", "-ctk", "q8_0"], "f16 only"),
        (
            vec![
                "--device",
                "gpu",
                "--kv-window",
                "16",
                "--kv-summary",
                "4",
                "--kv-summary-assign",
                "round-robin",
                "--kv-summary-keys",
                "window",
            ],
            "the GPU does not run",
        ),
        (vec!["--device", "gpu", "--moe-top-k", "2"], "expert count"),
        (vec!["--device", "gpu", "-ngl", "x"], "invalid value"),
        (
            vec!["--device", "gpu", "--moe-gpu-cache", "4"],
            "--n-cpu-moe",
        ),
    ] {
        let out = common::dsrun(&[&["run", "-m", m, "-n", "2"], &args[..], &["hi"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
