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

#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub name: &'static str,
    pub rope: RopeKind,
    pub ffn_act: FfnAct,
    /// Feed-forward of routed experts (`ffn_*_exps`) instead of one dense FFN.
    pub moe: bool,
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
    moe: false,
    embd_scale: false,
    swa_period: None,
    swa_rope_base: None,
    attn_scale_from_head_dim: true,
};

#[rustfmt::skip]
pub const ARCHS: &[ArchSpec] = &[
    ArchSpec { name: "llama", rope: RopeKind::Norm, ..BASE },
    ArchSpec { name: "qwen2", ..BASE },
    ArchSpec { name: "qwen3", ..BASE },
    ArchSpec { name: "qwen3moe", moe: true, ..BASE },
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
