//! The synthetic models the tests and benchmarks use: one tiny file per MoE architecture (a few
//! MB with the 8192-token vocabulary, evaluated in milliseconds), and a Qwen3-30B-A3B-shaped
//! `qwen3moe` for speed measurements.

use super::{GraniteScales, QkNorm, Shared, SynthDeepseek, SynthMla, SynthSpec};
use crate::tensor::GgmlType;

/// The architectures [`tiny`] has a preset for, in the order they were added.
pub const TINY_ARCHS: &[&str] = &[
    "qwen3moe",
    "qwen2moe",
    "llama",
    "olmoe",
    "granitemoe",
    "deepseek2",
    "gpt-oss",
];

const TINY: SynthSpec = SynthSpec {
    arch: "",
    n_layer: 2,
    n_embd: 64,
    n_head: 4,
    n_head_kv: 2,
    head_dim: 16,
    n_expert: 8,
    n_expert_used: 2,
    n_ff_exp: 32,
    expert_ff_key: false,
    shared: Shared::None,
    qkv_bias: false,
    qk_norm: QkNorm::None,
    granite: None,
    deepseek: None,
    oai_window: None,
    expert_type: None,
    rope_base: 10_000.0,
    n_ctx_train: 4096,
    weight_type: GgmlType::F32,
    seed: 0x5eed,
};

/// A tiny random model of `arch` with that family's distinctive parts, all weights in F32 (so
/// that llama.cpp computes in f32 too and the comparison checks the architecture, not rounding).
/// `llama` here is Mixtral: llama with 8 experts, 2 per token.
pub fn tiny(arch: &str) -> Option<SynthSpec> {
    let s = match arch {
        "qwen3moe" => SynthSpec {
            arch: "qwen3moe",
            expert_ff_key: true,
            qk_norm: QkNorm::PerHead,
            ..TINY
        },
        "qwen2moe" => SynthSpec {
            arch: "qwen2moe",
            expert_ff_key: true,
            shared: Shared::Gated(48),
            qkv_bias: true,
            ..TINY
        },
        "llama" => SynthSpec {
            arch: "llama",
            ..TINY
        },
        // OLMoE's Q/K norms span the whole projection, and its K/V heads equal its Q heads.
        "olmoe" => SynthSpec {
            arch: "olmoe",
            n_head_kv: 4,
            n_expert: 16,
            n_expert_used: 4,
            qk_norm: QkNorm::Full,
            ..TINY
        },
        "granitemoe" => SynthSpec {
            arch: "granitemoe",
            shared: Shared::Plain(48),
            granite: Some(GraniteScales {
                embedding: 12.0,
                residual: 0.22,
                attention: 0.125,
                logit: 8.0,
            }),
            ..TINY
        },
        // DeepSeek V3's routing (sigmoid, selection bias, groups, normalised, scaled), MLA with
        // a low-rank query, one dense leading layer, one shared expert.
        "deepseek2" => SynthSpec {
            arch: "deepseek2",
            n_layer: 3,
            expert_ff_key: true,
            shared: Shared::Plain(32),
            deepseek: Some(SynthDeepseek {
                mla: SynthMla {
                    q_lora_rank: 48,
                    kv_lora_rank: 32,
                    nope: 16,
                    rope: 8,
                    v: 16,
                },
                n_dense_lead: 1,
                n_ff_dense: 96,
                n_shared: 1,
                gating_func: 2,
                weights_norm: true,
                weights_scale: 2.5,
                n_group: 4,
                n_group_used: 2,
            }),
            ..TINY
        },
        // Sinks, biases, clamped SwiGLU, a 16-token window on even layers (the test's 64 tokens
        // cross it), experts in F32 here (`gpt-oss-mxfp4` below has them in MXFP4).
        "gpt-oss" => SynthSpec {
            arch: "gpt-oss",
            expert_ff_key: true,
            qkv_bias: true,
            oai_window: Some(16),
            ..TINY
        },
        _ => return None,
    };
    Some(s)
}

/// The layer shapes of Qwen3-30B-A3B (hidden 2048, 32/4 heads of 128, 128 experts of width 768,
/// 8 per token) with `n_layer` layers and weights of type `weight_type` (Q4_K: about 350 MB a
/// layer, so 4 layers make a file near 1.5 GB).
pub fn qwen3_30b_a3b(n_layer: usize, weight_type: GgmlType) -> SynthSpec {
    SynthSpec {
        arch: "qwen3moe",
        n_layer,
        n_embd: 2048,
        n_head: 32,
        n_head_kv: 4,
        head_dim: 128,
        n_expert: 128,
        n_expert_used: 8,
        n_ff_exp: 768,
        expert_ff_key: true,
        shared: Shared::None,
        qkv_bias: false,
        qk_norm: QkNorm::PerHead,
        granite: None,
        deepseek: None,
        oai_window: None,
        expert_type: None,
        rope_base: 1_000_000.0,
        n_ctx_train: 40960,
        weight_type,
        seed: 0x30b,
    }
}
