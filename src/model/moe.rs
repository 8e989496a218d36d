//! The routed Mixture-of-Experts feed-forward. Each token's router picks its top-k experts;
//! tokens are then grouped by expert so each selected expert's rows are read once per batch (one
//! matrix product per active expert and projection), and experts no token picked are never read.
//!
//! Two paths compute the same thing. [`experts_one_by_one`], the reference, gathers each expert's
//! rows and runs its three products through `linear` (the f32 reference products under
//! `DSRUN_REFERENCE=1`). [`experts_batched`], the default, is equal to it bit for bit (tested):
//! the layer's input is quantized once, not once per expert and projection; products read their
//! tokens' quantized rows in place (no gathered copy); the gate and up products of every active
//! expert go to the thread pool as one job, and the down products as another, so that decoding,
//! with four 256 x 256 experts per token on the tiny Qwen3-MoE or eight 768 x 2048 ones on the
//! Qwen3-30B-A3B shape, keeps both cores busy with tasks of rows across all experts; and the
//! stacked buffers live in [`MoeState`] between layers and calls.
//!
//! CPU time, one thread, before and after this file's batching (with the quantizer's rounding
//! fix, the pool and the 8-block scale loads of the same series), tiny Qwen3-MoE Q8_0, `perf
//! stat -e task-clock dsrun bench -m M -t 1` including model load and warm-up, busy machine
//! (load 7 to 17), 2026-11-29: `-p 512 -n 0 -r 3` 677 ms → 505 ms; `-p 0 -n 128 -r 5` 478 ms →
//! 350 ms. Wall-clock figures side by side with llama.cpp are in README.md (MoE speed).

use super::activations::{self, linear, linear_many, observe_expert};
use super::arch::Gating;
use super::forward::act_fn;
use super::hparams::HParams;
use super::moe_select::{select, MoeBuffers, MoeState};
use super::routing::{route, route_with, sigmoid, RouteParams};
use super::weights::{ExpertBiases, Ffn, SharedExpert};
use crate::kernels::activation::{glu, silu, swiglu_oai};
use crate::kernels::matmul::dot;
use crate::kernels::qdot::{act_kind, qmatmul_batch, quantize_acts, Product, Tokens};
use crate::kernels::softmax::softmax;
use crate::tensor::TensorView;

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
    let experts = Experts {
        gate,
        up,
        down,
        n_ff,
        biases: biases.as_deref(),
        act: (!hp.arch.oai).then(|| act_fn(hp.arch.ffn_act)),
    };
    run_experts(&experts, h, n, e, &routed, &mut moe.buffers, &mut out);
    if let Some(sh) = shared {
        shared_expert(hp, sh, h, n, &mut out);
    }
    out
}

/// Adds each routed expert's weighted output to `out` (n, n_embd): the batched path, or the
/// reference under `DSRUN_REFERENCE=1` and while `dsrun imatrix` watches each expert's input
/// (the reference path gathers it anyway).
fn run_experts(
    ex: &Experts,
    h: &[f32],
    n: usize,
    e: usize,
    routed: &[Vec<(usize, f32)>],
    buffers: &mut MoeBuffers,
    out: &mut [f32],
) {
    if crate::kernels::reference_matmul() || activations::observing() {
        experts_one_by_one(ex, h, e, routed, out);
    } else {
        experts_batched(ex, h, n, e, routed, buffers, out);
    }
}

/// The routed experts of stacked SwiGLU tensors without biases, for a caller that routed the
/// tokens itself (the GPU with `--n-cpu-moe`): `routed[x]` lists expert x's (token, weight);
/// returns (n, n_embd), as a layer's routed experts compute it.
pub(crate) fn swiglu_experts(
    (gate, up, down): (&TensorView, &TensorView, &TensorView),
    n_ff: usize,
    h: &[f32],
    e: usize,
    routed: &[Vec<(usize, f32)>],
) -> Vec<f32> {
    let n = h.len() / e;
    let ex = Experts {
        gate,
        up,
        down,
        n_ff,
        biases: None,
        act: Some(silu),
    };
    let mut out = vec![0.0f32; n * e];
    run_experts(&ex, h, n, e, routed, &mut MoeBuffers::default(), &mut out);
    out
}

/// The stacked experts of a layer.
struct Experts<'a, 'w> {
    gate: &'a TensorView<'w>,
    up: &'a TensorView<'w>,
    down: &'a TensorView<'w>,
    n_ff: usize,
    biases: Option<&'a ExpertBiases>,
    /// The GLU's activation; `None` for gpt-oss's clamped SwiGLU.
    act: Option<fn(f32) -> f32>,
}

impl Experts<'_, '_> {
    /// `g = act(g) * u` for rows of expert `x` (gate and up biases first, where there are).
    fn glu(&self, x: usize, g: &mut [f32], u: &mut [f32]) {
        let n_ff = self.n_ff;
        if let Some(b) = self.biases {
            add_rows(g, &b.gate[x * n_ff..(x + 1) * n_ff]);
            add_rows(u, &b.up[x * n_ff..(x + 1) * n_ff]);
        }
        match self.act {
            Some(act) => glu(g, u, act),
            None => swiglu_oai(g, u),
        }
    }

    fn add_down_bias(&self, x: usize, d: &mut [f32], e: usize) {
        if let Some(b) = self.biases {
            add_rows(d, &b.down[x * e..(x + 1) * e]);
        }
    }
}

/// The reference path: each expert in turn gathers its tokens' rows and runs three plain
/// products (`linear`), then its weighted output is added to `out` (n, n_embd).
fn experts_one_by_one(
    ex: &Experts,
    h: &[f32],
    e: usize,
    routed: &[Vec<(usize, f32)>],
    out: &mut [f32],
) {
    let n_ff = ex.n_ff;
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
        let ne = routed.len();
        observe_expert(ex.gate, x, ne, &hx, m);
        observe_expert(ex.up, x, ne, &hx, m);
        crate::kernels::linear(&ex.gate.rows(x * n_ff, n_ff), &hx, m, &mut g);
        crate::kernels::linear(&ex.up.rows(x * n_ff, n_ff), &hx, m, &mut u);
        ex.glu(x, &mut g, &mut u);
        let mut d = vec![0.0f32; m * e];
        observe_expert(ex.down, x, ne, &g, m);
        crate::kernels::linear(&ex.down.rows(x * e, e), &g, m, &mut d);
        ex.add_down_bias(x, &mut d, e);
        for (i, &(t, wt)) in toks.iter().enumerate() {
            for (o, &v) in out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&d[i * e..(i + 1) * e])
            {
                *o += wt * v;
            }
        }
    }
}

/// The fast path, equal to [`experts_one_by_one`] bit for bit: `h` (n, n_embd) is quantized
/// once (not once per expert and projection), each expert's products read its tokens' rows in
/// place, the gate and up products of all active experts are one parallel job and their down
/// products another (so decode's four small experts keep two threads busy), and the expert
/// outputs are stacked in one buffer, (sum of tokens per expert, n_embd).
fn experts_batched(
    ex: &Experts,
    h: &[f32],
    n: usize,
    e: usize,
    routed: &[Vec<(usize, f32)>],
    buffers: &mut MoeBuffers,
    out: &mut [f32],
) {
    let n_ff = ex.n_ff;
    // Active experts, their token lists, and where their rows start in the stacked buffers.
    let active: Vec<usize> = (0..routed.len())
        .filter(|&x| !routed[x].is_empty())
        .collect();
    let lists: Vec<Vec<usize>> = active
        .iter()
        .map(|&x| routed[x].iter().map(|&(t, _)| t).collect())
        .collect();
    let mut starts = Vec::with_capacity(active.len() + 1);
    starts.push(0);
    for l in &lists {
        starts.push(starts.last().unwrap() + l.len());
    }
    let total = starts[active.len()];

    let acts_g = quantize_acts(ex.gate.ty, h, n, e);
    let acts_u_own;
    let acts_u = if act_kind(ex.up.ty) == acts_g.kind() {
        &acts_g
    } else {
        acts_u_own = quantize_acts(ex.up.ty, h, n, e);
        &acts_u_own
    };
    // g, u: (total, n_ff); d: (total, n_embd)
    let (g, u, d) = buffers.get(total * n_ff, total * e);
    {
        let mut products = Vec::with_capacity(2 * active.len());
        let mut g_rest = &mut g[..];
        let mut u_rest = &mut u[..];
        for (i, &x) in active.iter().enumerate() {
            let rows = lists[i].len() * n_ff;
            let (gx, gr) = g_rest.split_at_mut(rows);
            let (ux, ur) = u_rest.split_at_mut(rows);
            (g_rest, u_rest) = (gr, ur);
            let tokens = Tokens::List(&lists[i]);
            products.push(Product {
                w: ex.gate.rows(x * n_ff, n_ff),
                acts: &acts_g,
                tokens,
                out: gx,
            });
            products.push(Product {
                w: ex.up.rows(x * n_ff, n_ff),
                acts: acts_u,
                tokens,
                out: ux,
            });
        }
        qmatmul_batch(&mut products);
    }
    for (i, &x) in active.iter().enumerate() {
        let r = starts[i] * n_ff..starts[i + 1] * n_ff;
        ex.glu(x, &mut g[r.clone()], &mut u[r]);
    }

    let acts_d = quantize_acts(ex.down.ty, g, total, n_ff);
    {
        let mut products = Vec::with_capacity(active.len());
        let mut d_rest = &mut d[..];
        for (i, &x) in active.iter().enumerate() {
            let (dx, dr) = d_rest.split_at_mut(lists[i].len() * e);
            d_rest = dr;
            products.push(Product {
                w: ex.down.rows(x * e, e),
                acts: &acts_d,
                tokens: Tokens::Range(starts[i], starts[i + 1]),
                out: dx,
            });
        }
        qmatmul_batch(&mut products);
    }
    for (i, &x) in active.iter().enumerate() {
        let dx = &mut d[starts[i] * e..starts[i + 1] * e];
        ex.add_down_bias(x, dx, e);
        for (j, &(t, wt)) in routed[x].iter().enumerate() {
            for (o, &v) in out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&dx[j * e..(j + 1) * e])
            {
                *o += wt * v;
            }
        }
    }
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
    linear_many(h, n, &mut [(&sh.gate, &mut g), (&sh.up, &mut u)]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::GgmlType;

    /// `n_rows` rows of `k` random values encoded as `ty`.
    fn stacked(ty: GgmlType, k: usize, n_rows: usize, rng: &mut Rng) -> Vec<u8> {
        let rb = ty.row_bytes(k as u64).unwrap() as usize;
        let mut b = vec![0u8; n_rows * rb];
        crate::tensor::quants::quantize(ty, &rng.vec(n_rows * k, 1.0), &mut b).unwrap();
        b
    }

    fn view<'a>(
        name: &'static str,
        ty: GgmlType,
        k: usize,
        n_rows: usize,
        data: &'a [u8],
    ) -> TensorView<'a> {
        TensorView {
            name,
            ty,
            n_cols: k,
            n_rows,
            row_bytes: ty.row_bytes(k as u64).unwrap() as usize,
            data,
        }
    }

    /// The batched experts equal the one-by-one reference bit for bit: decode (one token) and a
    /// batch, 1 and 2 threads, an unused expert, mixed weight types (two activation kinds),
    /// gpt-oss's biases and clamped SwiGLU.
    #[test]
    fn batched_experts_equal_one_by_one() {
        let mut rng = Rng::new(11);
        let (e, n_ff, ne) = (96, 64, 5);
        for (ty_gu, ty_up, ty_d, oai) in [
            (GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0, false),
            (GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F32, true),
        ] {
            let gb = stacked(ty_gu, e, ne * n_ff, &mut rng);
            let ub = stacked(ty_up, e, ne * n_ff, &mut rng);
            let db = stacked(ty_d, n_ff, ne * e, &mut rng);
            let (gate, up, down) = (
                view("gate", ty_gu, e, ne * n_ff, &gb),
                view("up", ty_up, e, ne * n_ff, &ub),
                view("down", ty_d, n_ff, ne * e, &db),
            );
            let biases = ExpertBiases {
                router: vec![0.0; ne],
                gate: rng.vec(ne * n_ff, 0.5),
                up: rng.vec(ne * n_ff, 0.5),
                down: rng.vec(ne * e, 0.5),
            };
            let ex = Experts {
                gate: &gate,
                up: &up,
                down: &down,
                n_ff,
                biases: oai.then_some(&biases),
                act: (!oai).then_some(silu as fn(f32) -> f32),
            };
            // Kept across calls: results must not depend on what the buffers held. With 64
            // tokens an expert gets 16 or more, and its products go through the GEMM.
            let mut buffers = MoeBuffers::default();
            for n in [13, 1, 64, 13] {
                let h = rng.vec(n * e, 1.0);
                // Two experts per token, expert 3 never.
                let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
                for t in 0..n {
                    let a = [0, 1, 2, 4][rng.below(4)];
                    let b = [0, 1, 2, 4]
                        .into_iter()
                        .find(|&x| x != a && rng.below(2) == 0);
                    for x in [Some(a), b].into_iter().flatten() {
                        routed[x].push((t, rng.symmetric()));
                    }
                }
                let mut want = vec![0.0f32; n * e];
                experts_one_by_one(&ex, &h, e, &routed, &mut want);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![0.0f32; n * e];
                    pool.install(|| {
                        experts_batched(&ex, &h, n, e, &routed, &mut buffers, &mut got)
                    });
                    assert_eq!(got, want, "{ty_gu} {ty_up} {ty_d} n={n} threads={threads}");
                }
            }
        }
    }
}
