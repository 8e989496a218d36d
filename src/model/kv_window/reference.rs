//! The explicit recomputation the fast path is tested against.

use half::f16;

use super::attend::sink_query_pos;
use super::rope::rotated;
use super::simd::axpy;
use super::summary::{forget, join, join_seed, slot_bias, slot_of};
use super::{SlotKeys, StreamConfig, StreamInput};

/// Windowed attention recomputed explicitly: for each query at `p` (the batch's positions
/// `pos0..`), the cache's keys are listed with their positions in the cache (sinks at
/// `0..S`, then the summary slots `W` before the query, then the window at its true distance
/// from the query), each raw key rotated there, and plain softmax attention is taken. `hk` and
/// `hv` are the raw K and V of every position `0..pos0 + n`.
pub fn reference_attention(
    cfg: &StreamConfig,
    il: usize,
    inp: &StreamInput,
    hk: &[f32],
    hv: &[f32],
    out: &mut [f32],
) {
    let (hd, kv_dim) = (inp.head_dim, inp.n_head_kv * inp.head_dim);
    let q_dim = inp.n_head * hd;
    let n = inp.q.len() / q_dim;
    let (w, s_n) = (cfg.window, cfg.sinks);
    // Every position shifted by OFF keeps the summary's (query - W) at or above zero.
    let off = w + 1;
    let group = inp.n_head / inp.n_head_kv;
    for t in 0..n {
        let p = inp.pos0 + t;
        let qp = sink_query_pos(cfg, p);
        let q = rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, qp + off);
        let q_abs = rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, p);
        for h in 0..inp.n_head {
            let g = h / group;
            // (key, value, score bias, met by the query at its own position)
            let mut keys: Vec<(Vec<f32>, Vec<f32>, f32, bool)> = Vec::new();
            let head =
                |x: &[f32], j: usize| x[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd].to_vec();
            for s in 0..s_n.min(p + 1) {
                keys.push((
                    rotated(inp.rope, &head(hk, s), hd, s + off),
                    head(hv, s),
                    0.0,
                    false,
                ));
            }
            if let Some(sc) = &cfg.summary {
                let m = sc.n_slot;
                // The slots as stored: f16 means moved toward each token in turn.
                let (mut sk, mut sv, mut cnt) = (
                    vec![f16::ZERO; m * hd],
                    vec![f16::ZERO; m * hd],
                    vec![0.0f32; m],
                );
                for j in s_n..(p + 1).saturating_sub(w) {
                    forget(&mut cnt, sc.decay());
                    let kh = head(hk, j);
                    let a = slot_of(sc, cfg, il, g, inp.n_head_kv, j, &kh);
                    let ks = match sc.keys {
                        SlotKeys::Window => kh,
                        SlotKeys::TruePos => rotated(inp.rope, &kh, hd, j),
                    };
                    let r = a * hd..(a + 1) * hd;
                    let seed = join_seed(il, g, a, j);
                    join(
                        &mut sk[r.clone()],
                        &mut sv[r],
                        &mut cnt[a],
                        &ks,
                        &head(hv, j),
                        seed,
                    );
                }
                for a in (0..m).filter(|&a| cnt[a] > 0.0) {
                    let c = cnt[a];
                    let mk: Vec<f32> = sk[a * hd..(a + 1) * hd]
                        .iter()
                        .map(|x| x.to_f32())
                        .collect();
                    let mv: Vec<f32> = sv[a * hd..(a + 1) * hd]
                        .iter()
                        .map(|x| x.to_f32())
                        .collect();
                    let bias = slot_bias(sc.log_weight, c);
                    keys.push(match sc.keys {
                        SlotKeys::Window => {
                            (rotated(inp.rope, &mk, hd, qp + off - w), mv, bias, false)
                        }
                        SlotKeys::TruePos => (mk, mv, bias, true),
                    });
                }
            }
            for j in s_n.max((p + 1).saturating_sub(w))..=p {
                let kp = qp + off - (p - j);
                keys.push((
                    rotated(inp.rope, &head(hk, j), hd, kp),
                    head(hv, j),
                    0.0,
                    false,
                ));
            }
            let scores: Vec<f32> = keys
                .iter()
                .map(|(k, _, b, abs)| {
                    let qh = if *abs { &q_abs } else { &q };
                    let qh = &qh[h * hd..(h + 1) * hd];
                    qh.iter().zip(k).map(|(a, c)| a * c).sum::<f32>() * inp.scale + b
                })
                .collect();
            let head_sink = inp.head_sinks.map(|s| s[h]);
            let mx = scores
                .iter()
                .copied()
                .chain(head_sink)
                .fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = scores.iter().map(|s| (s - mx).exp()).sum::<f32>()
                + head_sink.map_or(0.0, |x| (x - mx).exp());
            let o = &mut out[(t * inp.n_head + h) * hd..(t * inp.n_head + h + 1) * hd];
            o.iter_mut().for_each(|x| *x = 0.0);
            for (s, (_, v, _, _)) in scores.iter().zip(&keys) {
                axpy(o, (s - mx).exp() / total, v);
            }
        }
    }
}
