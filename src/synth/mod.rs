//! Random-weight GGUF models of each architecture, with the metadata llama.cpp expects: the test
//! models that let every architecture be checked against llama.cpp when no trained file of it
//! can be had, and the large MoE files of the speed benchmarks. Nothing in the engine uses it.
//!
//! A model is a [`SynthSpec`] (sizes plus the architecture's features); [`tensors`] turns it into
//! llama.cpp's tensor names and shapes, each with how to draw its values, and [`write`] draws them
//! from a seeded generator (so a spec and a seed give the same file every time), encodes them and
//! writes the file with the tokenizer metadata of an existing model. Weights are scaled so that
//! activations stay near unit size through the layers and the logits are far from flat.

pub mod presets;

use crate::error::{Error, Result};
use crate::gguf::writer::GgufWriter;
use crate::gguf::{GgufHeader, Value};
use crate::rng::Rng;
use crate::tensor::GgmlType;
use std::path::Path;

/// Q/K RMS norm: none, per head (Qwen3), or over the whole projection (OLMoE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    PerHead,
    Full,
}

/// The shared expert beside the routed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    None,
    /// Scaled by `sigmoid(ffn_gate_inp_shexp · x)` (Qwen2-MoE).
    Gated(usize),
    /// Added as is (Granite MoE shared).
    Plain(usize),
}

/// Granite's multipliers, written as `{arch}.embedding_scale` etc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraniteScales {
    pub embedding: f32,
    pub residual: f32,
    pub attention: f32,
    pub logit: f32,
}

/// DeepSeek's latent attention sizes (`head_dim` of the spec is unused with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthMla {
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    /// Non-rotary and rotary parts of a query/key head; value head size.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
}

/// DeepSeek's routing keys and its dense leading layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthDeepseek {
    pub mla: SynthMla,
    pub n_dense_lead: usize,
    /// Width of the dense layers' FFN.
    pub n_ff_dense: usize,
    /// Shared experts, each of the routed experts' width.
    pub n_shared: usize,
    /// `expert_gating_func`: 1 softmax, 2 sigmoid.
    pub gating_func: u32,
    pub weights_norm: bool,
    pub weights_scale: f32,
    pub n_group: usize,
    pub n_group_used: usize,
}

#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// `general.architecture`.
    pub arch: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Width of one expert.
    pub n_ff_exp: usize,
    /// Write the expert width as `expert_feed_forward_length` (Qwen) rather than only as
    /// `feed_forward_length` (Mixtral, OLMoE, Granite read it from there).
    pub expert_ff_key: bool,
    pub shared: Shared,
    pub qkv_bias: bool,
    pub qk_norm: QkNorm,
    pub granite: Option<GraniteScales>,
    pub deepseek: Option<SynthDeepseek>,
    /// gpt-oss: attention sinks and output bias, router and expert biases, its FFN norm name,
    /// and this sliding window on every other layer.
    pub oai_window: Option<usize>,
    /// Type of the stacked expert tensors (`weight_type` when `None`): gpt-oss ships MXFP4.
    pub expert_type: Option<GgmlType>,
    pub rope_base: f32,
    pub n_ctx_train: usize,
    /// Type of the 2-D and 3-D weight matrices (norms, biases and routers stay F32).
    pub weight_type: GgmlType,
    pub seed: u64,
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform with this standard deviation.
    Uniform(f32),
    /// Uniform in `1 ± 0.2`: RMS-norm weights.
    Norm,
}

#[derive(Debug, Clone)]
pub struct SynthTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub init: Init,
}

/// The tensors of `spec`, in llama.cpp's names and shapes.
pub fn tensors(spec: &SynthSpec, n_vocab: usize) -> Vec<SynthTensor> {
    let (e, v) = (spec.n_embd as u64, n_vocab as u64);
    let ne = spec.n_expert as u64;
    let wt = spec.weight_type;
    let mut out = Vec::new();
    let mut add = |name: String, dims: &[u64], ty: GgmlType, init: Init| {
        // Rows that are not whole blocks of the type stay F32, as llama-quantize does.
        let ty = match ty.block_size() {
            Some(b) if dims[0].is_multiple_of(b as u64) => ty,
            _ => GgmlType::F32,
        };
        out.push(SynthTensor {
            name,
            dims: dims.to_vec(),
            ty,
            init,
        })
    };
    // Linear layers: variance-preserving, std 1/sqrt(fan_in).
    let lin = |fan_in: u64| Init::Uniform(1.0 / (fan_in as f32).sqrt());
    let f32 = GgmlType::F32;
    add("token_embd.weight".into(), &[e, v], wt, Init::Uniform(1.0));
    add("output_norm.weight".into(), &[e], f32, Init::Norm);
    // Logits with a standard deviation of about 4 (times Granite's divisor): peaked, not flat.
    let logit = spec.granite.map_or(1.0, |g| g.logit);
    add(
        "output.weight".into(),
        &[e, v],
        wt,
        Init::Uniform(4.0 * logit / (e as f32).sqrt()),
    );
    for il in 0..spec.n_layer {
        let n = |s: &str| format!("blk.{il}.{s}");
        add(n("attn_norm.weight"), &[e], f32, Init::Norm);
        if let Some(ds) = &spec.deepseek {
            let m = ds.mla;
            let (ql, kl, nh) = (
                m.q_lora_rank as u64,
                m.kv_lora_rank as u64,
                spec.n_head as u64,
            );
            let (nope, rope, vd) = (m.nope as u64, m.rope as u64, m.v as u64);
            add(n("attn_q_a_norm.weight"), &[ql], f32, Init::Norm);
            add(n("attn_kv_a_norm.weight"), &[kl], f32, Init::Norm);
            add(n("attn_q_a.weight"), &[e, ql], wt, lin(e));
            add(n("attn_q_b.weight"), &[ql, nh * (nope + rope)], wt, lin(ql));
            add(n("attn_kv_a_mqa.weight"), &[e, kl + rope], wt, lin(e));
            add(n("attn_k_b.weight"), &[nope, kl, nh], wt, lin(nope));
            add(n("attn_v_b.weight"), &[kl, vd, nh], wt, lin(kl));
            add(n("attn_output.weight"), &[nh * vd, e], wt, lin(nh * vd));
            add(n("ffn_norm.weight"), &[e], f32, Init::Norm);
            if il < ds.n_dense_lead {
                let f = ds.n_ff_dense as u64;
                add(n("ffn_gate.weight"), &[e, f], wt, lin(e));
                add(n("ffn_up.weight"), &[e, f], wt, lin(e));
                add(n("ffn_down.weight"), &[f, e], wt, lin(f));
                continue;
            }
            add(n("exp_probs_b.bias"), &[ne], f32, Init::Uniform(0.1));
        } else {
            attention_tensors(&mut add, il, spec);
        }
        moe_tensors(&mut add, il, spec);
    }
    out
}

/// The usual Q/K/V attention of layer `il` (with Q/K bias and norms where the spec has them),
/// and the FFN norm.
fn attention_tensors(
    add: &mut impl FnMut(String, &[u64], GgmlType, Init),
    il: usize,
    spec: &SynthSpec,
) {
    let n = |s: &str| format!("blk.{il}.{s}");
    let e = spec.n_embd as u64;
    let q_dim = (spec.n_head * spec.head_dim) as u64;
    let kv_dim = (spec.n_head_kv * spec.head_dim) as u64;
    let (wt, f32) = (spec.weight_type, GgmlType::F32);
    let lin = |fan_in: u64| Init::Uniform(1.0 / (fan_in as f32).sqrt());
    add(n("attn_q.weight"), &[e, q_dim], wt, lin(e));
    add(n("attn_k.weight"), &[e, kv_dim], wt, lin(e));
    add(n("attn_v.weight"), &[e, kv_dim], wt, lin(e));
    add(n("attn_output.weight"), &[q_dim, e], wt, lin(q_dim));
    if spec.qkv_bias {
        add(n("attn_q.bias"), &[q_dim], f32, Init::Uniform(0.2));
        add(n("attn_k.bias"), &[kv_dim], f32, Init::Uniform(0.2));
        add(n("attn_v.bias"), &[kv_dim], f32, Init::Uniform(0.2));
    }
    let (qn, kn) = match spec.qk_norm {
        QkNorm::None => (0, 0),
        QkNorm::PerHead => (spec.head_dim as u64, spec.head_dim as u64),
        QkNorm::Full => (q_dim, kv_dim),
    };
    if qn > 0 {
        add(n("attn_q_norm.weight"), &[qn], f32, Init::Norm);
        add(n("attn_k_norm.weight"), &[kn], f32, Init::Norm);
    }
    if spec.oai_window.is_some() {
        add(n("attn_output.bias"), &[e], f32, Init::Uniform(0.2));
        add(
            n("attn_sinks.weight"),
            &[spec.n_head as u64],
            f32,
            Init::Uniform(1.0),
        );
        add(n("post_attention_norm.weight"), &[e], f32, Init::Norm);
    } else {
        add(n("ffn_norm.weight"), &[e], f32, Init::Norm);
    }
}

/// The router, the stacked experts and the shared expert of layer `il`.
fn moe_tensors(add: &mut impl FnMut(String, &[u64], GgmlType, Init), il: usize, spec: &SynthSpec) {
    let n = |s: &str| format!("blk.{il}.{s}");
    let e = spec.n_embd as u64;
    let (ne, nff) = (spec.n_expert as u64, spec.n_ff_exp as u64);
    let (wt, f32) = (spec.weight_type, GgmlType::F32);
    let lin = |fan_in: u64| Init::Uniform(1.0 / (fan_in as f32).sqrt());
    // A router with spread logits, so that the choice of experts is clear-cut.
    add(
        n("ffn_gate_inp.weight"),
        &[e, ne],
        f32,
        Init::Uniform(2.0 / (e as f32).sqrt()),
    );
    let xt = spec.expert_type.unwrap_or(wt);
    add(n("ffn_gate_exps.weight"), &[e, nff, ne], xt, lin(e));
    add(n("ffn_up_exps.weight"), &[e, nff, ne], xt, lin(e));
    add(n("ffn_down_exps.weight"), &[nff, e, ne], xt, lin(nff));
    if spec.oai_window.is_some() {
        add(n("ffn_gate_inp.bias"), &[ne], f32, Init::Uniform(0.5));
        add(n("ffn_gate_exps.bias"), &[nff, ne], f32, Init::Uniform(0.2));
        add(n("ffn_up_exps.bias"), &[nff, ne], f32, Init::Uniform(0.2));
        add(n("ffn_down_exps.bias"), &[e, ne], f32, Init::Uniform(0.2));
    }
    if let Shared::Gated(w) | Shared::Plain(w) = spec.shared {
        let w = w as u64;
        if matches!(spec.shared, Shared::Gated(_)) {
            add(n("ffn_gate_inp_shexp.weight"), &[e], f32, lin(e));
        }
        add(n("ffn_gate_shexp.weight"), &[e, w], wt, lin(e));
        add(n("ffn_up_shexp.weight"), &[e, w], wt, lin(e));
        add(n("ffn_down_shexp.weight"), &[w, e], wt, lin(w));
    }
}

/// The metadata of `spec` (without the tokenizer's).
pub fn metadata(spec: &SynthSpec) -> Vec<(String, Value)> {
    let a = spec.arch;
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("dsrun synthetic {a}")),
        ),
        (format!("{a}.block_count"), u(spec.n_layer)),
        (format!("{a}.context_length"), u(spec.n_ctx_train)),
        (format!("{a}.embedding_length"), u(spec.n_embd)),
        (format!("{a}.attention.head_count"), u(spec.n_head)),
        (format!("{a}.attention.head_count_kv"), u(spec.n_head_kv)),
        (format!("{a}.attention.key_length"), u(spec.head_dim)),
        (format!("{a}.attention.value_length"), u(spec.head_dim)),
        (format!("{a}.rope.dimension_count"), u(spec.head_dim)),
        (format!("{a}.rope.freq_base"), Value::F32(spec.rope_base)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.expert_count"), u(spec.n_expert)),
        (format!("{a}.expert_used_count"), u(spec.n_expert_used)),
    ];
    if spec.expert_ff_key {
        m.push((format!("{a}.expert_feed_forward_length"), u(spec.n_ff_exp)));
        m.push((
            format!("{a}.feed_forward_length"),
            u(spec.n_ff_exp * spec.n_expert_used),
        ));
    } else {
        m.push((format!("{a}.feed_forward_length"), u(spec.n_ff_exp)));
    }
    if let Shared::Gated(w) | Shared::Plain(w) = spec.shared {
        m.push((format!("{a}.expert_shared_feed_forward_length"), u(w)));
    }
    if let Some(ds) = spec.deepseek {
        deepseek_metadata(&mut m, a, &ds);
    }
    if let Some(w) = spec.oai_window {
        m.push((format!("{a}.attention.sliding_window"), u(w)));
    }
    if let Some(g) = spec.granite {
        m.push((format!("{a}.embedding_scale"), Value::F32(g.embedding)));
        m.push((format!("{a}.residual_scale"), Value::F32(g.residual)));
        m.push((format!("{a}.attention.scale"), Value::F32(g.attention)));
        m.push((format!("{a}.logit_scale"), Value::F32(g.logit)));
    }
    m
}

/// DeepSeek's keys: the MLA layout llama.cpp's converter writes (one latent K/V head of
/// `kv_lora_rank + rope`), the dense leading layers, shared experts and the routing keys. They
/// replace the plain attention sizes written before them.
fn deepseek_metadata(m: &mut Vec<(String, Value)>, a: &str, ds: &SynthDeepseek) {
    let u = |v: usize| Value::U32(v as u32);
    let mla = ds.mla;
    let mut set = |k: &str, v: Value| {
        let key = format!("{a}.{k}");
        match m.iter_mut().find(|(name, _)| *name == key) {
            Some(slot) => slot.1 = v,
            None => m.push((key, v)),
        }
    };
    set("attention.head_count_kv", u(1));
    set("attention.key_length", u(mla.kv_lora_rank + mla.rope));
    set("attention.value_length", u(mla.kv_lora_rank));
    set("attention.key_length_mla", u(mla.nope + mla.rope));
    set("attention.value_length_mla", u(mla.v));
    set("rope.dimension_count", u(mla.rope));
    set("attention.q_lora_rank", u(mla.q_lora_rank));
    set("attention.kv_lora_rank", u(mla.kv_lora_rank));
    set("leading_dense_block_count", u(ds.n_dense_lead));
    set("feed_forward_length", u(ds.n_ff_dense));
    set("expert_shared_count", u(ds.n_shared));
    set("expert_gating_func", u(ds.gating_func as usize));
    set("expert_weights_norm", Value::Bool(ds.weights_norm));
    set("expert_weights_scale", Value::F32(ds.weights_scale));
    set("expert_group_count", u(ds.n_group));
    set("expert_group_used_count", u(ds.n_group_used));
}

/// Encodes `values` (rows of `n_per_row`) as a tensor type: dsrun's own encoders by default
/// ([`encode_dsrun`]); the benchmark generator passes ggml's to write k-quants.
pub type Encoder<'a> = &'a dyn Fn(GgmlType, &[f32], usize) -> Result<Vec<u8>>;

/// dsrun's encoders (F32, F16, BF16, Q4_0 … Q8_0, bit for bit as ggml's reference quantizers).
pub fn encode_dsrun(ty: GgmlType, values: &[f32], _n_per_row: usize) -> Result<Vec<u8>> {
    let n = ty.row_bytes(values.len() as u64).ok_or_else(|| {
        Error::Invalid(format!("{} values are not whole {ty} blocks", values.len()))
    })?;
    let mut out = vec![0u8; n as usize];
    crate::tensor::quants::quantize(ty, values, &mut out)?;
    Ok(out)
}

/// The tokenizer metadata (`tokenizer.*`) of `vocab`, and its vocabulary size.
pub fn tokenizer_metadata(vocab: &GgufHeader) -> Result<(Vec<(String, Value)>, usize)> {
    let m: Vec<(String, Value)> = vocab
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let n_vocab = vocab
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len())
        .ok_or_else(|| {
            Error::metadata("tokenizer.ggml.tokens", "missing in the vocabulary file")
        })?;
    Ok((m, n_vocab))
}

/// Writes the model of `spec` to `path` with the tokenizer of `vocab` (through a temporary file,
/// so a failure leaves nothing under `path`). Tensors are drawn and encoded one expert slice at a
/// time, so even a file of several GB needs little memory.
pub fn write(spec: &SynthSpec, vocab: &GgufHeader, path: &Path, encode: Encoder) -> Result<()> {
    let (tok_meta, n_vocab) = tokenizer_metadata(vocab)?;
    let list = tensors(spec, n_vocab);
    let mut w = GgufWriter::new();
    for (k, v) in metadata(spec).into_iter().chain(tok_meta) {
        w.set(&k, v);
    }
    for t in &list {
        w.add_tensor(&t.name, t.ty, &t.dims);
    }
    w.write_file(path, |i| {
        let t = &list[i];
        // Each tensor has its own stream, so a tensor's values do not depend on the others.
        let mut rng = Rng::new(spec.seed ^ fnv1a(&t.name));
        let row = t.dims[0] as usize;
        // One 2-D slice at a time (an expert of a stacked tensor; the whole of a matrix).
        let slice = row * t.dims.get(1).copied().unwrap_or(1) as usize;
        let n_slices: u64 = t.dims.iter().skip(2).product();
        let mut bytes = Vec::new();
        let mut buf = vec![0f32; slice];
        for _ in 0..n_slices {
            for v in buf.iter_mut() {
                *v = match t.init {
                    Init::Uniform(std) => rng.uniform_std(std),
                    Init::Norm => 1.0 + 0.2 * rng.symmetric(),
                };
            }
            bytes.extend(encode(t.ty, &buf, row)?);
        }
        Ok(bytes)
    })
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
