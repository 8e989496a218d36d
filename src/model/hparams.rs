//! Hyperparameters read from GGUF metadata under llama.cpp's key names.

use super::arch::{self, ArchSpec, Experts, Gating, Routing};
use crate::error::{Error, Result};
use crate::gguf::GgufHeader;
use crate::kernels::rope::RopeParams;
use crate::model::rope_scaling::{RopeOverrides, RopeScaling, RopeTrain};

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
    /// The file's RoPE values and what the layers use after any overrides (`set_rope`).
    pub rope_train: RopeTrain,
    pub rope: RopeScaling,
    pub n_rot: usize,
    pub sliding_window: Option<usize>,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Granite's multipliers (all 1 and `None` elsewhere).
    pub scales: Scales,
    /// How tokens are routed to experts (MoE models).
    pub routing: RoutingParams,
    /// DeepSeek's multi-head latent attention.
    pub mla: Option<Mla>,
}

/// The architecture's routing, resolved against the file's keys where it reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingParams {
    pub routing: Routing,
    /// Multiplies the final weights (`{arch}.expert_weights_scale`; 1 for none).
    pub scale: f32,
    /// Group-limited routing (`{arch}.expert_group_count`, `expert_group_used_count`): experts
    /// come only from the `n_group_used` groups with the best sum of their top two scores.
    pub n_group: usize,
    pub n_group_used: usize,
    /// The first layers have a dense FFN (`{arch}.leading_dense_block_count`).
    pub n_layer_dense_lead: usize,
}

/// Multi-head latent attention sizes. The file stores the absorbed form llama.cpp writes: one
/// K/V "head" of `kv_lora_rank + n_rot` (its `key_length`), whose first `kv_lora_rank` values
/// are also V (its `value_length`), and per-head `attn_k_b`/`attn_v_b` that map queries into
/// and outputs out of that latent space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mla {
    /// 0 when the query is one projection (`attn_q`) rather than `attn_q_a` → norm → `attn_q_b`.
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    /// Query/key head size before absorption (`key_length_mla`): `n_rot` of it rotates.
    pub head_dim_k: usize,
    /// Value head size after `attn_v_b` (`value_length_mla`).
    pub head_dim_v: usize,
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
        let routing = routing_params(h, arch, n_expert)?;
        let scales = if arch.granite_scales {
            granite_scales(h, name)?
        } else {
            Scales::default()
        };
        let n_ctx_train = required(h, &k("context_length"))?;
        let rope_train = RopeTrain::from_gguf(h, name, n_ctx_train)?;
        HParams {
            arch,
            n_layer: required(h, &k("block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train,
            n_vocab,
            rms_eps: h
                .get_f64(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f32,
            rope_train,
            rope: RopeScaling::resolve(&rope_train, &RopeOverrides::default(), false)?,
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
            routing,
            mla: None,
        }
        .with_mla(h)?
        .with_rope(&RopeOverrides::default())
    }

    /// Applies the user's RoPE overrides to the file's values (as llama_context does),
    /// including llama.cpp's `n_ctx_train` adjustment for a custom YaRN factor.
    pub fn with_rope(mut self, o: &RopeOverrides) -> Result<HParams> {
        let rope = RopeScaling::resolve(&self.rope_train, o, self.arch.name == "deepseek2")?;
        if rope.scaling == super::rope_scaling::RopeScalingType::Yarn
            && rope.freq_scale != self.rope_train.freq_scale
        {
            self.n_ctx_train = (rope.yarn.n_ctx_orig as f32 / rope.freq_scale) as usize;
        }
        self.rope = rope;
        Ok(self)
    }

    /// The score scale of latent attention (DeepSeek): `mscale² / sqrt(dk)` as deepseek2.cpp
    /// computes it, where `mscale` undoes the YaRN magnitude's cancellation (`attn_factor ·
    /// (1 + 0.1 ln factor)`) and applies `mscale_all_dim` (`1 + 0.1 · log_mul · ln factor`);
    /// plain `1 / sqrt(dk)` without scaling.
    pub fn mla_score_scale(&self, dk: usize) -> f32 {
        let ln_factor = (1.0 / self.rope.freq_scale).ln();
        let attn_factor_org = self.rope.yarn.attn_factor * (1.0 + 0.1 * ln_factor);
        let mscale = attn_factor_org * (1.0 + 0.1 * self.rope_train.yarn_log_mul * ln_factor);
        mscale * mscale / (dk as f32).sqrt()
    }

    /// Layer `il`'s RoPE without the file's frequency factors (`Weights::rope` adds them).
    /// Sliding-window layers keep their trained values as in llama.cpp:
    /// gemma3's own base (`swa_rope_base`) unscaled, gpt-oss's the file's base and scale.
    pub fn rope_params(&self, il: usize) -> RopeParams {
        let (freq_base, freq_scale) = match (self.is_swa_layer(il), self.arch.swa_rope_base) {
            (true, Some(b)) => (b, 1.0),
            (true, None) => (self.rope_train.freq_base, self.rope_train.freq_scale),
            _ => (self.rope.freq_base, self.rope.freq_scale),
        };
        RopeParams {
            kind: self.arch.rope,
            n_rot: self.n_rot,
            freq_base,
            freq_scale,
            yarn: self.rope.yarn,
            factors: None,
        }
    }

    fn with_mla(mut self, h: &GgufHeader) -> Result<HParams> {
        if !self.arch.mla {
            return Ok(self);
        }
        let name = self.arch.name;
        let k = |s: &str| format!("{name}.{s}");
        let opt = |s: &str| -> Result<usize> {
            Ok(h.get_u64(&k(s))?.map_or(0, |v| v.min(1 << 20) as usize))
        };
        let mla = Mla {
            q_lora_rank: opt("attention.q_lora_rank")?,
            kv_lora_rank: required(h, &k("attention.kv_lora_rank"))?,
            head_dim_k: opt("attention.key_length_mla")?,
            head_dim_v: opt("attention.value_length_mla")?,
        };
        // Only the layout llama.cpp's converter writes now: one latent K/V head.
        let v_len = h.get_u64(&k("attention.value_length"))?.unwrap_or(0) as usize;
        if mla.head_dim_k == 0
            || mla.head_dim_v == 0
            || self.n_head_kv != 1
            || self.head_dim != mla.kv_lora_rank + self.n_rot
            || v_len != mla.kv_lora_rank
            || mla.head_dim_k <= self.n_rot
        {
            return Err(Error::Invalid(format!(
                "{name}: only the MLA layout of llama.cpp's current converter is supported \
                 (key_length_mla and value_length_mla set, head_count_kv 1, key_length = \
                 kv_lora_rank + rope dims, value_length = kv_lora_rank, key_length_mla > rope \
                 dims); this file has key_length {}, value_length {v_len}, head_count_kv {}, \
                 kv_lora_rank {}, rope dims {}, key_length_mla {}",
                self.head_dim, self.n_head_kv, mla.kv_lora_rank, self.n_rot, mla.head_dim_k
            )));
        }
        self.mla = Some(mla);
        Ok(self)
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

fn routing_params(h: &GgufHeader, arch: &ArchSpec, n_expert: usize) -> Result<RoutingParams> {
    let name = arch.name;
    let k = |s: &str| format!("{name}.{s}");
    let mut p = RoutingParams {
        routing: arch.routing,
        scale: 1.0,
        n_group: h.get_u64(&k("expert_group_count"))?.unwrap_or(0) as usize,
        n_group_used: h.get_u64(&k("expert_group_used_count"))?.unwrap_or(0) as usize,
        n_layer_dense_lead: 0,
    };
    if p.n_group > 1 {
        if n_expert == 0 || !n_expert.is_multiple_of(p.n_group) || n_expert / p.n_group < 2 {
            return Err(Error::metadata(
                k("expert_group_count"),
                format!(
                    "{} groups do not split the {n_expert} experts into groups of 2 or more",
                    p.n_group
                ),
            ));
        }
        if p.n_group_used == 0 || p.n_group_used > p.n_group {
            return Err(Error::metadata(
                k("expert_group_used_count"),
                format!("{} is not between 1 and {}", p.n_group_used, p.n_group),
            ));
        }
    }
    if arch.routing.from_metadata {
        p.routing.gating = match h.get_u64(&k("expert_gating_func"))? {
            None | Some(0) | Some(1) => Gating::Softmax,
            Some(2) => Gating::Sigmoid,
            Some(v) => {
                return Err(Error::metadata(
                    k("expert_gating_func"),
                    format!("gating function {v} is not supported (1 softmax, 2 sigmoid)"),
                ))
            }
        };
        p.routing.norm = match h.get(&k("expert_weights_norm")) {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::metadata(
                    k("expert_weights_norm"),
                    format!("expected a bool, found {v}"),
                )
            })?,
        };
        match h.get_f64(&k("expert_weights_scale"))? {
            Some(v) if !v.is_finite() => {
                return Err(Error::metadata(
                    k("expert_weights_scale"),
                    format!("{v} is not finite"),
                ))
            }
            Some(v) if v != 0.0 => p.scale = v as f32,
            _ => {}
        }
    }
    if arch.mla {
        p.n_layer_dense_lead = h
            .get_u64(&k("leading_dense_block_count"))?
            .unwrap_or(0)
            .min(1 << 20) as usize;
    }
    Ok(p)
}
