//! Architectures as data: one row per GGUF `general.architecture`, naming which shared blocks its
//! forward pass chains. Adding a dense or MoE family of this shape is one row here.

use crate::kernels::rope::RopeKind;

/// Gated feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnAct {
    /// SwiGLU: `down(silu(gate x) * up x)`.
    Silu,
    /// GeGLU with tanh GELU (Gemma).
    Gelu,
}

/// Whether the feed-forward is routed experts (`ffn_*_exps`) or one dense FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Experts {
    /// Always dense.
    No,
    /// Always experts: `{arch}.expert_count` and `expert_used_count` are required.
    Yes,
    /// Experts when `{arch}.expert_count` > 0 (llama.cpp runs Mixtral as `llama` this way).
    IfCounted,
}

/// How the router turns its logits into the chosen experts and their weights, as llama.cpp's
/// `build_moe_ffn` does (its `gating_op`, `norm_w` and `w_scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    pub gating: Gating,
    /// Divide the chosen weights by their sum.
    pub norm: bool,
    /// The file says: `{arch}.expert_gating_func` (1 softmax, 2 sigmoid; absent: as above),
    /// `expert_weights_norm` (absent: false), `expert_weights_scale` (absent: none), as
    /// llama.cpp reads them for DeepSeek; elsewhere those keys are ignored, as llama.cpp does.
    pub from_metadata: bool,
}

/// Scoring of the router logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts, then the top k; weights are those probabilities.
    Softmax,
    /// Sigmoid of each logit, then the top k (DeepSeek V3).
    Sigmoid,
    /// The top k of the raw logits, then a softmax over the k chosen (gpt-oss).
    TopKThenSoftmax,
}

#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub name: &'static str,
    pub rope: RopeKind,
    pub ffn_act: FfnAct,
    pub experts: Experts,
    pub routing: Routing,
    /// A shared expert scaled by `sigmoid(ffn_gate_inp_shexp · x)` is required (Qwen2-MoE);
    /// elsewhere `ffn_*_shexp` tensors, when present, are added ungated (Granite).
    pub shared_expert_gated: bool,
    /// Granite's multipliers: `{arch}.embedding_scale`, `residual_scale`, `attention.scale` (all
    /// optional) and `logit_scale` (required; logits are divided by it).
    pub granite_scales: bool,
    /// DeepSeek's multi-head latent attention (`attn_kv_a_mqa`, `attn_k_b`, `attn_v_b`, and
    /// `attn_q_a`/`attn_q_b` or `attn_q`), and `{arch}.leading_dense_block_count` dense layers
    /// before the MoE ones.
    pub mla: bool,
    /// gpt-oss: attention sinks (`attn_sinks`, one logit per head that joins each softmax),
    /// biases on the router and the experts, and its clamped SwiGLU in the experts:
    /// `x * sigmoid(1.702 x) * (clamp(up, ±7) + 1)` with `x = min(gate, 7)`.
    pub oai: bool,
    /// Name of the norm before the FFN (gpt-oss calls it `post_attention_norm`).
    pub ffn_norm_tensor: &'static str,
    /// Multiply the token embedding by sqrt(n_embd) (Gemma).
    pub embd_scale: bool,
    /// Layer `il` uses the sliding window unless `(il + 1) % n == 0` (Gemma 3: 5 local, 1 global).
    pub swa_period: Option<usize>,
    /// RoPE base of the sliding-window layers, where it differs from `rope.freq_base`.
    pub swa_rope_base: Option<f32>,
    /// Attention scale is `1/sqrt(head_dim)` for all of these; kept as data for those that differ.
    pub attn_scale_from_head_dim: bool,
}

const BASE: ArchSpec = ArchSpec {
    name: "",
    rope: RopeKind::Neox,
    ffn_act: FfnAct::Silu,
    experts: Experts::No,
    routing: Routing {
        gating: Gating::Softmax,
        norm: true,
        from_metadata: false,
    },
    shared_expert_gated: false,
    granite_scales: false,
    mla: false,
    oai: false,
    ffn_norm_tensor: "ffn_norm",
    embd_scale: false,
    swa_period: None,
    swa_rope_base: None,
    attn_scale_from_head_dim: true,
};

const SOFTMAX_RAW: Routing = Routing {
    gating: Gating::Softmax,
    norm: false,
    from_metadata: false,
};

#[rustfmt::skip]
pub const ARCHS: &[ArchSpec] = &[
    // Mixtral files are `llama` with expert tensors: softmax, top-k, normalised.
    ArchSpec { name: "llama", rope: RopeKind::Norm, experts: Experts::IfCounted, ..BASE },
    ArchSpec { name: "qwen2", ..BASE },
    ArchSpec { name: "qwen3", ..BASE },
    ArchSpec { name: "qwen3moe", experts: Experts::Yes, ..BASE },
    // Plus a shared expert scaled by sigmoid(ffn_gate_inp_shexp · x); weights not normalised.
    ArchSpec {
        name: "qwen2moe", experts: Experts::Yes, routing: SOFTMAX_RAW,
        shared_expert_gated: true, ..BASE
    },
    // Q/K RMS norm over the whole projection, not per head; weights not normalised.
    ArchSpec { name: "olmoe", experts: Experts::Yes, routing: SOFTMAX_RAW, ..BASE },
    ArchSpec {
        name: "granitemoe", rope: RopeKind::Norm, experts: Experts::IfCounted,
        granite_scales: true, ..BASE
    },
    // MLA, shared experts, routing (sigmoid, selection bias, groups, scale) from the file.
    ArchSpec {
        name: "deepseek2", rope: RopeKind::Norm, experts: Experts::Yes, mla: true,
        routing: Routing { gating: Gating::Softmax, norm: false, from_metadata: true }, ..BASE
    },
    // Every other layer (even ones) in a sliding window; top-k of the router logits, then a
    // softmax over the k.
    ArchSpec {
        name: "gpt-oss", experts: Experts::Yes, oai: true, swa_period: Some(2),
        ffn_norm_tensor: "post_attention_norm",
        routing: Routing { gating: Gating::TopKThenSoftmax, norm: false, from_metadata: false },
        ..BASE
    },
    ArchSpec {
        name: "gemma3", ffn_act: FfnAct::Gelu, embd_scale: true,
        swa_period: Some(6), swa_rope_base: Some(10_000.0), ..BASE
    },
];

pub fn lookup(name: &str) -> Option<&'static ArchSpec> {
    ARCHS.iter().find(|a| a.name == name)
}

/// Names of the architectures dsrun runs, for error messages.
pub fn names() -> String {
    ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}
