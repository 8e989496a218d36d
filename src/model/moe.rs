//! The routed Mixture-of-Experts feed-forward (reference path). Each token's router picks its
//! top-k experts; tokens are then grouped by expert so each selected expert's rows are read once
//! per batch, and experts no token picked are never read.

use super::forward::act_fn;
use super::hparams::HParams;
use super::moe_select::{select, MoeState};
use super::weights::Ffn;
use crate::kernels::activation::glu;
use crate::kernels::linear;
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
    } = ffn
    else {
        unreachable!("moe_ffn is called for MoE layers only");
    };
    let (e, n_ff, ne) = (hp.n_embd, *n_ff, hp.n_expert);
    let mut logits = vec![0.0f32; n * ne];
    linear(router, h, n, &mut logits);

    // Per expert: the tokens routed to it and their weights.
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
    for t in 0..n {
        let probs = &mut logits[t * ne..(t + 1) * ne];
        softmax(probs);
        let sel = select(probs, il, hp.n_expert_used, &moe.config, &mut moe.scratch);
        moe.stats.record(il, probs, sel);
        let sum: f32 = sel.iter().map(|&x| probs[x]).sum();
        for &x in sel {
            routed[x].push((t, probs[x] / sum));
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
        linear(&gate.rows(x * n_ff, n_ff), &hx, m, &mut g);
        linear(&up.rows(x * n_ff, n_ff), &hx, m, &mut u);
        glu(&mut g, &u, act_fn(hp.arch.ffn_act));
        let mut d = vec![0.0f32; m * e];
        linear(&down.rows(x * e, e), &g, m, &mut d);
        for (i, &(t, wt)) in toks.iter().enumerate() {
            for (o, &v) in out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&d[i * e..(i + 1) * e])
            {
                *o += wt * v;
            }
        }
    }
    out
}
