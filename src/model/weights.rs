//! The tensors of a model, looked up by llama.cpp's names and checked against the shapes the
//! hyperparameters imply, borrowed from the memory map.

use super::hparams::HParams;
use super::mla::MlaWeights;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kernels::rope::RopeParams;
use crate::tensor::TensorView;
use std::sync::Arc;

pub enum Ffn<'a> {
    Dense {
        gate: TensorView<'a>,
        up: TensorView<'a>,
        down: TensorView<'a>,
    },
    /// Stacked experts: `gate`/`up` are (n_expert * n_ff, n_embd), `down` (n_expert * n_embd, n_ff).
    Moe {
        router: TensorView<'a>,
        gate: TensorView<'a>,
        up: TensorView<'a>,
        down: TensorView<'a>,
        n_ff: usize,
        /// The shared expert every token goes through (`ffn_*_shexp`), if the model has one.
        shared: Option<Box<SharedExpert<'a>>>,
        /// (n_expert): added to the scores to choose experts, not to weight them
        /// (`exp_probs_b`, DeepSeek V3).
        selection_bias: Option<Vec<f32>>,
        /// gpt-oss's biases of the router and of every expert's projections.
        biases: Option<Box<ExpertBiases>>,
    },
}

/// Biases of the router (n_expert) and, per expert, of its gate and up (n_ff each) and down
/// (n_embd) projections, stored expert after expert.
pub struct ExpertBiases {
    pub router: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// A dense SwiGLU beside the routed experts; with `gate_inp` (Qwen2-MoE) its output is scaled
/// by `sigmoid(gate_inp · x)`, without it (Granite) added as is.
pub struct SharedExpert<'a> {
    pub gate: TensorView<'a>,
    pub up: TensorView<'a>,
    pub down: TensorView<'a>,
    /// (n_embd): the shared expert's scalar gate.
    pub gate_inp: Option<Vec<f32>>,
}

/// A layer's attention: the usual Q/K/V projections, or DeepSeek's latent attention.
pub enum Attn<'a> {
    Mha(AttnWeights<'a>),
    Mla(MlaWeights<'a>),
}

pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    pub attn: Attn<'a>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn<'a>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub struct AttnWeights<'a> {
    pub wq: TensorView<'a>,
    pub wk: TensorView<'a>,
    pub wv: TensorView<'a>,
    pub wo: TensorView<'a>,
    pub bo: Option<Vec<f32>>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// (n_head): gpt-oss's attention sinks, one extra logit per head in the softmax.
    pub sinks: Option<Vec<f32>>,
}

pub struct Weights<'a> {
    pub token_embd: TensorView<'a>,
    pub output_norm: Vec<f32>,
    /// The output projection, or the token embedding when the model ties them.
    pub output: TensorView<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    /// `rope_freqs.weight`: RoPE's per-pair frequency divisors (Llama 3.1 and later), shared
    /// by every layer as in llama.cpp.
    pub rope_freqs: Option<Arc<[f32]>>,
}

pub(super) struct Loader<'a> {
    pub file: &'a GgufFile,
}

impl<'a> Loader<'a> {
    pub(super) fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<TensorView<'a>>> {
        let Some(info) = self.file.tensor(name) else {
            return Ok(None);
        };
        let got: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        if got != dims {
            return Err(Error::Invalid(format!(
                "tensor {name} has shape {got:?}, expected {dims:?} from the model's metadata"
            )));
        }
        TensorView::new(self.file, info).map(Some)
    }

    pub(super) fn req(&self, name: &str, dims: &[usize]) -> Result<TensorView<'a>> {
        self.opt(name, dims)?.ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {name} is missing from {}",
                self.file.path().display()
            ))
        })
    }

    pub(super) fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.req(name, &[n])?.to_f32())
    }

    pub(super) fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        Ok(self.opt(name, &[n])?.map(|t| t.to_f32()))
    }

    /// An optional vector of length `a` or `b` (Q/K norms: per head, or over the whole
    /// projection as OLMoE has them).
    fn opt_vec_either(&self, name: &str, a: usize, b: usize) -> Result<Option<Vec<f32>>> {
        match self.file.tensor(name).and_then(|t| t.dims.first()) {
            Some(&d) if d as usize == b => self.opt_vec(name, b),
            _ => self.opt_vec(name, a),
        }
    }

    /// The first dimension of a 2-D tensor, or 0 when it is missing (the shape check that
    /// follows names it).
    fn dim(&self, name: &str, i: usize) -> usize {
        self.file
            .tensor(name)
            .and_then(|t| t.dims.get(i))
            .map_or(0, |&d| d as usize)
    }

    /// The routed experts of one layer, checked against `{arch}.expert_count`.
    fn experts(&self, hp: &HParams, il: usize) -> Result<Ffn<'a>> {
        let (e, ne) = (hp.n_embd, hp.n_expert);
        let n = |s: &str| format!("blk.{il}.{s}");
        let arch = hp.arch.name;
        for s in [
            "ffn_gate_exps.weight",
            "ffn_up_exps.weight",
            "ffn_down_exps.weight",
        ] {
            let Some(t) = self.file.tensor(&n(s)) else {
                continue;
            };
            let got = t.dims.get(2).copied().unwrap_or(1);
            if t.dims.len() != 3 || got != ne as u64 {
                return Err(Error::Invalid(format!(
                    "tensor {} holds {got} experts (shape {:?}) but {arch}.expert_count is {ne}",
                    n(s),
                    t.dims
                )));
            }
        }
        let router_name = n("ffn_gate_inp.weight");
        if let Some(t) = self.file.tensor(&router_name) {
            if t.dims != [e as u64, ne as u64] {
                return Err(Error::Invalid(format!(
                    "router {router_name} has shape {:?}, expected [{e}, {ne}] from \
                     {arch}.embedding_length and {arch}.expert_count",
                    t.dims
                )));
            }
        }
        let router = self.req(&router_name, &[e, ne])?;
        let n_ff = self.dim(&n("ffn_gate_exps.weight"), 1);
        let shared = match self.file.tensor(&n("ffn_up_shexp.weight")) {
            None => None,
            Some(_) => {
                let n_sh = self.dim(&n("ffn_up_shexp.weight"), 1);
                Some(Box::new(SharedExpert {
                    gate: self.req(&n("ffn_gate_shexp.weight"), &[e, n_sh])?,
                    up: self.req(&n("ffn_up_shexp.weight"), &[e, n_sh])?,
                    down: self.req(&n("ffn_down_shexp.weight"), &[n_sh, e])?,
                    gate_inp: self.opt_vec(&n("ffn_gate_inp_shexp.weight"), e)?,
                }))
            }
        };
        if hp.arch.shared_expert_gated && shared.as_ref().is_none_or(|s| s.gate_inp.is_none()) {
            return Err(Error::Invalid(format!(
                "{arch} layer {il} lacks its gated shared expert (blk.{il}.ffn_*_shexp, \
                 blk.{il}.ffn_gate_inp_shexp)"
            )));
        }
        Ok(Ffn::Moe {
            router,
            gate: self.req(&n("ffn_gate_exps.weight"), &[e, n_ff, ne])?,
            up: self.req(&n("ffn_up_exps.weight"), &[e, n_ff, ne])?,
            down: self.req(&n("ffn_down_exps.weight"), &[n_ff, e, ne])?,
            n_ff,
            shared,
            selection_bias: self.opt_vec(&n("exp_probs_b.bias"), ne)?,
            biases: if hp.arch.oai {
                Some(Box::new(ExpertBiases {
                    router: self.vec(&n("ffn_gate_inp.bias"), ne)?,
                    gate: self.req(&n("ffn_gate_exps.bias"), &[n_ff, ne])?.to_f32(),
                    up: self.req(&n("ffn_up_exps.bias"), &[n_ff, ne])?.to_f32(),
                    down: self.req(&n("ffn_down_exps.bias"), &[e, ne])?.to_f32(),
                }))
            } else {
                None
            },
        })
    }
}

impl<'a> Weights<'a> {
    /// Every weight matrix of the model (the output twice where it is the token embedding), so
    /// that a caller can put another version of one in its place (`quantize::adaptive` tries
    /// each tensor quantized this way, without writing a file).
    pub fn views_mut(&mut self) -> Vec<&mut TensorView<'a>> {
        let mut v: Vec<&mut TensorView<'a>> = vec![&mut self.token_embd, &mut self.output];
        for l in &mut self.layers {
            match &mut l.attn {
                Attn::Mha(a) => v.extend([&mut a.wq, &mut a.wk, &mut a.wv, &mut a.wo]),
                Attn::Mla(m) => {
                    match &mut m.q {
                        super::mla::MlaQuery::Direct(q) => v.push(q),
                        super::mla::MlaQuery::LowRank { a, b, .. } => v.extend([a, b]),
                    }
                    v.extend([&mut m.kv_a, &mut m.k_b, &mut m.v_b, &mut m.wo]);
                }
            }
            match &mut l.ffn {
                Ffn::Dense { gate, up, down } => v.extend([gate, up, down]),
                Ffn::Moe {
                    router,
                    gate,
                    up,
                    down,
                    shared,
                    ..
                } => {
                    v.extend([router, gate, up, down]);
                    if let Some(sh) = shared {
                        v.extend([&mut sh.gate, &mut sh.up, &mut sh.down]);
                    }
                }
            }
        }
        v
    }

    pub fn load(file: &'a GgufFile, hp: &HParams) -> Result<Weights<'a>> {
        let l = Loader { file };
        let (e, hd) = (hp.n_embd, hp.head_dim);
        let (q_dim, kv_dim) = (hp.n_head * hd, hp.n_head_kv * hd);
        let token_embd = l.req("token_embd.weight", &[e, hp.n_vocab])?;
        let output = l
            .opt("output.weight", &[e, hp.n_vocab])?
            .unwrap_or(token_embd);
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let ffn = if hp.is_moe() && il >= hp.routing.n_layer_dense_lead {
                l.experts(hp, il)?
            } else {
                let up = file.tensor(&n("ffn_up.weight"));
                let n_ff = up.and_then(|t| t.dims.get(1)).copied().unwrap_or(0) as usize;
                Ffn::Dense {
                    gate: l.req(&n("ffn_gate.weight"), &[e, n_ff])?,
                    up: l.req(&n("ffn_up.weight"), &[e, n_ff])?,
                    down: l.req(&n("ffn_down.weight"), &[n_ff, e])?,
                }
            };
            let attn = match &hp.mla {
                Some(mla) => Attn::Mla(MlaWeights::load(&l, hp, mla, il)?),
                None => Attn::Mha(AttnWeights {
                    wq: l.req(&n("attn_q.weight"), &[e, q_dim])?,
                    wk: l.req(&n("attn_k.weight"), &[e, kv_dim])?,
                    wv: l.req(&n("attn_v.weight"), &[e, kv_dim])?,
                    wo: l.req(&n("attn_output.weight"), &[q_dim, e])?,
                    bo: l.opt_vec(&n("attn_output.bias"), e)?,
                    bq: l.opt_vec(&n("attn_q.bias"), q_dim)?,
                    bk: l.opt_vec(&n("attn_k.bias"), kv_dim)?,
                    bv: l.opt_vec(&n("attn_v.bias"), kv_dim)?,
                    q_norm: l.opt_vec_either(&n("attn_q_norm.weight"), hd, q_dim)?,
                    k_norm: l.opt_vec_either(&n("attn_k_norm.weight"), hd, kv_dim)?,
                    sinks: if hp.arch.oai {
                        Some(l.vec(&n("attn_sinks.weight"), hp.n_head)?)
                    } else {
                        None
                    },
                }),
            };
            layers.push(LayerWeights {
                attn_norm: l.vec(&n("attn_norm.weight"), e)?,
                attn,
                post_attn_norm: match hp.arch.ffn_norm_tensor {
                    "post_attention_norm" => None,
                    _ => l.opt_vec(&n("post_attention_norm.weight"), e)?,
                },
                ffn_norm: l.vec(&n(&format!("{}.weight", hp.arch.ffn_norm_tensor)), e)?,
                ffn,
                post_ffn_norm: l.opt_vec(&n("post_ffw_norm.weight"), e)?,
            });
        }
        let rope_freqs = l.opt_vec("rope_freqs.weight", hp.n_rot / 2)?;
        if let Some(f) = &rope_freqs {
            if let Some(bad) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(Error::Invalid(format!(
                    "tensor rope_freqs.weight holds {bad}: frequency factors must be positive"
                )));
            }
        }
        Ok(Weights {
            token_embd,
            output_norm: l.vec("output_norm.weight", e)?,
            output,
            layers,
            rope_freqs: rope_freqs.map(Arc::from),
        })
    }

    /// Layer `il`'s RoPE: the model's settings with the file's frequency factors.
    pub fn rope(&self, hp: &HParams, il: usize) -> RopeParams {
        RopeParams {
            factors: self.rope_freqs.clone(),
            ..hp.rope_params(il)
        }
    }
}
