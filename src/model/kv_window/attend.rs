//! The fast path: sinks in f32, the window in the cache's ring, the summary's snapshots.

use rayon::prelude::*;

use super::reference::reference_attention;
use super::rope::{rotated, unrope};
use super::simd::{axpy, dot};
use super::summary::{forget, join, join_seed, slot_of, snapshot, Snapshot};
use super::{SinkPos, SlotKeys, StreamConfig, StreamInput};
use crate::kernels::attention::softmax_row;
use crate::model::kv_cache::{hadamard_blocks, KvCache};

/// Attention of one batch of a stream layer `il`; stores the batch's K/V (sinks, ring) and
/// moves the tokens that leave the window into the summary. `out` is (n, n_head * head_dim).
pub(crate) fn attend(kv: &mut KvCache, il: usize, inp: &StreamInput, out: &mut [f32]) {
    let cfg = kv.stream_config().expect("a stream layer").clone();
    let (hd, kv_dim) = (inp.head_dim, inp.n_head_kv * inp.head_dim);
    if cfg.reference {
        // The history holds each token's K and V as the cache holds them (sinks in f32, other
        // rows rounded through the cache's type, turned back to plain pre-RoPE values).
        let (rot_k, rot_v) = kv.rotations(hd);
        let n = inp.k.len() / kv_dim;
        let (mut k, mut v) = (inp.k.to_vec(), inp.v.to_vec());
        for t in (0..n).filter(|t| inp.pos0 + t >= cfg.sinks) {
            let r = t * kv_dim..(t + 1) * kv_dim;
            let mut kr = rotated(inp.rope, &k[r.clone()], hd, inp.pos0 + t);
            let mut vr = v[r.clone()].to_vec();
            if let Some(b) = rot_k {
                hadamard_blocks(&mut kr, b);
            }
            if let Some(b) = rot_v {
                hadamard_blocks(&mut vr, b);
            }
            let (mut kr, mut vr) = kv.round_trip(&kr, &vr);
            if let Some(b) = rot_k {
                hadamard_blocks(&mut kr, b);
            }
            if let Some(b) = rot_v {
                hadamard_blocks(&mut vr, b);
            }
            unrope(inp.rope, &mut kr, hd, inp.pos0 + t);
            k[r.clone()].copy_from_slice(&kr);
            v[r].copy_from_slice(&vr);
        }
        let st = kv.stream_layer(il);
        let (hk, hv) = st.history.as_mut().expect("reference mode keeps history");
        hk.extend_from_slice(&k);
        hv.extend_from_slice(&v);
        let (hk, hv) = (hk.clone(), hv.clone());
        reference_attention(&cfg, il, inp, &hk, &hv, out);
        return;
    }
    let q_dim = inp.n_head * hd;
    let n = inp.q.len() / q_dim;
    let (w, s_n, p0) = (cfg.window, cfg.sinks, inp.pos0);
    if let Some((hk, _)) = &mut kv.stream_layer(il).history {
        hk.extend_from_slice(inp.k);
    }
    let (rot_k, rot_v) = kv.rotations(hd);

    // K after RoPE at each token's position, as stored (turned by Hadamard for a quantized K).
    let mut k_abs = inp.k.to_vec();
    for t in 0..n {
        inp.rope
            .apply(&mut k_abs[t * kv_dim..(t + 1) * kv_dim], hd, p0 + t);
    }
    {
        let st = kv.stream_layer(il);
        for t in 0..n.min(s_n.saturating_sub(p0)) {
            let (r, p) = (t * kv_dim..(t + 1) * kv_dim, p0 + t);
            st.sink_k[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(&k_abs[r.clone()]);
            st.sink_v[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(&inp.v[r]);
        }
    }
    let mut k_in = k_abs;
    let mut v_in = inp.v.to_vec();
    if let Some(b) = rot_k {
        hadamard_blocks(&mut k_in, b);
    }
    if let Some(b) = rot_v {
        hadamard_blocks(&mut v_in, b);
    }

    // The view: positions elo..p0 + n (the window of every query in the batch, and the row
    // before it, which the first query moves to the summary). Ring rows first, then the
    // batch's own rows rounded as the cache would round them.
    let end = p0 + n;
    let elo = s_n.max(p0.saturating_sub(w)).min(end);
    let n_view = end - elo;
    let mut vk = vec![0.0f32; n_view * kv_dim];
    let mut vv = vec![0.0f32; n_view * kv_dim];
    let ring_end = p0.max(elo);
    let mut p = elo;
    while p < ring_end {
        let slot = p % w;
        let run = (w - slot).min(ring_end - p);
        let o = (p - elo) * kv_dim..(p - elo + run) * kv_dim;
        kv.ring_read(il, slot, run, &mut vk[o.clone()], &mut vv[o]);
        p += run;
    }
    let t_from = ring_end - p0;
    let o = (ring_end - elo) * kv_dim;
    let (kr, vr) = kv.round_trip(&k_in[t_from * kv_dim..], &v_in[t_from * kv_dim..]);
    vk[o..].copy_from_slice(&kr);
    vv[o..].copy_from_slice(&vr);
    // The batch's last W rows past the sinks into the ring.
    for t in n.saturating_sub(w).max(t_from)..n {
        let r = t * kv_dim..(t + 1) * kv_dim;
        kv.ring_store(il, (p0 + t) % w, &k_in[r.clone()], &v_in[r]);
    }

    // Summary snapshots: before query p, the token at p - W leaves the window.
    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut snap_of = vec![0usize; n];
    if let Some(sc) = &cfg.summary {
        let st = kv.stream_layer(il);
        snaps.push(snapshot(st, sc.log_weight));
        for (t, so) in snap_of.iter_mut().enumerate() {
            let p = p0 + t;
            if p >= w && p - w >= s_n {
                let j = p - w;
                let r = (j - elo) * kv_dim..(j - elo + 1) * kv_dim;
                let mut key = vk[r.clone()].to_vec();
                let mut val = vv[r].to_vec();
                if let Some(b) = rot_k {
                    hadamard_blocks(&mut key, b);
                }
                if let Some(b) = rot_v {
                    hadamard_blocks(&mut val, b);
                }
                // Slots are chosen by the pre-RoPE key; they average it, or the key after RoPE.
                let abs_key = (sc.keys == SlotKeys::TruePos).then(|| key.clone());
                forget(&mut st.count, sc.decay());
                unrope(inp.rope, &mut key, hd, j);
                for g in 0..inp.n_head_kv {
                    let kh = &key[g * hd..(g + 1) * hd];
                    let m = slot_of(sc, &cfg, il, g, inp.n_head_kv, j, kh);
                    let (at, c) = ((g * sc.n_slot + m) * hd, g * sc.n_slot + m);
                    let ks = abs_key.as_ref().map_or(kh, |a| &a[g * hd..(g + 1) * hd]);
                    join(
                        &mut st.mean_k[at..at + hd],
                        &mut st.mean_v[at..at + hd],
                        &mut st.count[c],
                        ks,
                        &val[g * hd..(g + 1) * hd],
                        join_seed(il, g, m, j),
                    );
                }
                snaps.push(snapshot(st, sc.log_weight));
            }
            *so = snaps.len() - 1;
        }
    }

    // Queries: at the absolute position (for the ring, turned by Hadamard like K), at the
    // sinks' position, and at distance W from the summary's unrotated means.
    let q_abs: Vec<f32> = (0..n)
        .flat_map(|t| {
            let mut q = rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, p0 + t);
            if let Some(b) = rot_k {
                hadamard_blocks(&mut q, b);
            }
            q
        })
        .collect();
    let q_sink: Vec<f32> = (0..n)
        .flat_map(|t| {
            let p = sink_query_pos(&cfg, p0 + t);
            rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, p)
        })
        .collect();
    let q_sum: Vec<f32> = match cfg.summary.as_ref().map(|s| s.keys) {
        None => Vec::new(),
        // The means are plain keys: give them the magnitude a rotated key has (YaRN).
        Some(SlotKeys::Window) => (0..n)
            .flat_map(|t| rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, w))
            .map(|x| x * inp.rope.mscale())
            .collect(),
        Some(SlotKeys::TruePos) => (0..n)
            .flat_map(|t| rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, p0 + t))
            .collect(),
    };

    let st = kv.stream_layer(il);
    let (sink_k, sink_v) = (&st.sink_k, &st.sink_v);
    let group = inp.n_head / inp.n_head_kv;
    let m = cfg.n_slot();
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / inp.n_head, i % inp.n_head);
        let g = h / group;
        let p = p0 + t;
        let qr = |qs: &[f32]| -> Vec<f32> { qs[i * hd..(i + 1) * hd].to_vec() };
        let (qa, qs) = (qr(&q_abs), qr(&q_sink));
        let n_sink = s_n.min(p + 1);
        let wlo = s_n.max((p + 1).saturating_sub(w));
        let n_win = (p + 1).saturating_sub(wlo);
        let mut sc = Vec::with_capacity(n_sink + m + n_win + 1);
        for s in 0..n_sink {
            let kr = &sink_k[s * kv_dim + g * hd..s * kv_dim + (g + 1) * hd];
            sc.push(dot(&qs, kr) * inp.scale);
        }
        let snap = (m > 0).then(|| &snaps[snap_of[t]]);
        if let Some(sn) = snap {
            let qm = qr(&q_sum);
            for s in 0..m {
                let b = sn.bias[g * m + s];
                let at = (g * m + s) * hd;
                sc.push(if b.is_finite() {
                    dot(&qm, &sn.k[at..at + hd]) * inp.scale + b
                } else {
                    f32::NEG_INFINITY
                });
            }
        }
        for j in wlo..=p {
            let r = (j - elo) * kv_dim + g * hd;
            sc.push(dot(&qa, &vk[r..r + hd]) * inp.scale);
        }
        // gpt-oss's head sink takes its share of the normalising sum and nothing else.
        match inp.head_sinks {
            Some(s) => {
                sc.push(s[h]);
                softmax_row(&mut sc);
                sc.pop();
            }
            None => softmax_row(&mut sc),
        }
        o.iter_mut().for_each(|x| *x = 0.0);
        for (j, &pr) in sc[n_sink + m..].iter().enumerate() {
            let r = (wlo + j - elo) * kv_dim + g * hd;
            axpy(o, pr, &vv[r..r + hd]);
        }
        if let Some(b) = rot_v {
            hadamard_blocks(o, b);
        }
        for (s, &pr) in sc[..n_sink].iter().enumerate() {
            let r = s * kv_dim + g * hd;
            axpy(o, pr, &sink_v[r..r + hd]);
        }
        if let Some(sn) = snap {
            for (s, &pr) in sc[n_sink..n_sink + m].iter().enumerate() {
                if pr > 0.0 {
                    let at = (g * m + s) * hd;
                    axpy(o, pr, &sn.v[at..at + hd]);
                }
            }
        }
    });
}

/// The position a query at `p` takes for its scores against the sinks.
pub(super) fn sink_query_pos(cfg: &StreamConfig, p: usize) -> usize {
    match cfg.sink_pos {
        SinkPos::Cache => p.min(cfg.sinks + cfg.window - 1),
        SinkPos::Absolute => p,
    }
}
