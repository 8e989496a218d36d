//! `dsrun quantize` on the tiny Qwen3-MoE's Hugging Face folder against the GGUFs that
//! llama.cpp's own converter (F16) and llama-quantize (Q8_0, Q4_K_M from the bf16 GGUF) made:
//! every tensor equal byte for byte, the tokenizer metadata equal, and llama.cpp's token ids
//! equal on the held-out text. Corrupt or incomplete folders give one clear error line.

mod common;

use common::dsrun;

use dsrun::gguf::GgufFile;
use dsrun_quantize::llama::LlamaModel;
use std::path::{Path, PathBuf};

fn hf_dir() -> PathBuf {
    common::models_dir().join("tiny-qwen3moe/hf")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("convert-test", name)
}

fn convert(input: &Path, ftype: &str) -> PathBuf {
    let out = scratch(&format!("hf-{ftype}.gguf"));
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
