//! dsrun's GGUF reader, `ModelInfo` and tensor decoding against ggml's own reader and
//! dequantizers, on every real model file.

mod common;

use common::{model, ALL_MODELS};
use dsrun::gguf::{GgufFile, Value};
use dsrun::model::ModelInfo;
use dsrun::tensor::{dequantize, GgmlType};
use dsrun_quantize::{ggml_dequantize, read_gguf, GgufValue};
use rayon::prelude::*;

/// A dsrun value in the shape ggml's reader returns.
fn as_ggml(v: &Value) -> GgufValue {
    match v {
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => {
            GgufValue::U64(v.as_u64().unwrap())
        }
        Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => {
            GgufValue::I64(v.as_i64().unwrap())
        }
        Value::F32(_) | Value::F64(_) => GgufValue::F64(v.as_f64().unwrap()),
        Value::Bool(b) => GgufValue::Bool(*b),
        Value::String(s) => GgufValue::Str(s.clone()),
        Value::Array(t, items) => GgufValue::Array {
            elem_type: *t as u32,
            values: items.iter().map(as_ggml).collect(),
        },
    }
}

#[test]
fn reader_matches_ggml_on_every_model() {
    for name in ALL_MODELS {
        let path = model(name);
        let ours = GgufFile::open(&path).unwrap();
        let theirs = read_gguf(&path).expect("ggml reads the file");
        assert_eq!(ours.version, theirs.version, "{name}");
        assert_eq!(ours.alignment, theirs.alignment, "{name}");
        assert_eq!(ours.data_offset, theirs.data_offset, "{name}");
        assert_eq!(ours.metadata.len(), theirs.kvs.len(), "{name}");
        for ((k, v), kv) in ours.metadata.iter().zip(&theirs.kvs) {
            assert_eq!(k, &kv.key, "{name}");
            assert_eq!(v.value_type() as u32, kv.type_id, "{name}: {k}");
            assert_eq!(as_ggml(v), kv.value, "{name}: {k}");
        }
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{name}");
        for (t, g) in ours.tensors.iter().zip(&theirs.tensors) {
            assert_eq!(t.name, g.name, "{name}");
            assert_eq!(t.ty.id(), g.type_id, "{name}: {}", t.name);
            let mut dims = t.dims.clone();
            while dims.len() > 1 && dims.last() == Some(&1) {
                dims.pop();
            }
            assert_eq!(dims, g.dims, "{name}: {}", t.name);
            assert_eq!(t.offset, g.offset, "{name}: {}", t.name);
            assert_eq!(t.n_bytes, g.size, "{name}: {}", t.name);
        }
    }
}

fn kv<'a>(r: &'a dsrun_quantize::GgufRef, key: &str) -> Option<&'a GgufValue> {
    r.kvs.iter().find(|k| k.key == key).map(|k| &k.value)
}

fn kv_u64(r: &dsrun_quantize::GgufRef, key: &str) -> Option<u64> {
    match kv(r, key)? {
        GgufValue::U64(v) => Some(*v),
        GgufValue::I64(v) => Some(*v as u64),
        _ => None,
    }
}

#[test]
fn info_matches_ggml_on_every_model() {
    for name in ALL_MODELS {
        let path = model(name);
        let file = GgufFile::open(&path).unwrap();
        let info = ModelInfo::from_gguf(&file, 1024).unwrap();
        let g = read_gguf(&path).unwrap();
        let arch = match kv(&g, "general.architecture") {
            Some(GgufValue::Str(s)) => s.clone(),
            other => panic!("{name}: architecture {other:?}"),
        };
        assert_eq!(info.architecture, arch);
        let k = |s: &str| format!("{arch}.{s}");
        assert_eq!(info.n_layer, kv_u64(&g, &k("block_count")), "{name}");
        assert_eq!(info.n_embd, kv_u64(&g, &k("embedding_length")), "{name}");
        assert_eq!(
            info.n_head,
            kv_u64(&g, &k("attention.head_count")),
            "{name}"
        );
        assert_eq!(
            info.n_head_kv,
            kv_u64(&g, &k("attention.head_count_kv")),
            "{name}"
        );
        assert_eq!(
            info.context_length,
            kv_u64(&g, &k("context_length")),
            "{name}"
        );
        assert_eq!(info.expert_count, kv_u64(&g, &k("expert_count")), "{name}");
        assert_eq!(
            info.expert_used_count,
            kv_u64(&g, &k("expert_used_count")),
            "{name}"
        );
        let vocab = match kv(&g, "tokenizer.ggml.tokens") {
            Some(GgufValue::Array { values, .. }) => values.len() as u64,
            _ => panic!("{name}: no vocabulary"),
        };
        assert_eq!(info.vocab_size, Some(vocab), "{name}");
        assert_eq!(
            info.has_chat_template,
            kv(&g, "tokenizer.chat_template").is_some(),
            "{name}"
        );
        let n_params: u64 = g.tensors.iter().map(|t| t.ne.iter().product::<u64>()).sum();
        assert_eq!(info.n_params, n_params, "{name}");
        let bytes: u64 = g.tensors.iter().map(|t| t.size).sum();
        assert_eq!(info.weights_bytes, bytes, "{name}");
        assert_eq!(info.file_size, std::fs::metadata(&path).unwrap().len());
        // Histogram: ggml's type names, case aside.
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for t in &g.tensors {
            *counts
                .entry(dsrun_quantize::ggml_type_name(t.type_id).to_uppercase())
                .or_default() += 1;
        }
        let ours: std::collections::BTreeMap<String, u64> = info
            .tensor_types
            .iter()
            .map(|(n, c)| (n.to_uppercase(), c.tensors))
            .collect();
        assert_eq!(ours, counts, "{name}");
        // KV estimate: 2 (K and V) x layers x ctx x kv heads x head dim x 2 bytes (f16).
        let hd = kv_u64(&g, &k("attention.key_length"))
            .unwrap_or(info.n_embd.unwrap() / info.n_head.unwrap());
        let want_kv = 2 * info.n_layer.unwrap() * 1024 * info.n_head_kv.unwrap() * hd * 2;
        assert_eq!(info.kv_bytes, Some(want_kv), "{name}");
    }
    // The MoE figures the tiny model's README gives.
    let f = GgufFile::open(model(common::TINY_Q8)).unwrap();
    let info = ModelInfo::from_gguf(&f, 512).unwrap();
    assert_eq!(info.n_params, 24_080_000);
    assert_eq!(info.n_params_active, 9_924_224);
}

/// Every tensor of every model decodes to exactly ggml's floats (compared as bits).
#[test]
fn every_tensor_decodes_like_ggml() {
    const CHUNK: usize = 1 << 20;
    for name in ALL_MODELS {
        let file = GgufFile::open(model(name)).unwrap();
        let total: u64 = file
            .tensors
            .par_iter()
            .map(|t| {
                let data = file.tensor_data(t).unwrap();
                let bs = t.ty.block_size().unwrap();
                let n = t.n_elements() as usize;
                // Whole blocks per chunk, so chunks split the bytes exactly.
                let step = (CHUNK / bs).max(1) * bs;
                let mut start = 0;
                let mut ours = vec![0f32; step.min(n)];
                while start < n {
                    let len = step.min(n - start);
                    let b0 = t.ty.row_bytes(start as u64).unwrap() as usize;
                    let b1 = t.ty.row_bytes((start + len) as u64).unwrap() as usize;
                    let src = &data[b0..b1];
                    dequantize(t.ty, src, &mut ours[..len]).unwrap();
                    // ggml has no decoder for F32 (there is nothing to decode).
                    let theirs = match t.ty {
                        GgmlType::F32 => src
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                        ty => ggml_dequantize(ty.id(), src, len).unwrap(),
                    };
                    for (i, (a, b)) in ours[..len].iter().zip(&theirs).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{name}: {} ({}) element {}: {a} vs ggml {b}",
                            t.name,
                            t.ty,
                            start + i
                        );
                    }
                    start += len;
                }
                n as u64
            })
            .sum();
        assert!(total > 1_000_000, "{name}: {total} elements");
    }
}
