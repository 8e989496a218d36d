//! Hyperparameters read from GGUF metadata under llama.cpp's key names.

use super::arch::{self, ArchSpec, Experts};
use crate::error::{Error, Result};
use crate::gguf::GgufHeader;

#[derive(Debug, Clone)]
pub struct HParams {
    pub arch: &'static ArchSpec,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx_train: usize,
    pub n_vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_scale: f32,
    pub n_rot: usize,
    pub sliding_window: Option<usize>,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Granite's multipliers (all 1 and `None` elsewhere).
    pub scales: Scales,
}

/// Multipliers some architectures apply (Granite): llama.cpp treats a missing or zero key as
/// "none".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Token embeddings are multiplied by it.
    pub embedding: f32,
    /// Attention and FFN outputs are multiplied by it before the residual add.
    pub residual: f32,
    /// The attention score scale instead of `1/sqrt(head_dim)`.
    pub attention: Option<f32>,
    /// Logits are divided by it.
    pub logit: f32,
}

impl Default for Scales {
    fn default() -> Self {
        Scales {
            embedding: 1.0,
            residual: 1.0,
            attention: None,
            logit: 1.0,
        }
    }
}

/// Most experts a file may declare (llama.cpp's `LLAMA_MAX_EXPERTS`).
pub const MAX_EXPERTS: usize = 1024;

fn required(h: &GgufHeader, key: &str) -> Result<usize> {
    let v = h
        .get_u64(key)?
        .ok_or_else(|| Error::metadata(key, "missing, and the model cannot run without it"))?;
    if v == 0 || v > (1 << 31) {
        return Err(Error::metadata(key, format!("value {v} is out of range")));
    }
    Ok(v as usize)
}

impl HParams {
    pub fn from_gguf(h: &GgufHeader) -> Result<HParams> {
        let name = h
            .get_str("general.architecture")?
            .ok_or_else(|| Error::metadata("general.architecture", "missing"))?;
        let arch = arch::lookup(name).ok_or_else(|| {
            Error::Invalid(format!(
                "architecture {name:?} is not supported yet (dsrun runs: {})",
                arch::names()
            ))
        })?;
        let k = |s: &str| format!("{name}.{s}");
        let n_embd = required(h, &k("embedding_length"))?;
        let n_head = required(h, &k("attention.head_count"))?;
        let n_head_kv = h
            .get_u64(&k("attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(n_head);
        if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::metadata(
                k("attention.head_count_kv"),
                format!("{n_head_kv} does not divide the {n_head} query heads"),
            ));
        }
        let head_dim = h
            .get_u64(&k("attention.key_length"))?
            .map(|v| v as usize)
            .unwrap_or(n_embd / n_head);
        let n_vocab = h
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| Error::metadata("tokenizer.ggml.tokens", "missing"))?;
        let counted = h.get_u64(&k("expert_count"))?.is_some_and(|n| n > 0);
        let (n_expert, n_expert_used) = match arch.experts {
            Experts::Yes => expert_counts(h, name)?,
            Experts::IfCounted if counted => expert_counts(h, name)?,
            _ => (0, 0),
        };
        let scales = if arch.granite_scales {
            granite_scales(h, name)?
        } else {
            Scales::default()
        };
        let rope_scale = match h.get_str(&k("rope.scaling.type"))? {
            Some("linear") => 1.0 / h.get_f64(&k("rope.scaling.factor"))?.unwrap_or(1.0) as f32,
            _ => 1.0,
        };
        Ok(HParams {
            arch,
            n_layer: required(h, &k("block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train: required(h, &k("context_length"))?,
            n_vocab,
            rms_eps: h
                .get_f64(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f32,
            rope_base: h.get_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
            rope_scale,
            n_rot: h
                .get_u64(&k("rope.dimension_count"))?
                .map(|v| v as usize)
                .unwrap_or(head_dim),
            sliding_window: h
                .get_u64(&k("attention.sliding_window"))?
                .map(|v| v as usize),
            n_expert,
            n_expert_used,
            scales,
        })
    }

    /// Whether the layers' feed-forward is routed experts.
    pub fn is_moe(&self) -> bool {
        self.n_expert > 0
    }

    /// Whether layer `il` attends only within the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        match (self.arch.swa_period, self.sliding_window) {
            (Some(p), Some(_)) => !(il + 1).is_multiple_of(p),
            _ => false,
        }
    }
}

/// `{arch}.expert_count` and `expert_used_count`, both required and consistent.
fn expert_counts(h: &GgufHeader, arch: &str) -> Result<(usize, usize)> {
    let (kn, ku) = (
        format!("{arch}.expert_count"),
        format!("{arch}.expert_used_count"),
    );
    let n = required(h, &kn)?;
    if n > MAX_EXPERTS {
        return Err(Error::metadata(
            kn,
            format!("{n} experts, more than the {MAX_EXPERTS} supported"),
        ));
    }
    let used = required(h, &ku)?;
    if used > n {
        return Err(Error::metadata(
            ku,
            format!("{used} is more than the {n} experts"),
        ));
    }
    Ok((n, used))
}

/// Granite's multipliers; each must be finite, and the logit scale non-zero.
fn granite_scales(h: &GgufHeader, arch: &str) -> Result<Scales> {
    let get = |s: &str| -> Result<Option<f32>> {
        let key = format!("{arch}.{s}");
        match h.get_f64(&key)? {
            Some(v) if !v.is_finite() => Err(Error::metadata(key, format!("{v} is not finite"))),
            Some(v) => Ok(Some(v as f32).filter(|&v| v != 0.0)),
            None => Ok(None),
        }
    };
    let logit = get("logit_scale")?.ok_or_else(|| {
        Error::metadata(
            format!("{arch}.logit_scale"),
            "missing or zero, and the model cannot run without it",
        )
    })?;
    Ok(Scales {
        embedding: get("embedding_scale")?.unwrap_or(1.0),
        residual: get("residual_scale")?.unwrap_or(1.0),
        attention: get("attention.scale")?,
        logit,
    })
}
