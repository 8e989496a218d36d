//! Windowed attention for any model (`--kv-window W --kv-sinks S`, StreamingLLM's scheme) and
//! the fixed-size KV summary (`--kv-summary M`) that absorbs what leaves the window.
//!
//! A query at position `p` sees
//! - the sinks: the first `S` tokens, kept in f32 (K after RoPE at their own positions);
//! - the window: positions `max(S, p + 1 - W) ..= p`, kept in a ring of `W` rows of the cache's
//!   type (K after RoPE at its absolute position, so `q · k` sees the true distance);
//! - with a summary, per KV head `M` slots: a token leaving the window joins the slot whose
//!   learned centroid is nearest its pre-RoPE key; the slot holds the means of the keys *after
//!   RoPE at their own positions* and of the values (in f16, like the window's rows: a slot
//!   costs what one window row does; each join moves the means by `1 / count` and rounds
//!   stochastically, as nearest rounding would freeze a heavy slot), and an f32 count.
//!   Attention sees the mean key,
//!   met by the query at its own absolute position, so `q · mean` is the mean of the absorbed
//!   keys' scores at their true distances (the high-frequency dimensions of keys from many
//!   positions average out, as they do in full attention), plus `α · ln(count)`: with `α = 1` a
//!   slot standing for `n` tokens weighs like `n` tokens with the mean score, which by Jensen
//!   is never more than those tokens' own weight; `α` = [`DEFAULT_LOG_WEIGHT`] (1.25) makes up
//!   some of that gap and measured best. Its value is the mean value. Slots forget: before a
//!   token joins, every slot's sums and count are scaled by `1 - 1/H` ([`DEFAULT_HORIZON`]), so
//!   the summary stands for roughly the last `H` tokens past the window (kept forever, slots
//!   ruined perplexity once queries passed 16K positions).
//!
//! Positions follow StreamingLLM (the positions within the cache) for the sinks: the query sits
//! at `min(p, S + W - 1)` for them, so a sink never looks further away than `S + W - 1`.
//! RoPE rotations compose, so rather than turning every stored key to a new position, the query
//! is turned once per group of keys (`R(a) q · R(b) k = R(a - b) q · k`). Until the window
//! fills (`p < S + W`), every distance is the true one and the result is full attention.
//!
//! What was measured for the summary (README, long-context section; SmolLM2, Emma): the first
//! design (`SlotKeys::Window`: the mean *pre-RoPE* key placed at distance `W`, no weight) lost to
//! window + sinks at equal memory, and `ln(count)` made it worse, because the mean pre-RoPE key
//! keeps high-frequency parts that real distant keys do not show; keys at their true positions
//! with `1.25 · ln(count)` win (narrowly with a 512-token window). Weights 0.5, 0.75, 1 and 1.5,
//! and round-robin or recency slots instead of learned ones, were worse. The alternatives stay,
//! behind hidden flags.
//!
//! [`reference_attention`] recomputes the same thing from every token's raw K/V with each key
//! explicitly rotated to its position in the cache; tests hold the fast path to it.
//!
//! Files: this one holds the settings and per-layer state; `attend.rs` the fast path,
//! `reference.rs` the explicit recomputation, `summary.rs` how slots are chosen and read,
//! `rope.rs` the rotations (queries and keys), `simd.rs` the dot product and axpy.

mod attend;
mod reference;
mod rope;
mod simd;
mod summary;
#[cfg(test)]
mod tests;

pub(crate) use attend::attend;
pub use reference::reference_attention;
pub use rope::unrope;

use half::f16;

use crate::kernels::rope::RopeParams;

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

/// What a slot's key is and where the query meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotKeys {
    /// The mean of the absorbed pre-RoPE keys, placed at distance `W` from the query.
    #[default]
    Window,
    /// The mean of the absorbed keys after RoPE at their own positions, met by the query at
    /// its own position: `q · mean` is the mean of the absorbed keys' scores at their true
    /// distances (high-frequency dimensions average out as they would).
    TruePos,
}

/// The default `α` of `α · ln(count)`, of 0.5, 0.75, 1, 1.25, 1.5: best on SmolLM2 at W 512 /
/// M 64 (4K) and on Qwen2.5-Coder-0.5B at W 128 / M 16 (2K), a tie with 1 on SmolLM2 at W 128 /
/// M 16 (2K: 27.77 against 27.75).
pub const DEFAULT_LOG_WEIGHT: f32 = 1.25;

/// The default forgetting horizon `H` (tokens): of ∞, 8192, 4096, 2048 and 1024, the one that
/// holds at every length measured on Qwen2.5-Coder-0.5B with W 512 / M 64 (README, "The
/// summary past 16K"): without forgetting the summary collapses at 32K (69.35 against the
/// equal-memory window's 49.71); with 2048 it gives 49.89 there, and 39.97 / 48.04 at 4K / 16K
/// (∞: 39.80 / 47.96).
pub const DEFAULT_HORIZON: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryConfig {
    /// Slots per layer and KV head.
    pub n_slot: usize,
    pub assign: Assign,
    /// `α` of the `α · ln(count)` added to a slot's score: 0 reads a slot as one token with
    /// the mean key, 1 as `count` tokens with that key.
    pub log_weight: f32,
    pub keys: SlotKeys,
    /// Forgetting: before each token joins, every slot's sums and count are scaled by
    /// `1 - 1/H`, so a token `d` absorptions old weighs `(1 - 1/H)^d`; 0 keeps every token at
    /// full weight.
    pub horizon: usize,
}

impl SummaryConfig {
    /// The factor each absorption scales the slots by (1 without forgetting).
    pub fn decay(&self) -> f32 {
        if self.horizon == 0 {
            1.0
        } else {
            1.0 - 1.0 / self.horizon as f32
        }
    }
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

    /// Bytes per layer outside the ring: f32 sinks, f16 summary means and f32 slot counts.
    pub fn extra_bytes(&self, n_head_kv: usize, head_dim: usize) -> usize {
        let kv_dim = n_head_kv * head_dim;
        2 * self.sinks * kv_dim * 4 + self.n_slot() * (2 * kv_dim * 2 + n_head_kv * 4)
    }
}

/// One stream layer's sinks and summary.
pub(crate) struct StreamLayer {
    /// (S, kv_dim): K after RoPE at the sink's position, and V.
    sink_k: Vec<f32>,
    sink_v: Vec<f32>,
    /// (n_head_kv, M, head_dim): the slots' mean keys (after RoPE at each token's position, or
    /// before RoPE for `SlotKeys::Window`) and mean values, stored in f16 like the window's
    /// rows; (n_head_kv, M) counts (the forgetting-weighted number of tokens), f32.
    mean_k: Vec<f16>,
    mean_v: Vec<f16>,
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
            mean_k: vec![f16::ZERO; m * kv_dim],
            mean_v: vec![f16::ZERO; m * kv_dim],
            count: vec![0.0; m * n_head_kv],
            history: cfg.reference.then(|| (Vec::new(), Vec::new())),
        }
    }

    /// Empties the summary (the sinks are rewritten before they are read).
    pub(crate) fn reset(&mut self) {
        self.mean_k.iter_mut().for_each(|v| *v = f16::ZERO);
        self.mean_v.iter_mut().for_each(|v| *v = f16::ZERO);
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

    /// The summary: mean keys and values (n_head_kv, M, head_dim) and counts (n_head_kv, M).
    #[cfg(test)]
    pub(crate) fn summary(&self) -> (&[f16], &[f16], &[f32]) {
        (&self.mean_k, &self.mean_v, &self.count)
    }

    /// Bytes of the f32 sinks, the f16 summary means and the f32 counts.
    pub(crate) fn bytes(&self) -> usize {
        4 * (self.sink_k.len() + self.sink_v.len() + self.count.len())
            + 2 * (self.mean_k.len() + self.mean_v.len())
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
