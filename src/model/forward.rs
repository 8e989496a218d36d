//! The reference forward pass, one function that reads top to bottom for every architecture of
//! the table: embed, then per layer norm → QKV → (QK norm) → RoPE → attention → (post-norm) →
//! residual → norm → FFN or MoE → (post-norm) → residual; then the output norm and projection.
//! Activations are f32; a batch of tokens goes through each weight matrix together.

use super::activations::{linear, linear_many};
use super::arch::FfnAct;
use super::hparams::HParams;
use super::kv_cache::KvCache;
use super::kv_window;
use super::mla;
use super::moe::moe_ffn;
use super::moe_select::MoeState;
use super::weights::{Attn, AttnWeights, Ffn, Weights};
use crate::kernels;
use crate::kernels::activation::{gelu_f16_table, glu, glu_gelu_f16, silu};
use crate::kernels::attention::{AttnInput, Rows};
use crate::kernels::norm::rms_norm_rows;
use crate::kernels::rope::RopeParams;

fn add_bias(x: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

/// Granite's multipliers; 1 leaves `x` untouched, bit for bit.
fn scale(x: &mut [f32], s: f32) {
    if s != 1.0 {
        x.iter_mut().for_each(|v| *v *= s);
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Runs `tokens` at positions `kv.n_past..` through the model, appends their K/V to the cache,
/// and returns logits (n_out, n_vocab): for every token if `all_logits`, else for the last one.
pub fn forward(
    hp: &HParams,
    w: &Weights,
    kv: &mut KvCache,
    tokens: &[u32],
    all_logits: bool,
) -> Vec<f32> {
    forward_moe(hp, w, kv, tokens, all_logits, &mut MoeState::default())
}

/// `forward` with the experts per token chosen by `moe.config` and counted in `moe.stats`.
pub fn forward_moe(
    hp: &HParams,
    w: &Weights,
    kv: &mut KvCache,
    tokens: &[u32],
    all_logits: bool,
    moe: &mut MoeState,
) -> Vec<f32> {
    let n = tokens.len();
    let e = hp.n_embd;
    let pos0 = kv.n_past;
    assert!(pos0 + n <= kv.n_ctx, "the caller checks the context length");

    let mut x = embed(hp, w, tokens);
    for il in 0..w.layers.len() {
        layer(hp, w, kv, il, &mut x, pos0, moe);
    }
    kv.n_past = pos0 + n;

    // Output: only the rows whose logits are wanted.
    let (first, n_out) = if all_logits { (0, n) } else { (n - 1, 1) };
    let mut xo = x[first * e..].to_vec();
    rms_norm_rows(&mut xo, &w.output_norm, hp.rms_eps);
    let mut logits = vec![0.0f32; n_out * hp.n_vocab];
    linear(&w.output, &xo, n_out, &mut logits);
    scale(&mut logits, 1.0 / hp.scales.logit);
    logits
}

/// The embedded rows of `tokens` (n, n_embd), scaled as the architecture asks.
pub fn embed(hp: &HParams, w: &Weights, tokens: &[u32]) -> Vec<f32> {
    let e = hp.n_embd;
    let mut x = vec![0.0f32; tokens.len() * e];
    for (t, &tok) in tokens.iter().enumerate() {
        w.token_embd
            .dequantize_row(tok as usize, &mut x[t * e..(t + 1) * e]);
    }
    if hp.arch.embd_scale {
        let s = (e as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= s);
    }
    scale(&mut x, hp.scales.embedding);
    x
}

/// Layer `il` on the residual stream `x` (n, n_embd) of tokens at positions `pos0..`: their K/V
/// go into the cache (whose `n_past` the caller advances after the last layer).
pub fn layer(
    hp: &HParams,
    w: &Weights,
    kv: &mut KvCache,
    il: usize,
    x: &mut [f32],
    pos0: usize,
    moe: &mut MoeState,
) {
    let e = hp.n_embd;
    let n = x.len() / e;
    let lw = &w.layers[il];
    let mut h = x.to_vec();
    rms_norm_rows(&mut h, &lw.attn_norm, hp.rms_eps);
    let mut attn_out = match &lw.attn {
        Attn::Mha(a) => attention(hp, a, w.rope(hp, il), kv, il, &h, pos0),
        Attn::Mla(m) => mla::attention(hp, m, kv, il, &h, n, pos0),
    };
    if let Some(pn) = &lw.post_attn_norm {
        rms_norm_rows(&mut attn_out, pn, hp.rms_eps);
    }
    scale(&mut attn_out, hp.scales.residual);
    add(x, &attn_out);

    let mut h = x.to_vec();
    rms_norm_rows(&mut h, &lw.ffn_norm, hp.rms_eps);
    let mut ffn_out = match &lw.ffn {
        Ffn::Dense { gate, up, down } => {
            let n_ff = gate.n_rows;
            let mut g = vec![0.0f32; n * n_ff];
            let mut u = vec![0.0f32; n * n_ff];
            linear_many(&h, n, &mut [(gate, &mut g), (up, &mut u)]);
            match hp.arch.ffn_act {
                FfnAct::Gelu => glu_gelu_f16(&mut g, &u),
                act => glu(&mut g, &u, act_fn(act)),
            }
            let mut out = vec![0.0f32; n * e];
            linear(down, &g, n, &mut out);
            out
        }
        Ffn::Moe { .. } => moe_ffn(hp, &lw.ffn, &h, n, il, moe),
    };
    if let Some(pn) = &lw.post_ffn_norm {
        rms_norm_rows(&mut ffn_out, pn, hp.rms_eps);
    }
    scale(&mut ffn_out, hp.scales.residual);
    add(x, &ffn_out);
}

pub fn act_fn(a: FfnAct) -> fn(f32) -> f32 {
    match a {
        FfnAct::Silu => silu,
        FfnAct::Gelu => gelu_f16_table,
    }
}

/// Self-attention for a batch: projections, QK norm, RoPE, cache update, causal (and windowed)
/// softmax attention, output projection. `h` is (n, n_embd); returns (n, n_embd).
fn attention(
    hp: &HParams,
    lw: &AttnWeights,
    rope: RopeParams,
    kv: &mut KvCache,
    il: usize,
    h: &[f32],
    pos0: usize,
) -> Vec<f32> {
    let n = h.len() / hp.n_embd;
    let hd = hp.head_dim;
    let (q_dim, kv_dim) = (hp.n_head * hd, hp.n_head_kv * hd);
    let mut q = vec![0.0f32; n * q_dim];
    let mut k = vec![0.0f32; n * kv_dim];
    let mut v = vec![0.0f32; n * kv_dim];
    linear_many(
        h,
        n,
        &mut [(&lw.wq, &mut q), (&lw.wk, &mut k), (&lw.wv, &mut v)],
    );
    add_bias(&mut q, &lw.bq);
    add_bias(&mut k, &lw.bk);
    add_bias(&mut v, &lw.bv);
    if let Some(qn) = &lw.q_norm {
        rms_norm_rows(&mut q, qn, hp.rms_eps);
    }
    if let Some(kn) = &lw.k_norm {
        rms_norm_rows(&mut k, kn, hp.rms_eps);
    }
    let swa = hp.is_swa_layer(il);
    if kv.is_stream(il) {
        // --kv-window: sinks, a ring and a summary, with positions of its own (kv_window.rs).
        let mut out = vec![0.0f32; n * q_dim];
        let inp = kv_window::StreamInput {
            q: &q,
            k: &k,
            v: &v,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hd,
            rope: &rope,
            scale: hp.scales.attention.unwrap_or(1.0 / (hd as f32).sqrt()),
            head_sinks: lw.sinks.as_deref(),
            pos0,
        };
        kv_window::attend(kv, il, &inp, &mut out);
        let mut res = vec![0.0f32; n * hp.n_embd];
        linear(&lw.wo, &out, n, &mut res);
        add_bias(&mut res, &lw.bo);
        return res;
    }
    for t in 0..n {
        rope.apply(&mut q[t * q_dim..(t + 1) * q_dim], hd, pos0 + t);
        rope.apply(&mut k[t * kv_dim..(t + 1) * kv_dim], hd, pos0 + t);
    }
    kv.rotate_in(&mut q, &mut k, &mut v, hd);
    // The cached rows this batch can see, from position `base` on: a full layer's as stored
    // (attention widens them a block at a time), a ring's widened to f32 here, in order from
    // the window's start.
    let ring;
    let (kr, vr, base) = if kv.window(il).is_some() {
        ring = kv.store_and_view(il, pos0, &k, &v);
        (Rows::F32(&ring.0), Rows::F32(&ring.1), ring.2)
    } else {
        kv.store(il, pos0, &k, &v);
        let (kr, vr) = kv.view(il, pos0 + n);
        (kr, vr, 0)
    };
    kv.round_queries(&mut q);
    // out: (n, n_head * hd)
    let mut out = vec![0.0f32; n * q_dim];
    let inp = AttnInput {
        q: &q,
        k: kr,
        v: vr,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hd,
        // Masking depends on distances only, so positions may count from `base`.
        pos0: pos0 - base,
        window: if swa { hp.sliding_window } else { None },
        scale: hp.scales.attention.unwrap_or(1.0 / (hd as f32).sqrt()),
        sinks: lw.sinks.as_deref(),
    };
    kernels::attention::attention(&inp, &mut out);
    kv.rotate_out(&mut out, hd);
    let mut res = vec![0.0f32; n * hp.n_embd];
    linear(&lw.wo, &out, n, &mut res);
    add_bias(&mut res, &lw.bo);
    res
}
