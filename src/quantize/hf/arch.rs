//! Hugging Face architectures as a table: the class named in config.json, the GGUF architecture
//! llama.cpp's converter writes, whether it permutes Q/K rows for llama's RoPE layout, and the
//! tensor-name map. Adding a family is one row here.

/// One architecture the converter knows.
pub struct HfArch {
    /// `architectures[0]` of config.json.
    pub hf_class: &'static str,
    /// `general.architecture`.
    pub gguf: &'static str,
    /// Q and K projection rows are reordered from HF's rotate-half layout to llama.cpp's
    /// interleaved one (`LlamaModel.permute` of the converter).
    pub permute_qk: bool,
    /// Where the expert weights live, per expert: (prefix after the layer, [gate, up, down]).
    pub experts: Option<(&'static str, [&'static str; 3])>,
    /// Extra keys: `rope.dimension_count` and `vocab_size` (llama), the expert width key.
    pub llama_keys: bool,
    /// config.json key of the expert width written as `expert_feed_forward_length`.
    pub expert_ff_key: Option<&'static str>,
    /// RMS epsilon the converter forces (olmoe writes 1e-5 whatever config.json says).
    pub rms_eps: Option<f32>,
}

const QWEN_EXPERTS: (&str, [&str; 3]) = (
    "mlp.experts.",
    ["gate_proj.weight", "up_proj.weight", "down_proj.weight"],
);

#[rustfmt::skip]
pub const ARCHS: &[HfArch] = &[
    HfArch { hf_class: "LlamaForCausalLM", gguf: "llama", permute_qk: true, experts: None,
             llama_keys: true, expert_ff_key: None, rms_eps: None },
    HfArch { hf_class: "MistralForCausalLM", gguf: "llama", permute_qk: true, experts: None,
             llama_keys: true, expert_ff_key: None, rms_eps: None },
    HfArch { hf_class: "MixtralForCausalLM", gguf: "llama", permute_qk: true,
             experts: Some(("block_sparse_moe.experts.", ["w1.weight", "w3.weight", "w2.weight"])),
             llama_keys: true, expert_ff_key: None, rms_eps: None },
    HfArch { hf_class: "Qwen2ForCausalLM", gguf: "qwen2", permute_qk: false, experts: None,
             llama_keys: false, expert_ff_key: None, rms_eps: None },
    HfArch { hf_class: "Qwen3ForCausalLM", gguf: "qwen3", permute_qk: false, experts: None,
             llama_keys: false, expert_ff_key: None, rms_eps: None },
    HfArch { hf_class: "Qwen3MoeForCausalLM", gguf: "qwen3moe", permute_qk: false,
             experts: Some(QWEN_EXPERTS), llama_keys: false,
             expert_ff_key: Some("moe_intermediate_size"), rms_eps: None },
    HfArch { hf_class: "OlmoeForCausalLM", gguf: "olmoe", permute_qk: false,
             experts: Some(QWEN_EXPERTS), llama_keys: false, expert_ff_key: None,
             rms_eps: Some(1e-5) },
];

/// Tensors outside the layers.
pub const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Tensors of layer N, after `model.layers.N.`.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
];

/// GGUF names of the stacked expert tensors, in the order of `HfArch::experts`.
pub const EXPERT_NAMES: [&str; 3] = [
    "ffn_gate_exps.weight",
    "ffn_up_exps.weight",
    "ffn_down_exps.weight",
];

/// Checkpoint entries the converter skips.
pub const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

pub fn find(hf_class: &str) -> Option<&'static HfArch> {
    ARCHS.iter().find(|a| a.hf_class == hf_class)
}
