//! The KV summary's slots: which slot a key leaving the window joins, and the means and score
//! biases attention reads.

use super::{Assign, StreamConfig, StreamLayer, SummaryConfig};

/// The summary slot of a key leaving the window (layer `il`, KV head `g`, position `j`).
pub(super) fn slot_of(
    sc: &SummaryConfig,
    cfg: &StreamConfig,
    il: usize,
    g: usize,
    n_head_kv: usize,
    j: usize,
    key: &[f32],
) -> usize {
    let m = sc.n_slot;
    match &sc.assign {
        Assign::RoundRobin => (j - cfg.sinks) % m,
        Assign::Recency => ((j - cfg.sinks) / (cfg.window / m).max(1)) % m,
        Assign::Centroids(c) => {
            let hd = key.len();
            let base = (il * n_head_kv + g) * m * hd;
            let mut best = (f32::INFINITY, 0);
            for s in 0..m {
                let cen = &c[base + s * hd..base + (s + 1) * hd];
                let d: f32 = cen.iter().zip(key).map(|(a, b)| (a - b) * (a - b)).sum();
                if d < best.0 {
                    best = (d, s);
                }
            }
            best.1
        }
    }
}

/// Means and score biases of the summary slots at one moment: (n_head_kv, M, head_dim) keys
/// and values, (n_head_kv, M) biases (`-inf` for an empty slot).
pub(super) struct Snapshot {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub bias: Vec<f32>,
}

pub(super) fn snapshot(st: &StreamLayer, log_weight: f32, head_dim: usize) -> Snapshot {
    let mut k = st.sum_k.clone();
    let mut v = st.sum_v.clone();
    let bias = st
        .count
        .iter()
        .map(|&c| {
            if c > 0.0 {
                slot_bias(log_weight, c)
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    for (i, &c) in st.count.iter().enumerate() {
        let r = i * head_dim..(i + 1) * head_dim;
        let inv = if c > 0.0 { 1.0 / c } else { 0.0 };
        k[r.clone()].iter_mut().for_each(|x| *x *= inv);
        v[r].iter_mut().for_each(|x| *x *= inv);
    }
    Snapshot { k, v, bias }
}

/// The score bias of a slot standing for `count` tokens.
pub(super) fn slot_bias(log_weight: f32, count: f32) -> f32 {
    if log_weight == 0.0 {
        0.0
    } else {
        log_weight * count.ln()
    }
}
