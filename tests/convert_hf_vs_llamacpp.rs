//! `dsrun quantize` on the tiny Qwen3-MoE's Hugging Face folder against the GGUFs that
//! llama.cpp's own converter (F16) and llama-quantize (Q8_0, Q4_K_M from the bf16 GGUF) made:
//! every tensor equal byte for byte, the tokenizer metadata equal, and llama.cpp's token ids
//! equal on the held-out text. Corrupt or incomplete folders give one clear error line.

mod common;

use common::dsrun;

use dsrun::gguf::{GgufFile, Value};
use dsrun_quantize::llama::LlamaModel;
use std::path::{Path, PathBuf};

fn hf_dir() -> PathBuf {
    common::models_dir().join("tiny-qwen3moe/hf")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("convert-test", name)
}

fn convert(input: &Path, ftype: &str) -> PathBuf {
    convert_to(input, ftype, &format!("hf-{ftype}.gguf"))
}

/// `convert` into its own file name: tests run in parallel in one scratch folder.
fn convert_to(input: &Path, ftype: &str, name: &str) -> PathBuf {
    let out = scratch(name);
    let r = dsrun(&[
        "quantize",
        "-q",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        ftype,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// Keys whose values come from the folder's name (the converter's heuristics), not the model.
/// `general.size_label` is compared: dsrun counts the parameters as the converter does.
const NAMING_KEYS: &[&str] = &["general.name"];

fn same_model(ours: &Path, reference: &str) {
    let a = GgufFile::open(ours).unwrap();
    let b = GgufFile::open(common::model(reference)).unwrap();
    for (k, v) in &b.metadata {
        if NAMING_KEYS.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(a.get(k), Some(v), "{reference}: metadata {k}");
    }
    assert_eq!(
        a.tensors.len(),
        b.tensors.len(),
        "{reference}: tensor count"
    );
    for tb in &b.tensors {
        let ta = a
            .tensor(&tb.name)
            .unwrap_or_else(|| panic!("{}: missing", tb.name));
        assert_eq!((&ta.dims, ta.ty), (&tb.dims, tb.ty), "{}", tb.name);
        assert!(
            a.tensor_data(ta).unwrap() == b.tensor_data(tb).unwrap(),
            "{reference}: tensor {} differs",
            tb.name
        );
    }
}

#[test]
fn tiny_moe_hf_to_f16_q8_0_q4_k_m_equal_llamacpp_files() {
    for (ftype, reference) in [
        ("F16", common::TINY_F16),
        ("Q8_0", common::TINY_Q8),
        ("Q4_K_M", common::TINY_Q4KM),
    ] {
        let out = convert(&hf_dir(), ftype);
        same_model(&out, reference);
        if ftype == "Q4_K_M" {
            // llama.cpp loads our file and tokenizes as it does with its converter's file.
            let text = std::fs::read_to_string(common::model("tiny-qwen3moe/heldout.txt")).unwrap();
            let ours = LlamaModel::load_vocab(&out).unwrap();
            let theirs = LlamaModel::load_vocab(common::model(common::TINY_F16)).unwrap();
            let ids = ours.tokenize(&text, false, true);
            assert_eq!(ids.len(), 11024);
            assert_eq!(ids, theirs.tokenize(&text, false, true));
            LlamaModel::load(&out).unwrap();
        }
        std::fs::remove_file(out).unwrap();
    }
}

/// A one-layer Llama checkpoint (f32 safetensors of random weights, the tiny Qwen3-MoE's
/// tokenizer) with `rope_scaling` as given.
fn tiny_llama_folder(name: &str, rope_scaling: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf_dir().join(f), dir.join(f)).unwrap();
    }
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "vocab_size": 8192, "tie_word_embeddings": false, "rope_scaling": {rope_scaling}}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let l = "model.layers.0.";
    let shapes: Vec<(String, Vec<usize>)> = [
        ("model.embed_tokens.weight", vec![8192, 64]),
        ("self_attn.q_proj.weight", vec![64, 64]),
        ("self_attn.k_proj.weight", vec![32, 64]),
        ("self_attn.v_proj.weight", vec![32, 64]),
        ("self_attn.o_proj.weight", vec![64, 64]),
        ("mlp.gate_proj.weight", vec![128, 64]),
        ("mlp.up_proj.weight", vec![128, 64]),
        ("mlp.down_proj.weight", vec![64, 128]),
        ("input_layernorm.weight", vec![64]),
        ("post_attention_layernorm.weight", vec![64]),
        ("model.norm.weight", vec![64]),
        ("lm_head.weight", vec![8192, 64]),
    ]
    .into_iter()
    .map(|(n, s)| {
        let full = if n.starts_with("model.") || n.starts_with("lm_head") {
            n.to_string()
        } else {
            format!("{l}{n}")
        };
        (full, s)
    })
    .collect();
    let mut rng = dsrun::rng::Rng::new(11);
    let (mut header, mut data) = (Vec::new(), Vec::<u8>::new());
    for (n, s) in &shapes {
        let count: usize = s.iter().product();
        let vals: Vec<f32> = if s.len() == 1 {
            vec![1.0; count]
        } else {
            rng.vec(count, 0.2)
        };
        let start = data.len();
        data.extend(vals.iter().flat_map(|x| x.to_le_bytes()));
        header.push(format!(
            r#""{n}": {{"dtype": "F32", "shape": {s:?}, "data_offsets": [{start}, {}]}}"#,
            data.len()
        ));
    }
    let header = format!("{{{}}}", header.join(", "));
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    dir
}

/// Llama 3.1's `llama3` RoPE scaling becomes `rope_freqs.weight`, as llama.cpp's converter
/// writes it (f32, one divisor per rotated pair): heads of 16 at θ 500000 give
/// wavelengths 2π · 500000^(i/8), so pairs 0-3 keep 1, pairs 5-7 take the factor 8, and pair 4
/// (wavelength 4442.88) 1 / ((1 - s) / 8 + s) with s = (8192 / 4442.88 - 1) / 3. llama.cpp
/// loads the file, and dsrun's logits on it match llama.cpp's. YaRN becomes the
/// `rope.scaling.*` keys; a Llama-only scaling on another architecture is refused.
#[test]
fn rope_scaling_from_config_json() {
    let llama3 = r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#;
    let dir = tiny_llama_folder("llama3", llama3);
    let out = convert_to(&dir, "F16", "llama3-F16.gguf");
    let f = GgufFile::open(&out).unwrap();
    let t = f
        .tensor("rope_freqs.weight")
        .expect("rope_freqs.weight written");
    assert_eq!((&t.dims, t.ty), (&vec![8], dsrun::tensor::GgmlType::F32));
    let got: Vec<f32> = f
        .tensor_data(t)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let s = (8192.0 / (2.0 * std::f32::consts::PI * 500000f32.sqrt()) - 1.0) / 3.0;
    let want = [
        1.0,
        1.0,
        1.0,
        1.0,
        1.0 / ((1.0 - s) / 8.0 + s),
        8.0,
        8.0,
        8.0,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4 * w, "{got:?} against {want:?}");
    }

    // llama.cpp runs the file, and dsrun (which applies the factors) agrees with it.
    use dsrun::engine::{Model, Session};
    let ids: Vec<u32> = (0..24).map(|i| (i * 331 + 7) % 8192).collect();
    let model = Model::load(&f).unwrap();
    let mut s = Session::new(&model, 64, 64).unwrap();
    let ours = s.eval_all(&ids).unwrap();
    let lm = LlamaModel::load(&out).unwrap();
    let mut ctx = dsrun_quantize::llama::LlamaContext::new(&lm, 64, 64, 1).unwrap();
    let li: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let theirs = ctx.eval(&li, true).unwrap();
    let (d, n): (f64, f64) = ours.iter().zip(&theirs).fold((0.0, 0.0), |(d, n), (a, b)| {
        (d + ((a - b) as f64).powi(2), n + (*b as f64).powi(2))
    });
    assert!((d / n).sqrt() < 2e-3, "rel. L2 {}", (d / n).sqrt());
    drop(f);
    std::fs::remove_file(out).unwrap();

    // YaRN: keys, as the converter writes them.
    let yarn = r#"{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                   "beta_fast": 16.0}"#;
    let out = convert_to(&tiny_llama_folder("yarn", yarn), "F16", "yarn-F16.gguf");
    let f = GgufFile::open(&out).unwrap();
    for (k, v) in [
        ("llama.rope.scaling.type", Value::String("yarn".into())),
        ("llama.rope.scaling.factor", Value::F32(4.0)),
        (
            "llama.rope.scaling.original_context_length",
            Value::U32(4096),
        ),
        ("llama.rope.scaling.yarn_beta_fast", Value::F32(16.0)),
    ] {
        assert_eq!(f.get(k), Some(&v), "{k}");
    }
    assert!(f.tensor("rope_freqs.weight").is_none());

    // The tiny Qwen3-MoE with llama3 scaling: refused with one line, nothing written.
    let dir = scratch("qwen-llama3");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(hf_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = cfg.replace(r#""rope_type": "default""#, r#""rope_type": "llama3""#);
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let o = scratch("qwen-llama3.gguf");
    let r = dsrun(&[
        "quantize",
        "-q",
        dir.to_str().unwrap(),
        o.to_str().unwrap(),
        "F16",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("Llama-family"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!o.exists());
}
