//! DeepSeek's multi-head latent attention (MLA), in the absorbed form llama.cpp runs and its
//! converter writes: keys and values of all heads are one latent vector per token, so the cache
//! holds one "head" of `kv_lora_rank + n_rot` per token (the normalised latent, then the shared
//! rotary key), and the per-head up-projections are folded into the query (`attn_k_b`) and the
//! output (`attn_v_b`).
//!
//! Per token, shapes for one head h:
//!   q_h      = (attn_q · x) or attn_q_b · norm(attn_q_a · x)     (head_dim_k = nope + n_rot)
//!   c, k_pe  = attn_kv_a_mqa · x; c = norm(c)                     (kv_lora_rank), (n_rot)
//!   score    = [attn_k_b_h · q_nope_h, rope(q_pe_h)] · [c_j, rope(k_pe_j)] / sqrt(head_dim_k)
//!   o_h      = attn_v_b_h · Σ_j softmax(score)_j c_j               (head_dim_v)
//!   out      = attn_output · [o_1 … o_n_head]

use super::activations::linear;
use super::hparams::{HParams, Mla};
use super::kv_cache::KvCache;
use super::weights::Loader;
use crate::error::Result;
use crate::kernels::matmul::dot;
use crate::kernels::norm::{rms_norm, rms_norm_rows};
use crate::kernels::softmax::softmax;
use crate::tensor::TensorView;

/// The query projection: one matrix (DeepSeek-V2-Lite) or a low-rank pair with a norm between.
pub enum MlaQuery<'a> {
    Direct(TensorView<'a>),
    LowRank {
        a: TensorView<'a>,
        norm: Vec<f32>,
        b: TensorView<'a>,
    },
}

pub struct MlaWeights<'a> {
    /// (n_head * head_dim_k) rows.
    pub q: MlaQuery<'a>,
    /// `attn_kv_a_mqa`: (kv_lora_rank + n_rot, n_embd).
    pub kv_a: TensorView<'a>,
    pub kv_a_norm: Vec<f32>,
    /// `attn_k_b`: per head (kv_lora_rank, nope) — maps a query's non-rotary part to the latent.
    pub k_b: TensorView<'a>,
    /// `attn_v_b`: per head (head_dim_v, kv_lora_rank).
    pub v_b: TensorView<'a>,
    /// (n_embd, n_head * head_dim_v).
    pub wo: TensorView<'a>,
}

impl<'a> MlaWeights<'a> {
    pub(super) fn load(l: &Loader<'a>, hp: &HParams, m: &Mla, il: usize) -> Result<Self> {
        let n = |s: &str| format!("blk.{il}.{s}");
        let (e, nh, r) = (hp.n_embd, hp.n_head, m.kv_lora_rank);
        let nope = m.head_dim_k - hp.n_rot;
        let q = if m.q_lora_rank > 0 {
            MlaQuery::LowRank {
                a: l.req(&n("attn_q_a.weight"), &[e, m.q_lora_rank])?,
                norm: l.vec(&n("attn_q_a_norm.weight"), m.q_lora_rank)?,
                b: l.req(&n("attn_q_b.weight"), &[m.q_lora_rank, nh * m.head_dim_k])?,
            }
        } else {
            MlaQuery::Direct(l.req(&n("attn_q.weight"), &[e, nh * m.head_dim_k])?)
        };
        Ok(MlaWeights {
            q,
            kv_a: l.req(&n("attn_kv_a_mqa.weight"), &[e, r + hp.n_rot])?,
            kv_a_norm: l.vec(&n("attn_kv_a_norm.weight"), r)?,
            k_b: l.req(&n("attn_k_b.weight"), &[nope, r, nh])?,
            v_b: l.req(&n("attn_v_b.weight"), &[r, m.head_dim_v, nh])?,
            wo: l.req(&n("attn_output.weight"), &[nh * m.head_dim_v, e])?,
        })
    }
}

/// Latent attention for a batch: `h` is (n, n_embd); returns (n, n_embd).
pub fn attention(
    hp: &HParams,
    w: &MlaWeights,
    kv: &mut KvCache,
    il: usize,
    h: &[f32],
    n: usize,
    pos0: usize,
) -> Vec<f32> {
    let m = hp
        .mla
        .as_ref()
        .expect("MLA weights come with MLA hyperparameters");
    let (nh, r, nr) = (hp.n_head, m.kv_lora_rank, hp.n_rot);
    let (dk, dv) = (m.head_dim_k, m.head_dim_v);
    let nope = dk - nr;
    let rope = hp.rope_params(il);

    // q: (n, nh * dk)
    let mut q = vec![0.0f32; n * nh * dk];
    match &w.q {
        MlaQuery::Direct(wq) => linear(wq, h, n, &mut q),
        MlaQuery::LowRank { a, norm, b } => {
            let mut qa = vec![0.0f32; n * a.n_rows];
            linear(a, h, n, &mut qa);
            rms_norm_rows(&mut qa, norm, hp.rms_eps);
            linear(b, &qa, n, &mut q);
        }
    }
    // ckv: (n, r + nr) = [norm(latent) | rope(k_pe)], the cached row.
    let d = r + nr;
    let mut ckv = vec![0.0f32; n * d];
    linear(&w.kv_a, h, n, &mut ckv);
    for (t, row) in ckv.chunks_exact_mut(d).enumerate() {
        rms_norm(&mut row[..r], &w.kv_a_norm, hp.rms_eps);
        rope.apply(&mut row[r..], nr, pos0 + t);
    }
    // Absorbed queries qf: (n, nh, d) = [attn_k_b_h · q_nope | rope(q_pe)].
    let mut qf = vec![0.0f32; n * nh * d];
    for head in 0..nh {
        let q_nope: Vec<f32> = (0..n)
            .flat_map(|t| q[(t * nh + head) * dk..][..nope].iter().copied())
            .collect();
        let mut absorbed = vec![0.0f32; n * r];
        crate::kernels::linear(&w.k_b.rows(head * r, r), &q_nope, n, &mut absorbed);
        for t in 0..n {
            let dst = &mut qf[(t * nh + head) * d..][..d];
            dst[..r].copy_from_slice(&absorbed[t * r..(t + 1) * r]);
            dst[r..].copy_from_slice(&q[(t * nh + head) * dk + nope..][..nr]);
            rope.apply(&mut dst[r..], nr, pos0 + t);
        }
    }
    // V is the latent part of the cached row; it is stored twice to keep one cache layout.
    kv.store(il, pos0, &ckv, &ckv);
    let seen = (pos0 + n) * d;
    let mut kc = vec![0.0f32; seen];
    kv.widen_k(il, &mut kc);

    let scale = hp.mla_score_scale(dk);
    // o: per head (n, r), the softmax-weighted latents.
    let mut out = vec![0.0f32; n * nh * dv];
    for head in 0..nh {
        let mut o = vec![0.0f32; n * r];
        for t in 0..n {
            let qv = &qf[(t * nh + head) * d..][..d];
            let pos = pos0 + t;
            let mut s: Vec<f32> = (0..=pos)
                .map(|j| dot(qv, &kc[j * d..(j + 1) * d]) * scale)
                .collect();
            softmax(&mut s);
            let ot = &mut o[t * r..(t + 1) * r];
            for (p, j) in s.iter().zip(0..=pos) {
                for (a, &b) in ot.iter_mut().zip(&kc[j * d..j * d + r]) {
                    *a += p * b;
                }
            }
        }
        let mut oh = vec![0.0f32; n * dv];
        crate::kernels::linear(&w.v_b.rows(head * dv, dv), &o, n, &mut oh);
        for t in 0..n {
            out[(t * nh + head) * dv..][..dv].copy_from_slice(&oh[t * dv..(t + 1) * dv]);
        }
    }
    let mut res = vec![0.0f32; n * hp.n_embd];
    linear(&w.wo, &out, n, &mut res);
    res
}
