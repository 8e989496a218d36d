//! The KV summary's slots: which slot a key leaving the window joins, and the means and score
//! biases attention reads.

use half::f16;

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

/// Forgetting, before a token joins: every count scales by `decay` (the means stay: a slot's
/// sums and count scale together). A count that falls below `1e-30` (a slot no token has
/// joined for ~140 000 absorptions at H = 2048) empties the slot, before f32 denormals would
/// slow every later step.
pub(super) fn forget(count: &mut [f32], decay: f32) {
    if decay == 1.0 {
        return;
    }
    for c in count {
        *c *= decay;
        if *c < 1e-30 {
            *c = 0.0;
        }
    }
}

/// One token (`key`, `val`: one KV head's rows) joins a slot: the count grows by one and the
/// f16 means move toward the token by `1 / count`, computed in f32 and rounded to f16
/// stochastically (up with the probability of the remainder, from a hash of `seed` and the
/// element): round-to-nearest would drop every step smaller than half a unit, so a heavy
/// slot's mean would stop following its tokens. `seed` names the slot and the token (layer,
/// KV head, slot, position), so the result is reproducible.
pub(super) fn join(
    mean_k: &mut [f16],
    mean_v: &mut [f16],
    count: &mut f32,
    key: &[f32],
    val: &[f32],
    seed: u64,
) {
    *count += 1.0;
    let r = 1.0 / *count;
    let pairs = mean_k.iter_mut().zip(key).chain(mean_v.iter_mut().zip(val));
    for (e, (m, x)) in pairs.enumerate() {
        let a = m.to_f32();
        *m = round_stochastic(a + (x - a) * r, mix(seed ^ e as u64));
    }
}

/// The seed of [`join`] for the token at `pos` joining slot `slot` of KV head `g` of layer `il`.
pub(super) fn join_seed(il: usize, g: usize, slot: usize, pos: usize) -> u64 {
    mix(mix(mix(pos as u64) ^ il as u64) ^ ((g as u64) << 32 | slot as u64)) << 16
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `y` rounded to one of its two neighbouring f16 values, the upper one when `h`'s top 24 bits,
/// as a fraction, fall below `y`'s place between them (exact values, NaN and values past the
/// f16 range round to nearest).
pub(super) fn round_stochastic(y: f32, h: u64) -> f16 {
    let near = f16::from_f32(y);
    let nf = near.to_f32();
    if nf == y || !nf.is_finite() {
        return near;
    }
    let other = f16_step(near, nf < y);
    let (lo, hi) = if nf < y { (near, other) } else { (other, near) };
    let (l, u) = (lo.to_f32(), hi.to_f32());
    let frac = (y - l) / (u - l);
    let draw = (h >> 40) as f32 / (1u64 << 24) as f32;
    if draw < frac {
        hi
    } else {
        lo
    }
}

/// The next f16 value up (or down) from a finite `x`.
fn f16_step(x: f16, up: bool) -> f16 {
    let b = x.to_bits();
    let bits = if b & 0x7fff == 0 {
        if up {
            0x0001
        } else {
            0x8001
        }
    } else if (b & 0x8000 == 0) == up {
        b + 1
    } else {
        b - 1
    };
    f16::from_bits(bits)
}

/// Means and score biases of the summary slots at one moment: (n_head_kv, M, head_dim) keys
/// and values, (n_head_kv, M) biases (`-inf` for an empty slot).
pub(super) struct Snapshot {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub bias: Vec<f32>,
}

pub(super) fn snapshot(st: &StreamLayer, log_weight: f32) -> Snapshot {
    let widen = |m: &[f16]| m.iter().map(|x| x.to_f32()).collect();
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
    Snapshot {
        k: widen(&st.mean_k),
        v: widen(&st.mean_v),
        bias,
    }
}

/// The score bias of a slot standing for `count` tokens.
pub(super) fn slot_bias(log_weight: f32, count: f32) -> f32 {
    if log_weight == 0.0 {
        0.0
    } else {
        log_weight * count.ln()
    }
}
