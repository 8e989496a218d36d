//! Windowed attention for any model (`--kv-window W --kv-sinks S`, StreamingLLM's scheme) and
//! the fixed-size KV summary (`--kv-summary M`) that absorbs what leaves the window.
//!
//! A query at position `p` sees
//! - the sinks: the first `S` tokens, kept in f32 (K after RoPE at their own positions);
//! - the window: positions `max(S, p + 1 - W) ..= p`, kept in a ring of `W` rows of the cache's
//!   type (K after RoPE at its absolute position, so `q · k` sees the true distance);
//! - with a summary, per KV head `M` slots: each holds the sum and count of the (pre-RoPE) keys
//!   and values of the tokens that left the window and were assigned to it; attention sees the
//!   mean key and value, and adds `ln(count)` to the slot's score so that a slot standing for `n`
//!   tokens weighs like `n` tokens with that key.
//!
//! Positions follow StreamingLLM (the positions within the cache): the query sits at
//! `min(p, S + W - 1)` for the sinks, so a sink never looks further away than `S + W - 1`, and
//! the summary's mean keys sit at distance `W`, just past the window. RoPE rotations compose,
//! so rather than turning every stored key to a new position, the query is turned once per
//! group of keys (`R(a) q · R(b) k = R(a - b) q · k`). Until the window fills (`p < S + W`),
//! every distance is the true one and the result is full attention.
//!
//! [`reference_attention`] recomputes the same thing from every token's raw K/V with each key
//! explicitly rotated to its position in the cache; tests hold the fast path to it.

use rayon::prelude::*;

use crate::kernels::rope::RopeParams;

use super::kv_cache::{hadamard_blocks, KvCache};

/// Where the sinks sit relative to a query past the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkPos {
    /// StreamingLLM: positions within the cache; a sink is at most `S + W - 1` away.
    #[default]
    Cache,
    /// Absolute positions: a sink at position `s` is `p - s` away (beyond the trained context
    /// in a long run).
    Absolute,
}

/// How a token leaving the window picks its summary slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Assign {
    /// The nearest learned centroid (L2, pre-RoPE keys): (n_layer, n_head_kv, n_slot,
    /// head_dim), as `dsrun calibrate --kv-summary` stores them.
    Centroids(std::sync::Arc<Vec<f32>>),
    /// Slot `(position - S) % M`: no learning, every slot a mean of a spread of tokens.
    RoundRobin,
    /// Slot `((position - S) / B) % M` with blocks of `B = W / M` tokens: recent runs of tokens.
    Recency,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// Slots per layer and KV head.
    pub n_slot: usize,
    pub assign: Assign,
    /// Add `ln(count)` to a slot's score.
    pub log_count: bool,
}

/// The window, sinks and summary settings (`KvConfig`'s streaming part).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub window: usize,
    pub sinks: usize,
    pub sink_pos: SinkPos,
    pub summary: Option<SummaryConfig>,
    /// Keep every token's raw K/V and compute attention with [`reference_attention`] (tests).
    pub reference: bool,
}

impl StreamConfig {
    pub fn n_slot(&self) -> usize {
        self.summary.as_ref().map_or(0, |s| s.n_slot)
    }

    /// Bytes per layer outside the ring: f32 sinks and summary sums, and the slot counts.
    pub fn extra_bytes(&self, n_head_kv: usize, head_dim: usize) -> usize {
        let kv_dim = n_head_kv * head_dim;
        (2 * self.sinks * kv_dim + self.n_slot() * (2 * kv_dim + n_head_kv)) * 4
    }
}

/// One stream layer's sinks and summary.
pub(crate) struct StreamLayer {
    /// (S, kv_dim): K after RoPE at the sink's position, and V.
    sink_k: Vec<f32>,
    sink_v: Vec<f32>,
    /// (n_head_kv, M, head_dim): sums of pre-RoPE keys and of values; (n_head_kv, M) counts.
    sum_k: Vec<f32>,
    sum_v: Vec<f32>,
    count: Vec<f32>,
    /// Reference mode: raw K and V of every position so far.
    history: Option<(Vec<f32>, Vec<f32>)>,
}

impl StreamLayer {
    pub(crate) fn new(cfg: &StreamConfig, n_head_kv: usize, head_dim: usize) -> StreamLayer {
        let kv_dim = n_head_kv * head_dim;
        let m = cfg.n_slot();
        StreamLayer {
            sink_k: vec![0.0; cfg.sinks * kv_dim],
            sink_v: vec![0.0; cfg.sinks * kv_dim],
            sum_k: vec![0.0; m * kv_dim],
            sum_v: vec![0.0; m * kv_dim],
            count: vec![0.0; m * n_head_kv],
            history: cfg.reference.then(|| (Vec::new(), Vec::new())),
        }
    }

    /// Empties the summary (the sinks are rewritten before they are read).
    pub(crate) fn reset(&mut self) {
        self.sum_k.iter_mut().for_each(|v| *v = 0.0);
        self.sum_v.iter_mut().for_each(|v| *v = 0.0);
        self.count.iter_mut().for_each(|v| *v = 0.0);
        if let Some((k, v)) = &mut self.history {
            k.clear();
            v.clear();
        }
    }

    pub(crate) fn record(&mut self) {
        self.history.get_or_insert_with(Default::default);
    }

    pub(crate) fn take_keys(&mut self) -> Vec<f32> {
        self.history
            .as_mut()
            .map(|(k, _)| std::mem::take(k))
            .unwrap_or_default()
    }

    /// Bytes of the f32 sinks, summary sums and counts.
    pub(crate) fn bytes(&self) -> usize {
        4 * (self.sink_k.len()
            + self.sink_v.len()
            + self.sum_k.len()
            + self.sum_v.len()
            + self.count.len())
    }

    /// Fills the sinks with NaN, so that reading one before it is written shows (tests).
    pub(crate) fn poison(&mut self) {
        self.sink_k.iter_mut().for_each(|v| *v = f32::NAN);
        self.sink_v.iter_mut().for_each(|v| *v = f32::NAN);
    }
}

/// One batch of one layer: raw (pre-RoPE) projections and the layer's attention settings.
pub struct StreamInput<'a> {
    /// (n, n_head * head_dim)
    pub q: &'a [f32],
    /// (n, n_head_kv * head_dim)
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope: &'a RopeParams,
    pub scale: f32,
    /// gpt-oss's per-head sink logits.
    pub head_sinks: Option<&'a [f32]>,
    /// Position of the batch's first token.
    pub pos0: usize,
}

/// Rotates every head of `x` back from position `pos` (the inverse of `RopeParams::apply`,
/// with the same angles).
pub fn unrope(rope: &RopeParams, x: &mut [f32], head_dim: usize, pos: usize) {
    rope.unapply(x, head_dim, pos);
}

fn rotated(rope: &RopeParams, x: &[f32], head_dim: usize, pos: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    rope.apply(&mut y, head_dim, pos);
    y
}

/// `a · b`: AVX2 + FMA where the CPU has them (chosen once), else the plain loop.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { simd::dot(a, b) };
    }
    dot_plain(a, b)
}

/// `out += p * x`, as `dot`.
fn axpy(out: &mut [f32], p: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { simd::axpy(out, p, x) };
    }
    axpy_plain(out, p, x)
}

fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn axpy_plain(out: &mut [f32], p: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += p * v;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Two 8-lane FMA accumulators over blocks of 16, then blocks of 8, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): i + 16 (or i + 8) <= n, within both slices.
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(s0, s1);
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(out: &mut [f32], p: f32, x: &[f32]) {
        let n = out.len().min(x.len());
        let (po, px) = (out.as_mut_ptr(), x.as_ptr());
        let vp = _mm256_set1_ps(p);
        let mut i = 0;
        // SAFETY: i + 8 <= n, within both slices.
        while i + 8 <= n {
            let o = _mm256_fmadd_ps(vp, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(po.add(i)));
            _mm256_storeu_ps(po.add(i), o);
            i += 8;
        }
        while i < n {
            out[i] += p * x[i];
            i += 1;
        }
    }
}

/// The summary slot of a key leaving the window (layer `il`, KV head `g`, position `j`).
fn slot_of(
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
struct Snapshot {
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
}

fn snapshot(st: &StreamLayer, log_count: bool, head_dim: usize) -> Snapshot {
    let mut k = st.sum_k.clone();
    let mut v = st.sum_v.clone();
    let bias = st
        .count
        .iter()
        .map(|&c| match (c > 0.0, log_count) {
            (false, _) => f32::NEG_INFINITY,
            (true, true) => c.ln(),
            (true, false) => 0.0,
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
        snaps.push(snapshot(st, sc.log_count, hd));
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
                unrope(inp.rope, &mut key, hd, j);
                for g in 0..inp.n_head_kv {
                    let kh = &key[g * hd..(g + 1) * hd];
                    let m = slot_of(sc, &cfg, il, g, inp.n_head_kv, j, kh);
                    let at = (g * sc.n_slot + m) * hd;
                    axpy(&mut st.sum_k[at..at + hd], 1.0, kh);
                    axpy(&mut st.sum_v[at..at + hd], 1.0, &val[g * hd..(g + 1) * hd]);
                    st.count[g * sc.n_slot + m] += 1.0;
                }
                snaps.push(snapshot(st, sc.log_count, hd));
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
    let mscale = inp.rope.mscale();
    let q_sum: Vec<f32> = if cfg.summary.is_some() {
        (0..n)
            .flat_map(|t| rotated(inp.rope, &inp.q[t * q_dim..(t + 1) * q_dim], hd, w))
            // The means are plain keys: give them the magnitude a rotated key has (YaRN).
            .map(|x| x * mscale)
            .collect()
    } else {
        Vec::new()
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
        let head_sink = inp.head_sinks.map(|s| s[h]);
        let mx = sc
            .iter()
            .copied()
            .chain(head_sink)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = head_sink.map_or(0.0, |x| (x - mx).exp());
        for x in sc.iter_mut() {
            *x = (*x - mx).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x = 0.0);
        for (j, &pr) in sc[n_sink + m..].iter().enumerate() {
            let r = (wlo + j - elo) * kv_dim + g * hd;
            axpy(o, pr * inv, &vv[r..r + hd]);
        }
        if let Some(b) = rot_v {
            hadamard_blocks(o, b);
        }
        for (s, &pr) in sc[..n_sink].iter().enumerate() {
            let r = s * kv_dim + g * hd;
            axpy(o, pr * inv, &sink_v[r..r + hd]);
        }
        if let Some(sn) = snap {
            for (s, &pr) in sc[n_sink..n_sink + m].iter().enumerate() {
                if pr > 0.0 {
                    let at = (g * m + s) * hd;
                    axpy(o, pr * inv, &sn.v[at..at + hd]);
                }
            }
        }
    });
}

/// The position a query at `p` takes for its scores against the sinks.
fn sink_query_pos(cfg: &StreamConfig, p: usize) -> usize {
    match cfg.sink_pos {
        SinkPos::Cache => p.min(cfg.sinks + cfg.window - 1),
        SinkPos::Absolute => p,
    }
}

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
        for h in 0..inp.n_head {
            let g = h / group;
            let mut keys: Vec<(Vec<f32>, Vec<f32>, f32)> = Vec::new();
            let head =
                |x: &[f32], j: usize| x[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd].to_vec();
            for s in 0..s_n.min(p + 1) {
                keys.push((
                    rotated(inp.rope, &head(hk, s), hd, s + off),
                    head(hv, s),
                    0.0,
                ));
            }
            if let Some(sc) = &cfg.summary {
                let m = sc.n_slot;
                let (mut sk, mut sv, mut cnt) =
                    (vec![0.0f32; m * hd], vec![0.0f32; m * hd], vec![0usize; m]);
                for j in s_n..(p + 1).saturating_sub(w) {
                    let kh = head(hk, j);
                    let a = slot_of(sc, cfg, il, g, inp.n_head_kv, j, &kh);
                    axpy(&mut sk[a * hd..(a + 1) * hd], 1.0, &kh);
                    axpy(&mut sv[a * hd..(a + 1) * hd], 1.0, &head(hv, j));
                    cnt[a] += 1;
                }
                for a in (0..m).filter(|&a| cnt[a] > 0) {
                    let c = cnt[a] as f32;
                    let mk: Vec<f32> = sk[a * hd..(a + 1) * hd].iter().map(|x| x / c).collect();
                    let mv: Vec<f32> = sv[a * hd..(a + 1) * hd].iter().map(|x| x / c).collect();
                    let bias = if sc.log_count { c.ln() } else { 0.0 };
                    keys.push((rotated(inp.rope, &mk, hd, qp + off - w), mv, bias));
                }
            }
            for j in s_n.max((p + 1).saturating_sub(w))..=p {
                let kp = qp + off - (p - j);
                keys.push((rotated(inp.rope, &head(hk, j), hd, kp), head(hv, j), 0.0));
            }
            let qh = &q[h * hd..(h + 1) * hd];
            let scores: Vec<f32> = keys
                .iter()
                .map(|(k, _, b)| qh.iter().zip(k).map(|(a, c)| a * c).sum::<f32>() * inp.scale + b)
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
            for (s, (_, v, _)) in scores.iter().zip(&keys) {
                axpy(o, (s - mx).exp() / total, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvTypes;
    use crate::rng::Rng;
    use crate::tensor::GgmlType;
    use std::sync::Arc;

    const N_HEAD: usize = 4;
    const N_HEAD_KV: usize = 2;
    const HD: usize = 64;

    fn rope() -> RopeParams {
        RopeParams {
            kind: crate::kernels::rope::RopeKind::Neox,
            n_rot: HD,
            freq_base: 10000.0,
            freq_scale: 1.0,
            yarn: crate::kernels::rope::Yarn::NONE,
        }
    }

    /// Runs `n_tok` random tokens through one stream layer in batches of `batches` (cycled),
    /// with the cache poisoned; returns every token's output.
    fn run(
        cfg: &StreamConfig,
        types: KvTypes,
        batches: &[usize],
        n_tok: usize,
        seed: u64,
    ) -> Vec<f32> {
        let kv_dim = N_HEAD_KV * HD;
        let mut kv = KvCache::with_stream(
            4096,
            kv_dim,
            types,
            &[None],
            Some((cfg.clone(), N_HEAD_KV, HD)),
        )
        .unwrap();
        kv.poison();
        let mut rng = Rng::new(seed);
        let q = rng.vec(n_tok * N_HEAD * HD, 1.0);
        let k = rng.vec(n_tok * kv_dim, 1.0);
        let v = rng.vec(n_tok * kv_dim, 1.0);
        let sinks = [0.3f32, -1.0, 0.0, 2.0];
        let rope = rope();
        let mut out = vec![0.0f32; n_tok * N_HEAD * HD];
        let (mut at, mut i) = (0, 0);
        while at < n_tok {
            let n = batches[i % batches.len()].min(n_tok - at);
            let inp = StreamInput {
                q: &q[at * N_HEAD * HD..(at + n) * N_HEAD * HD],
                k: &k[at * kv_dim..(at + n) * kv_dim],
                v: &v[at * kv_dim..(at + n) * kv_dim],
                n_head: N_HEAD,
                n_head_kv: N_HEAD_KV,
                head_dim: HD,
                rope: &rope,
                scale: 0.125,
                head_sinks: Some(&sinks),
                pos0: at,
            };
            attend(
                &mut kv,
                0,
                &inp,
                &mut out[at * N_HEAD * HD..(at + n) * N_HEAD * HD],
            );
            at += n;
            i += 1;
        }
        out
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert!(
            a.iter().chain(b).all(|x| x.is_finite()),
            "NaN: an unwritten slot was read"
        );
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The SIMD dot product and axpy equal their plain twins on odd lengths.
    #[test]
    fn simd_equals_plain() {
        let mut rng = Rng::new(3);
        for n in [1, 7, 8, 15, 16, 17, 64, 100] {
            let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
            let (d, p) = (dot(&a, &b), dot_plain(&a, &b));
            assert!(
                (d - p).abs() <= 1e-5 * (1.0 + p.abs()),
                "dot {n}: {d} vs {p}"
            );
            let (mut o1, mut o2) = (a.clone(), a.clone());
            axpy(&mut o1, 0.37, &b);
            axpy_plain(&mut o2, 0.37, &b);
            assert!(o1
                .iter()
                .zip(&o2)
                .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs())));
        }
    }

    /// The fast path equals the explicit reference at every token (the first ones, the moment
    /// the window fills at S + W = 20, batches straddling it, 200 tokens), for each summary
    /// kind and cache type, whatever the batching, and never reads a poisoned slot.
    #[test]
    fn fast_path_equals_reference() {
        let mut rng = Rng::new(9);
        let cents = Arc::new(rng.vec(N_HEAD_KV * 3 * HD, 1.0));
        let summaries = [
            None,
            Some(SummaryConfig {
                n_slot: 3,
                assign: Assign::Centroids(cents),
                log_count: true,
            }),
            Some(SummaryConfig {
                n_slot: 4,
                assign: Assign::RoundRobin,
                log_count: false,
            }),
            Some(SummaryConfig {
                n_slot: 2,
                assign: Assign::Recency,
                log_count: true,
            }),
        ];
        let q8 = KvTypes {
            k: GgmlType::Q8_0,
            v: GgmlType::Q4_0,
        };
        for types in [KvTypes::default(), q8] {
            for sink_pos in [SinkPos::Cache, SinkPos::Absolute] {
                for summary in summaries.clone() {
                    for sinks in [4, 0] {
                        let mut cfg = StreamConfig {
                            window: 16,
                            sinks,
                            sink_pos,
                            summary: summary.clone(),
                            reference: false,
                        };
                        let fast = run(&cfg, types, &[1, 2, 7, 13, 1, 40, 3], 200, 1);
                        let one = run(&cfg, types, &[1], 200, 1);
                        cfg.reference = true;
                        let reference = run(&cfg, types, &[200], 200, 1);
                        let what = format!(
                            "{types:?} {sink_pos:?} S={sinks} {:?}",
                            summary
                                .as_ref()
                                .map(|s| &s.assign)
                                .map(|a| format!("{a:?}").chars().take(12).collect::<String>())
                        );
                        let e = max_err(&fast, &reference);
                        assert!(e < 1e-4, "{what}: fast vs reference {e}");
                        assert_eq!(fast, one, "{what}: batching changed the result");
                    }
                }
            }
        }
    }
}
