//! Dynamic experts per token on the tiny trained Qwen3-MoE: the default path is the model's own
//! top-k bit for bit, the rules change what they should, `dsrun calibrate` writes a file whose
//! `dsrun.moe.*` keys read back and which llama.cpp still loads and runs identically, and bad
//! flag values get one clear error line.

mod common;

use common::dsrun;

use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::model::forward::forward;
use dsrun::model::moe_calibration::{CalibKind, MoeCalibration};
use dsrun::model::moe_select::{MoeConfig, MoeRule};
use dsrun::model::KvCache;
use dsrun_quantize::llama::{LlamaContext, LlamaModel};
use std::sync::Arc;

const TEXT: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.";

fn logits(model: &Model, cfg: Option<MoeConfig>, ids: &[u32]) -> (Vec<f32>, Option<f64>) {
    let mut s = Session::new(model, 128, 128).unwrap();
    if let Some(c) = cfg {
        s.set_moe(c).unwrap();
    }
    let l = s.eval_all(ids).unwrap();
    (l, s.moe.stats.average())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn rule(rule: MoeRule, lo: Option<usize>, hi: Option<usize>) -> Option<MoeConfig> {
    Some(MoeConfig {
        rule,
        min_experts: lo,
        max_experts: hi,
    })
}

#[test]
fn the_models_own_k_is_unchanged_bit_for_bit() {
    let path = common::model(common::TINY_Q8);
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    assert!(model.moe_calibration.is_none());
    let ids = model.tokenizer.encode(TEXT, true, false).unwrap();
    // The plain forward pass, as the parity tests against llama.cpp call it.
    let hp = &model.hp;
    let mut kv = KvCache::new(hp.n_layer, 128, hp.n_head_kv * hp.head_dim);
    let plain = forward(hp, &model.weights, &mut kv, &ids, true);

    let (default, avg) = logits(&model, None, &ids);
    assert_eq!(bits(&default), bits(&plain));
    assert_eq!(avg, Some(4.0));
    let no_cut = MoeCalibration {
        kind: CalibKind::RelMass,
        thresholds: vec![1.0; hp.n_layer],
        min_experts: 1,
        max_experts: 4,
        ..Default::default()
    };
    for cfg in [
        rule(MoeRule::TopK(4), None, None),
        rule(MoeRule::TopP(1.0), Some(4), Some(4)),
        rule(MoeRule::TopK(8), None, Some(4)),
        // the dynamic path with a rule that cuts nothing
        rule(MoeRule::Calibrated(Arc::new(no_cut)), None, None),
    ] {
        let (l, avg) = logits(&model, cfg.clone(), &ids);
        assert_eq!(bits(&l), bits(&default), "{cfg:?}");
        assert_eq!(avg, Some(4.0), "{cfg:?}");
    }

    // ... and the rules do change what they should.
    let (k2, avg) = logits(&model, rule(MoeRule::TopK(2), None, None), &ids);
    assert_eq!(avg, Some(2.0));
    assert_ne!(bits(&k2), bits(&default));
    let (_, avg) = logits(&model, rule(MoeRule::TopP(0.5), None, None), &ids);
    let avg = avg.unwrap();
    assert!(avg > 1.0 && avg < 4.0, "top-p 0.5: {avg} experts/token");
}

/// The one stderr line of a failed command.
fn fails(args: &[&str], expect: &str) {
    let out = dsrun(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(expect), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn bad_flag_values_are_refused() {
    let m = common::model(common::TINY_Q8);
    let m = m.to_str().unwrap();
    let dense = common::model(common::SMOLLM2);
    let dense = dense.to_str().unwrap();
    let run = |extra: &[&str], expect: &str| {
        let mut a = vec!["run", "-m", m, "-n", "1"];
        a.extend_from_slice(extra);
        a.push("Hello");
        fails(&a, expect);
    };
    run(
        &["--moe-top-k", "0"],
        "--moe-top-k 0: must be between 1 and 16",
    );
    run(&["--moe-top-k", "17"], "--moe-top-k 17");
    run(&["--moe-top-p", "0"], "--moe-top-p 0: must be above 0");
    run(&["--moe-top-p", "1.5"], "--moe-top-p 1.5");
    run(&["--moe-top-p", "nan"], "--moe-top-p NaN");
    run(
        &["--moe-top-k", "2", "--moe-top-p", "0.5"],
        "cannot be used with",
    );
    run(&["--moe-top-k", "x"], "invalid value 'x'");
    run(
        &["--moe-min-experts", "5", "--moe-max-experts", "3"],
        "--moe-min-experts 5 is more than --moe-max-experts 3",
    );
    run(&["--moe-max-experts", "0"], "--moe-max-experts 0");
    fails(
        &["run", "-m", dense, "-n", "1", "--moe-top-k", "2", "Hi"],
        "this model has no experts",
    );
    fails(
        &["bench", "-m", m, "-p", "8", "-n", "0", "--moe-top-p=-1"],
        "--moe-top-p -1",
    );
    let text = common::model("tiny-qwen3moe/heldout.txt");
    let text = text.to_str().unwrap();
    let cal = |extra: &[&str], expect: &str| {
        let mut a = vec![
            "calibrate",
            "-m",
            m,
            "-f",
            text,
            "-c",
            "32",
            "--chunks",
            "1",
        ];
        a.extend_from_slice(extra);
        fails(&a, expect);
    };
    cal(&["--kld-budget=-1"], "--kld-budget -1: must be a positive");
    cal(&["--rule", "magic"], "--rule \"magic\"");
    cal(
        &["--moe-top-k", "2"],
        "--moe-top-k and --moe-top-p do not apply",
    );
    cal(&["--moe-max-experts", "1"], "at least two counts");
    cal(&["-o", m], "refusing to overwrite the model");
    fails(
        &["calibrate", "-m", dense, "-f", text, "-c", "32"],
        "no experts",
    );
}

#[test]
fn calibrate_round_trip_and_llama_cpp_loads_the_file() {
    let m = common::model(common::TINY_Q8);
    let text = common::model("tiny-qwen3moe/heldout.txt");
    let dir = common::scratch("moe-dyn", "");
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("calibrated.gguf");
    let out = dsrun(&[
        "calibrate",
        "-m",
        m.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "-c",
        "64",
        "--chunks",
        "2",
        "--rule",
        "rel_mass",
        "--kld-budget",
        "0.05",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kept: rel_mass"), "{stdout}");

    {
        let orig = GgufFile::open(&m).unwrap();
        let file = GgufFile::open(&out_path).unwrap();
        let model = Model::load(&file).unwrap();
        let c = model.moe_calibration.clone().expect("the rule was stored");
        assert_eq!(c.kind, CalibKind::RelMass);
        assert_eq!(c.thresholds.len(), 6);
        assert_eq!((c.min_experts, c.max_experts), (1, 4));
        assert_eq!(c.kld_budget, 0.05);
        assert_eq!(c.calib_text, "heldout.txt");
        assert_eq!(c.calib_tokens, 2 * 31);
        assert!(c.calib_kld <= 0.05 && c.calib_avg_experts < 4.0, "{c:?}");
        // The reference run's expert shares (the GPU expert cache starts from them): every
        // token chose 4 of 16 experts in each of the 6 layers.
        assert_eq!(c.expert_share.len(), 6 * 16);
        for layer in c.expert_share.chunks(16) {
            let sum: f32 = layer.iter().sum();
            assert!((sum - 4.0).abs() < 1e-4, "{layer:?}");
            assert!(layer.iter().all(|v| (0.0..=1.0).contains(v)), "{layer:?}");
        }
        // Everything else is the original file, key for key and tensor for tensor.
        for (k, v) in &orig.metadata {
            assert_eq!(file.get(k), Some(v), "{k}");
        }
        assert_eq!(file.tensors.len(), orig.tensors.len());
        for (a, b) in file.tensors.iter().zip(&orig.tensors) {
            assert_eq!((&a.name, &a.dims, a.ty), (&b.name, &b.dims, b.ty));
            assert_eq!(file.tensor_data(a).unwrap(), orig.tensor_data(b).unwrap());
        }

        // llama.cpp ignores the keys: it loads the copy and computes the same logits.
        let ids: Vec<i32> = {
            let lm = LlamaModel::load(&m).unwrap();
            lm.tokenize(TEXT, true, false)
        };
        let run_llama = |p: &std::path::Path| {
            let lm = LlamaModel::load(p).expect("llama.cpp loads the file");
            let mut ctx = LlamaContext::new(&lm, 128, 128, 2).unwrap();
            ctx.eval(&ids, true).unwrap()
        };
        assert_eq!(bits(&run_llama(&out_path)), bits(&run_llama(&m)));

        // dsrun uses the stored rule unless told otherwise.
        let u: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        let mut s = Session::new(&model, 128, 128).unwrap();
        s.set_moe(MoeConfig {
            rule: MoeRule::Calibrated(Arc::new(c)),
            ..Default::default()
        })
        .unwrap();
        s.eval_all(&u).unwrap();
        let avg = s.moe.stats.average().unwrap();
        assert!(avg < 4.0, "{avg}");
    }
    // A verbose 4-token run of the calibrated file with `extra` flags: its stderr.
    let run_v = |extra: &[&str]| {
        let path = out_path.to_str().unwrap();
        let base = ["run", "-m", path, "-n", "4", "--temp", "0", "-v"];
        let out = dsrun(&[&base[..], extra, &["Hello"]].concat());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = run_v(&[]);
    assert!(
        err.contains("the calibrated rule stored in the file"),
        "{err}"
    );
    assert!(err.contains("experts/token (per layer:"), "{err}");
    // --moe-top-k at the model's own count is the model's own rule, over the file's.
    let err = run_v(&["--moe-top-k", "4"]);
    assert!(!err.contains("calibrated rule"), "{err}");
    assert!(err.contains("4.000 experts/token"), "{err}");
    let out = dsrun(&[
        "bench",
        "-m",
        out_path.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "-o",
        "json",
        "--moe-top-k",
        "2",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["moe_avg_experts"], 2.0);
    assert_eq!(
        v[0]["moe_avg_experts_per_layer"].as_array().unwrap().len(),
        6
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
