//! The routed Mixture-of-Experts feed-forward (reference path). Each token's router picks its
//! top-k experts; tokens are then grouped by expert so each selected expert's rows are read once
//! per batch, and experts no token picked are never read.

use super::activations::{linear, observe_expert};
use super::arch::Gating;
use super::forward::act_fn;
use super::hparams::HParams;
use super::moe_select::{select, MoeState};
use super::routing::{route, route_with, sigmoid, RouteParams};
use super::weights::{Ffn, SharedExpert};
use crate::kernels;
use crate::kernels::activation::{glu, swiglu_oai};
use crate::kernels::matmul::dot;
use crate::kernels::softmax::softmax;

/// Top-k by probability, highest first; ties go to the lower expert id.
pub fn top_k(probs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `h` is (n, n_embd); returns (n, n_embd).
/// `moe` chooses how many experts each token gets (`moe_select`) and counts them.
pub fn moe_ffn(
    hp: &HParams,
    ffn: &Ffn,
    h: &[f32],
    n: usize,
    il: usize,
    moe: &mut MoeState,
) -> Vec<f32> {
    let Ffn::Moe {
        router,
        gate,
        up,
        down,
        n_ff,
        shared,
        selection_bias,
        biases,
    } = ffn
    else {
        unreachable!("moe_ffn is called for MoE layers only");
    };
    let (e, n_ff, ne) = (hp.n_embd, *n_ff, hp.n_expert);
    let mut logits = vec![0.0f32; n * ne];
    linear(router, h, n, &mut logits);
    if let Some(b) = biases {
        for row in logits.chunks_exact_mut(ne) {
            row.iter_mut().zip(&b.router).for_each(|(v, b)| *v += b);
        }
    }

    // Per expert: the tokens routed to it and their weights.
    let rp = RouteParams {
        routing: hp.routing.routing,
        k: hp.n_expert_used,
        selection_bias: selection_bias.as_deref(),
        scale: hp.routing.scale,
        n_group: hp.routing.n_group,
        n_group_used: hp.routing.n_group_used,
    };
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
    for t in 0..n {
        let l = &logits[t * ne..(t + 1) * ne];
        let chosen = if moe.config.is_model_default() && moe.stats.trace.is_none() {
            let r = route(&rp, l);
            moe.stats.count(il, r.len());
            r
        } else {
            // The selection rule reads the scores as probabilities: softmax where the gating
            // softmaxes only after choosing, masked groups (-inf) and negatives as zero.
            let gating = hp.routing.routing.gating;
            let default = moe.config.is_model_default();
            route_with(&rp, l, &mut |sel| {
                let mut probs = sel.to_vec();
                if gating == Gating::TopKThenSoftmax {
                    softmax(&mut probs);
                } else {
                    probs.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                let ids = if default {
                    top_k(sel, rp.k)
                } else {
                    select(&probs, il, rp.k, &moe.config, &mut moe.scratch).to_vec()
                };
                moe.stats.record(il, &probs, &ids);
                ids
            })
        };
        for (x, wt) in chosen {
            routed[x].push((t, wt));
        }
    }

    let mut out = vec![0.0f32; n * e];
    for (x, toks) in routed.iter().enumerate() {
        if toks.is_empty() {
            continue;
        }
        let m = toks.len();
        let mut hx = Vec::with_capacity(m * e);
        for &(t, _) in toks {
            hx.extend_from_slice(&h[t * e..(t + 1) * e]);
        }
        let mut g = vec![0.0f32; m * n_ff];
        let mut u = vec![0.0f32; m * n_ff];
        observe_expert(gate, x, ne, &hx, m);
        observe_expert(up, x, ne, &hx, m);
        kernels::linear(&gate.rows(x * n_ff, n_ff), &hx, m, &mut g);
        kernels::linear(&up.rows(x * n_ff, n_ff), &hx, m, &mut u);
        if let Some(b) = biases {
            add_rows(&mut g, &b.gate[x * n_ff..(x + 1) * n_ff]);
            add_rows(&mut u, &b.up[x * n_ff..(x + 1) * n_ff]);
        }
        if hp.arch.oai {
            swiglu_oai(&mut g, &u);
        } else {
            glu(&mut g, &u, act_fn(hp.arch.ffn_act));
        }
        let mut d = vec![0.0f32; m * e];
        observe_expert(down, x, ne, &g, m);
        kernels::linear(&down.rows(x * e, e), &g, m, &mut d);
        if let Some(b) = biases {
            add_rows(&mut d, &b.down[x * e..(x + 1) * e]);
        }
        for (i, &(t, wt)) in toks.iter().enumerate() {
            for (o, &v) in out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&d[i * e..(i + 1) * e])
            {
                *o += wt * v;
            }
        }
    }
    if let Some(sh) = shared {
        shared_expert(hp, sh, h, n, &mut out);
    }
    out
}

/// Adds `b` to every row of `x`.
fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// Adds the shared expert's output (gated by `sigmoid(gate_inp · x)` where it has a gate) to
/// `out` (n, n_embd).
fn shared_expert(hp: &HParams, sh: &SharedExpert, h: &[f32], n: usize, out: &mut [f32]) {
    let (e, n_ff) = (hp.n_embd, sh.up.n_rows);
    let mut g = vec![0.0f32; n * n_ff];
    let mut u = vec![0.0f32; n * n_ff];
    linear(&sh.gate, h, n, &mut g);
    linear(&sh.up, h, n, &mut u);
    glu(&mut g, &u, act_fn(hp.arch.ffn_act));
    let mut d = vec![0.0f32; n * e];
    linear(&sh.down, &g, n, &mut d);
    for t in 0..n {
        let x = &h[t * e..(t + 1) * e];
        let gate = sh.gate_inp.as_ref().map_or(1.0, |w| sigmoid(dot(w, x)));
        for (o, &v) in out[t * e..(t + 1) * e]
            .iter_mut()
            .zip(&d[t * e..(t + 1) * e])
        {
            *o += gate * v;
        }
    }
}
