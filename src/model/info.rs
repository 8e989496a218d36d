//! `ModelInfo`: the facts a user wants about a model file before running it — architecture,
//! sizes, attention and expert layout, RoPE, tokenizer, tensor types, and the memory it needs.
//! Read from GGUF metadata by the key names llama.cpp uses (`{arch}.block_count`, …).

use super::kv_cache::KvTypes;
use crate::error::Result;
use crate::gguf::{GgufFile, GgufHeader, Value};
use serde::Serialize;
use std::collections::BTreeMap;

/// Tensors of one type in a file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TypeCount {
    pub tensors: u64,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub file_size: u64,
    pub gguf_version: u32,
    pub architecture: String,
    pub name: Option<String>,
    pub n_tensors: usize,
    /// Where the tensor data start (the header, metadata and tensor infos come before).
    pub data_offset: u64,
    /// Every weight in the file.
    pub n_params: u64,
    /// Weights one token reads: all dense tensors plus `expert_used_count / expert_count` of the
    /// expert tensors (`*_exps`). Equal to `n_params` for dense models.
    pub n_params_active: u64,
    pub n_layer: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_ff: Option<u64>,
    pub n_head: Option<u64>,
    pub n_head_kv: Option<u64>,
    pub head_dim_k: Option<u64>,
    pub head_dim_v: Option<u64>,
    pub context_length: Option<u64>,
    pub sliding_window: Option<u64>,
    pub expert_count: Option<u64>,
    pub expert_used_count: Option<u64>,
    pub expert_shared_count: Option<u64>,
    pub expert_ff: Option<u64>,
    pub rope_freq_base: Option<f64>,
    pub rope_dim: Option<u64>,
    pub rope_scaling: Option<String>,
    pub rope_scaling_factor: Option<f64>,
    pub tokenizer_model: Option<String>,
    pub tokenizer_pre: Option<String>,
    pub vocab_size: Option<u64>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub has_chat_template: bool,
    /// ggml type name → tensors of that type.
    pub tensor_types: BTreeMap<String, TypeCount>,
    /// Tensors whose types dsrun cannot decode yet (the file can be described, not run).
    pub unsupported_tensors: Vec<String>,
    /// Bytes of all tensor data (what the weights occupy once mapped).
    pub weights_bytes: u64,
    /// Context length the KV estimate is for.
    pub kv_n_ctx: u64,
    /// A K and V cache of `kv_n_ctx` tokens on every layer, in the types `kv_types`.
    pub kv_bytes: Option<u64>,
    /// The cache types of the estimate, as "K/V" ("f16/f16").
    pub kv_types: String,
    /// Weights + KV cache.
    pub ram_bytes: u64,
}

/// Sum over layers of a per-layer key that is either one number for all layers or an array.
fn per_layer_sum(h: &GgufHeader, key: &str, n_layer: u64) -> Result<Option<u64>> {
    match h.get(key) {
        None => Ok(None),
        Some(Value::Array(_, items)) => Ok(Some(items.iter().filter_map(Value::as_u64).sum())),
        Some(_) => Ok(h.get_u64(key)?.map(|v| v * n_layer)),
    }
}

/// The largest value of a per-layer key (scalar or array).
fn per_layer_max(h: &GgufHeader, key: &str) -> Result<Option<u64>> {
    match h.get(key) {
        Some(Value::Array(_, items)) => Ok(items.iter().filter_map(Value::as_u64).max()),
        _ => h.get_u64(key),
    }
}

impl ModelInfo {
    /// Facts about `file`, with the KV cache estimated for `n_ctx` tokens.
    pub fn from_gguf(file: &GgufFile, n_ctx: u64) -> Result<ModelInfo> {
        Self::from_gguf_kv(file, n_ctx, KvTypes::default())
    }

    /// [`ModelInfo::from_gguf`] with the KV cache stored as `types`.
    pub fn from_gguf_kv(file: &GgufFile, n_ctx: u64, types: KvTypes) -> Result<ModelInfo> {
        let h = file.header();
        let arch = h
            .get_str("general.architecture")?
            .unwrap_or("unknown")
            .to_string();
        let k = |suffix: &str| format!("{arch}.{suffix}");

        let n_layer = h.get_u64(&k("block_count"))?;
        let n_embd = h.get_u64(&k("embedding_length"))?;
        let n_head = per_layer_max(h, &k("attention.head_count"))?;
        let n_head_kv = per_layer_max(h, &k("attention.head_count_kv"))?.or(n_head);
        let head_dim_default = match (n_embd, n_head) {
            (Some(e), Some(hd)) if hd > 0 => Some(e / hd),
            _ => None,
        };
        let head_dim_k = h.get_u64(&k("attention.key_length"))?.or(head_dim_default);
        let head_dim_v = h
            .get_u64(&k("attention.value_length"))?
            .or(head_dim_default);
        let expert_count = h.get_u64(&k("expert_count"))?.filter(|&n| n > 0);
        let expert_used_count = h.get_u64(&k("expert_used_count"))?.filter(|&n| n > 0);

        let mut tensor_types: BTreeMap<String, TypeCount> = BTreeMap::new();
        let (mut n_params, mut n_expert_params, mut weights_bytes) = (0u64, 0u64, 0u64);
        let mut unsupported_tensors = Vec::new();
        for t in &h.tensors {
            let n = t.n_elements();
            n_params += n;
            weights_bytes += t.n_bytes;
            if t.name.contains("_exps") {
                n_expert_params += n;
            }
            if !t.ty.is_supported() {
                unsupported_tensors.push(t.name.clone());
            }
            let e = tensor_types.entry(t.ty.name()).or_insert(TypeCount {
                tensors: 0,
                elements: 0,
                bytes: 0,
            });
            e.tensors += 1;
            e.elements += n;
            e.bytes += t.n_bytes;
        }
        let n_params_active = match (expert_count, expert_used_count) {
            (Some(total), Some(used)) if used <= total => {
                n_params - n_expert_params + n_expert_params / total * used
            }
            _ => n_params,
        };

        // K and V for every layer and token: (n_ctx, n_head_kv * head_dim) each, in `types`.
        let kv_bytes = match (n_layer, head_dim_k, head_dim_v) {
            (Some(nl), Some(dk), Some(dv)) => {
                let kv_heads = per_layer_sum(h, &k("attention.head_count_kv"), nl)?
                    .or(n_head_kv.map(|x| x * nl));
                let row = types
                    .k
                    .row_bytes(dk)
                    .zip(types.v.row_bytes(dv))
                    .map(|(a, b)| a + b);
                kv_heads.zip(row).map(|(heads, row)| heads * row * n_ctx)
            }
            _ => None,
        };
        let kv_types = format!(
            "{}/{}",
            types.k.name().to_lowercase(),
            types.v.name().to_lowercase()
        );
        let tokens = h.get("tokenizer.ggml.tokens").and_then(Value::as_array);

        Ok(ModelInfo {
            path: file.path().display().to_string(),
            file_size: file.file_size(),
            gguf_version: h.version,
            name: h.get_str("general.name")?.map(str::to_string),
            n_tensors: h.tensors.len(),
            data_offset: h.data_offset,
            n_params,
            n_params_active,
            n_layer,
            n_embd,
            n_ff: per_layer_max(h, &k("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            context_length: h.get_u64(&k("context_length"))?,
            sliding_window: h.get_u64(&k("attention.sliding_window"))?,
            expert_count,
            expert_used_count,
            expert_shared_count: h.get_u64(&k("expert_shared_count"))?,
            expert_ff: h.get_u64(&k("expert_feed_forward_length"))?,
            rope_freq_base: h.get_f64(&k("rope.freq_base"))?,
            rope_dim: h.get_u64(&k("rope.dimension_count"))?.or(head_dim_k),
            rope_scaling: h.get_str(&k("rope.scaling.type"))?.map(str::to_string),
            rope_scaling_factor: h.get_f64(&k("rope.scaling.factor"))?,
            tokenizer_model: h.get_str("tokenizer.ggml.model")?.map(str::to_string),
            tokenizer_pre: h.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            vocab_size: tokens.map(|t| t.len() as u64),
            bos_token_id: h.get_u64("tokenizer.ggml.bos_token_id")?,
            eos_token_id: h.get_u64("tokenizer.ggml.eos_token_id")?,
            has_chat_template: h.get("tokenizer.chat_template").is_some(),
            tensor_types,
            unsupported_tensors,
            weights_bytes,
            kv_n_ctx: n_ctx,
            kv_bytes,
            kv_types,
            ram_bytes: weights_bytes + kv_bytes.unwrap_or(0),
            architecture: arch,
        })
    }

    pub fn is_moe(&self) -> bool {
        self.expert_count.is_some()
    }
}
