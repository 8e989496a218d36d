//! The tensors of a model, looked up by llama.cpp's names and checked against the shapes the
//! hyperparameters imply, borrowed from the memory map.

use super::hparams::HParams;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tensor::TensorView;

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
    },
}

pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: TensorView<'a>,
    pub wk: TensorView<'a>,
    pub wv: TensorView<'a>,
    pub wo: TensorView<'a>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn<'a>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub struct Weights<'a> {
    pub token_embd: TensorView<'a>,
    pub output_norm: Vec<f32>,
    /// The output projection, or the token embedding when the model ties them.
    pub output: TensorView<'a>,
    pub layers: Vec<LayerWeights<'a>>,
}

struct Loader<'a> {
    file: &'a GgufFile,
}

impl<'a> Loader<'a> {
    fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<TensorView<'a>>> {
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

    fn req(&self, name: &str, dims: &[usize]) -> Result<TensorView<'a>> {
        self.opt(name, dims)?.ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {name} is missing from {}",
                self.file.path().display()
            ))
        })
    }

    fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.req(name, &[n])?.to_f32())
    }

    fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        Ok(self.opt(name, &[n])?.map(|t| t.to_f32()))
    }
}

impl<'a> Weights<'a> {
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
            let ffn = if hp.arch.moe {
                let ne = hp.n_expert;
                let gate_info = file.tensor(&n("ffn_gate_exps.weight")).ok_or_else(|| {
                    Error::Invalid(format!("tensor {} is missing", n("ffn_gate_exps.weight")))
                })?;
                let n_ff = gate_info.dims.get(1).copied().unwrap_or(0) as usize;
                let router = l.req(&n("ffn_gate_inp.weight"), &[e, ne])?;
                Ffn::Moe {
                    router,
                    gate: l.req(&n("ffn_gate_exps.weight"), &[e, n_ff, ne])?,
                    up: l.req(&n("ffn_up_exps.weight"), &[e, n_ff, ne])?,
                    down: l.req(&n("ffn_down_exps.weight"), &[n_ff, e, ne])?,
                    n_ff,
                }
            } else {
                let up = file.tensor(&n("ffn_up.weight"));
                let n_ff = up.and_then(|t| t.dims.get(1)).copied().unwrap_or(0) as usize;
                Ffn::Dense {
                    gate: l.req(&n("ffn_gate.weight"), &[e, n_ff])?,
                    up: l.req(&n("ffn_up.weight"), &[e, n_ff])?,
                    down: l.req(&n("ffn_down.weight"), &[n_ff, e])?,
                }
            };
            layers.push(LayerWeights {
                attn_norm: l.vec(&n("attn_norm.weight"), e)?,
                wq: l.req(&n("attn_q.weight"), &[e, q_dim])?,
                wk: l.req(&n("attn_k.weight"), &[e, kv_dim])?,
                wv: l.req(&n("attn_v.weight"), &[e, kv_dim])?,
                wo: l.req(&n("attn_output.weight"), &[q_dim, e])?,
                bq: l.opt_vec(&n("attn_q.bias"), q_dim)?,
                bk: l.opt_vec(&n("attn_k.bias"), kv_dim)?,
                bv: l.opt_vec(&n("attn_v.bias"), kv_dim)?,
                q_norm: l.opt_vec(&n("attn_q_norm.weight"), hd)?,
                k_norm: l.opt_vec(&n("attn_k_norm.weight"), hd)?,
                post_attn_norm: l.opt_vec(&n("post_attention_norm.weight"), e)?,
                ffn_norm: l.vec(&n("ffn_norm.weight"), e)?,
                ffn,
                post_ffn_norm: l.opt_vec(&n("post_ffw_norm.weight"), e)?,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm: l.vec("output_norm.weight", e)?,
            output,
            layers,
        })
    }
}
