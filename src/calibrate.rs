//! Learning the calibrated expert-count rule (`dsrun calibrate`). The model runs over calibration
//! text at its own expert count (the reference); then candidate rules run over the same text and
//! are judged by the mean KL divergence of their next-token distributions from the reference's,
//! on the tokens perplexity scores (the second half of each chunk). The rule kept is the one with
//! the fewest experts per token whose measured mean KLD stays within the budget.
//!
//! Two ways to set the per-layer thresholds are tried for each rule kind (`CalibKind`):
//!
//! - **uniform**: one threshold for every layer, the cheapest within budget found by bisection;
//! - **per-layer**: each layer's sensitivity `s_l` is measured once (the KLD when only that layer
//!   is cut, divided by the gate weight it dropped); then for a trade-off `λ` each layer takes
//!   the threshold minimising `experts_l + λ s_l dropped_l`, both read off the router
//!   probabilities recorded in the reference run, and `λ` is bisected on the measured KLD.
//!
//! Every candidate's KLD is measured, never predicted: the proxies only choose what to measure.

use crate::engine::{Model, Session};
use crate::error::{Error, Result};
use crate::model::kv_summary::{kmeans, KvSummary};
use crate::model::kv_window::{SinkPos, StreamConfig};
use crate::model::moe_calibration::{CalibKind, MoeCalibration};
use crate::model::moe_select::{calibrated_count, MoeConfig, MoeRule};
use crate::model::KvTypes;
use crate::perplexity::{kl_divergence, log_softmax};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Options of a calibration run.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Mean KLD (nats per token) against the model's own expert count not to exceed.
    pub kld_budget: f64,
    pub min_experts: usize,
    pub max_experts: usize,
    /// The rule kinds to try.
    pub kinds: Vec<CalibKind>,
    pub n_batch: usize,
}

/// One rule tried: the cheapest within budget that its search found.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: CalibKind,
    /// "uniform" or "per-layer".
    pub method: &'static str,
    pub thresholds: Vec<f32>,
    pub kld: f64,
    pub avg_experts: f64,
}

#[derive(Debug, Clone)]
pub struct CalibrationReport {
    /// The rule to store: the candidate with the fewest experts per token.
    pub best: MoeCalibration,
    pub candidates: Vec<Candidate>,
    /// Candidate rules measured over the whole calibration text.
    pub n_evals: usize,
    pub n_scored: usize,
}

/// The reference run: each chunk's scored log-probabilities and every token's router
/// probabilities per layer.
struct Reference {
    chunks: Vec<Vec<u32>>,
    /// Per chunk: (n_scored, n_vocab) log-softmax rows.
    rows: Vec<Vec<f32>>,
    /// Per layer: each token's probabilities sorted highest first, normalised (n_token, n_expert).
    trace: Vec<Vec<f32>>,
}

fn scored(n_ctx: usize) -> std::ops::Range<usize> {
    n_ctx / 2..n_ctx - 1
}

/// Mean experts per token and mean dropped gate weight (relative to the `hi` best) for each
/// grid threshold, from the recorded probabilities of one layer.
fn layer_curve(
    trace: &[f32],
    ne: usize,
    kind: CalibKind,
    grid: &[f32],
    lo: usize,
    hi: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0f64; grid.len()];
    let mut d = vec![0.0f64; grid.len()];
    let n_tok = trace.len() / ne;
    for sorted in trace.chunks_exact(ne) {
        let mut cum = vec![0.0f32; ne + 1];
        for i in 0..ne {
            cum[i + 1] = cum[i] + sorted[i];
        }
        let top = cum[hi].max(f32::MIN_POSITIVE);
        for (gi, &g) in grid.iter().enumerate() {
            let j = calibrated_count(kind, g, sorted, 1.0, hi).clamp(lo, hi);
            e[gi] += j as f64;
            d[gi] += (1.0 - cum[j] / top).max(0.0) as f64;
        }
    }
    let n = n_tok.max(1) as f64;
    e.iter_mut().for_each(|v| *v /= n);
    d.iter_mut().for_each(|v| *v /= n);
    (e, d)
}

/// Thresholds from the most aggressive (index 0) to the one that cuts nothing (last).
fn grid(kind: CalibKind) -> Vec<f32> {
    match kind {
        CalibKind::TopP | CalibKind::RelMass => (20..=100).map(|i| i as f32 / 100.0).collect(),
        CalibKind::Ratio => (0..=100).rev().map(|i| i as f32 / 100.0).collect(),
    }
}

struct Calibrator<'m, 'a> {
    model: &'m Model<'a>,
    reference: Reference,
    opts: CalibrateOptions,
    cache: HashMap<(CalibKind, Vec<u32>), (f64, f64)>,
    n_scored: usize,
}

impl Calibrator<'_, '_> {
    fn config(&self, kind: CalibKind, thresholds: &[f32]) -> MoeConfig {
        MoeConfig {
            rule: MoeRule::Calibrated(Arc::new(MoeCalibration {
                kind,
                thresholds: thresholds.to_vec(),
                min_experts: self.opts.min_experts,
                max_experts: self.opts.max_experts,
                ..Default::default()
            })),
            min_experts: None,
            max_experts: None,
        }
    }

    /// Runs the calibration text under a rule: (mean KLD from the reference, experts/token).
    fn measure(&mut self, kind: CalibKind, thresholds: &[f32]) -> Result<(f64, f64)> {
        let key = (kind, thresholds.iter().map(|t| t.to_bits()).collect());
        if let Some(&r) = self.cache.get(&key) {
            return Ok(r);
        }
        let n_ctx = self.reference.chunks[0].len();
        let nv = self.model.hp.n_vocab;
        let mut s = Session::new(self.model, n_ctx, self.opts.n_batch)?;
        s.set_moe(self.config(kind, thresholds))?;
        let mut sum = 0.0f64;
        for (chunk, rows) in self.reference.chunks.iter().zip(&self.reference.rows) {
            s.clear();
            let logits = s.eval_all(chunk)?;
            for (r, j) in scored(n_ctx).enumerate() {
                let cur = log_softmax(&logits[j * nv..(j + 1) * nv]);
                sum += kl_divergence(&rows[r * nv..(r + 1) * nv], &cur);
            }
        }
        let r = (
            sum / self.n_scored.max(1) as f64,
            s.moe.stats.average().unwrap_or(0.0),
        );
        self.cache.insert(key, r);
        Ok(r)
    }

    fn fits(&self, kld: f64) -> bool {
        kld <= self.opts.kld_budget
    }

    /// One threshold for all layers: the cheapest grid point within budget, by bisection.
    fn uniform(&mut self, kind: CalibKind, log: &mut dyn FnMut(String)) -> Result<Candidate> {
        let g = grid(kind);
        let nl = self.model.hp.n_layer;
        let (mut bad, mut good) = (None::<usize>, g.len() - 1);
        let at = |i: usize| vec![g[i]; nl];
        let (k0, _) = self.measure(kind, &at(0))?;
        if self.fits(k0) {
            good = 0;
        } else {
            bad = Some(0);
        }
        while let Some(b) = bad {
            if good - b <= 1 {
                break;
            }
            let mid = (b + good) / 2;
            let (k, a) = self.measure(kind, &at(mid))?;
            log(format!(
                "  {} uniform {:.2}: KLD {k:.5}, {a:.3} experts/token",
                kind.name(),
                g[mid]
            ));
            if self.fits(k) {
                good = mid;
            } else {
                bad = Some(mid);
            }
        }
        let (kld, avg_experts) = self.measure(kind, &at(good))?;
        Ok(Candidate {
            kind,
            method: "uniform",
            thresholds: at(good),
            kld,
            avg_experts,
        })
    }

    /// Per-layer thresholds from measured layer sensitivities and a bisected trade-off.
    fn per_layer(&mut self, kind: CalibKind, log: &mut dyn FnMut(String)) -> Result<Candidate> {
        let g = grid(kind);
        let (lo, hi) = (self.opts.min_experts, self.opts.max_experts);
        let ne = self.model.hp.n_expert;
        let nl = self.model.hp.n_layer;
        let curves: Vec<(Vec<f64>, Vec<f64>)> = self
            .reference
            .trace
            .iter()
            .map(|t| layer_curve(t, ne, kind, &g, lo, hi))
            .collect();
        let no_cut = g.len() - 1;
        // Sensitivity: cut one layer to about halfway between lo and hi experts.
        let target = (lo + hi) as f64 / 2.0;
        let mut sens = vec![0.0f64; nl];
        for l in 0..nl {
            let (e, d) = &curves[l];
            let gi = (0..g.len())
                .min_by(|&a, &b| (e[a] - target).abs().total_cmp(&(e[b] - target).abs()))
                .unwrap_or(no_cut);
            let mut t = vec![g[no_cut]; nl];
            t[l] = g[gi];
            let (k, _) = self.measure(kind, &t)?;
            sens[l] = k.max(1e-7) / d[gi].max(1e-6);
            log(format!(
                "  {} layer {l} alone at {:.2} ({:.2} experts, dropped weight {:.3}): KLD {k:.5}",
                kind.name(),
                g[gi],
                e[gi],
                d[gi]
            ));
        }
        let alloc = |lambda: f64| -> Vec<f32> {
            (0..nl)
                .map(|l| {
                    let (e, d) = &curves[l];
                    let cost = |i: usize| e[i] + lambda * sens[l] * d[i];
                    // ties go to the later (safer) threshold
                    let best = (0..g.len())
                        .rev()
                        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
                        .unwrap_or(no_cut);
                    g[best]
                })
                .collect()
        };
        // Bisect log(λ): larger λ keeps more experts and lowers the KLD.
        let (mut l_bad, mut l_good) = (-2.0f64, 7.0f64);
        let mut best: Option<Candidate> = None;
        for _ in 0..9 {
            let mid = (l_bad + l_good) / 2.0;
            let t = alloc(10f64.powf(mid));
            let (k, a) = self.measure(kind, &t)?;
            log(format!(
                "  {} per-layer λ=1e{mid:.2} [{}]: KLD {k:.5}, {a:.3} experts/token",
                kind.name(),
                t.iter()
                    .map(|v| format!("{v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            if self.fits(k) {
                l_good = mid;
                if best.as_ref().is_none_or(|b| a < b.avg_experts) {
                    best = Some(Candidate {
                        kind,
                        method: "per-layer",
                        thresholds: t,
                        kld: k,
                        avg_experts: a,
                    });
                }
            } else {
                l_bad = mid;
            }
        }
        match best {
            Some(b) => Ok(b),
            None => {
                let t = vec![g[no_cut]; nl];
                let (kld, avg_experts) = self.measure(kind, &t)?;
                Ok(Candidate {
                    kind,
                    method: "per-layer",
                    thresholds: t,
                    kld,
                    avg_experts,
                })
            }
        }
    }
}

/// Learns the rule over `chunks` (each `n_ctx` tokens, at least 8) of calibration text. `log`
/// receives progress lines.
pub fn calibrate(
    model: &Model,
    chunks: Vec<Vec<u32>>,
    opts: CalibrateOptions,
    log: &mut dyn FnMut(String),
) -> Result<CalibrationReport> {
    let hp = &model.hp;
    if hp.n_expert == 0 {
        return Err(Error::Invalid(
            "calibration is for Mixture-of-Experts models; this model has no experts".into(),
        ));
    }
    let (lo, hi) = (opts.min_experts, opts.max_experts);
    if lo == 0 || hi > hp.n_expert || lo >= hi {
        return Err(Error::Invalid(format!(
            "the experts per token must range over at least two counts between 1 and {}; got {lo} to {hi}",
            hp.n_expert
        )));
    }
    if !(opts.kld_budget.is_finite() && opts.kld_budget > 0.0) {
        return Err(Error::Invalid(format!(
            "--kld-budget {}: must be a positive number",
            opts.kld_budget
        )));
    }
    let n_ctx = chunks.first().map_or(0, |c| c.len());
    if n_ctx < 8 || chunks.iter().any(|c| c.len() != n_ctx) {
        return Err(Error::Invalid(
            "the calibration text needs at least one chunk of 8 or more tokens".into(),
        ));
    }
    if opts.kinds.is_empty() {
        return Err(Error::Invalid("no rule kind to calibrate".into()));
    }

    // The reference: the model's own expert count, with router probabilities recorded.
    let nv = hp.n_vocab;
    let mut s = Session::new(model, n_ctx, opts.n_batch)?;
    s.moe.stats.trace = Some(Vec::new());
    let mut rows = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        s.clear();
        let logits = s.eval_all(chunk)?;
        let mut r = Vec::with_capacity(scored(n_ctx).len() * nv);
        for j in scored(n_ctx) {
            r.extend(log_softmax(&logits[j * nv..(j + 1) * nv]));
        }
        rows.push(r);
    }
    let expert_share: Vec<f32> = s.moe.stats.expert_share().concat();
    let trace = s.moe.stats.trace.take().unwrap_or_default();
    if trace.len() != hp.n_layer {
        return Err(Error::Invalid(
            "the reference run recorded no router probabilities for some layer".into(),
        ));
    }
    let n_scored = chunks.len() * scored(n_ctx).len();
    log(format!(
        "reference: {} chunks of {n_ctx} tokens at {} experts/token, {n_scored} tokens scored",
        chunks.len(),
        hp.n_expert_used
    ));
    let mut c = Calibrator {
        model,
        reference: Reference {
            chunks,
            rows,
            trace,
        },
        opts: opts.clone(),
        cache: HashMap::new(),
        n_scored,
    };
    let mut candidates = Vec::new();
    for &kind in &opts.kinds {
        for cand in [c.uniform(kind, log)?, c.per_layer(kind, log)?] {
            log(format!(
                "{} {}: KLD {:.5} at {:.3} experts/token",
                cand.kind.name(),
                cand.method,
                cand.kld,
                cand.avg_experts
            ));
            candidates.push(cand);
        }
    }
    let best = candidates
        .iter()
        .filter(|c| c.kld <= opts.kld_budget)
        .min_by(|a, b| {
            a.avg_experts
                .total_cmp(&b.avg_experts)
                .then(a.kld.total_cmp(&b.kld))
        })
        .unwrap_or(&candidates[0])
        .clone();
    Ok(CalibrationReport {
        best: MoeCalibration {
            kind: best.kind,
            thresholds: best.thresholds.clone(),
            min_experts: lo,
            max_experts: hi,
            kld_budget: opts.kld_budget as f32,
            calib_kld: best.kld as f32,
            calib_avg_experts: best.avg_experts as f32,
            calib_tokens: n_scored.min(u32::MAX as usize) as u32,
            calib_text: String::new(),
            expert_share: if expert_share.len() == hp.n_layer * hp.n_expert {
                expert_share
            } else {
                Vec::new()
            },
        },
        candidates,
        n_evals: c.cache.len(),
        n_scored,
    })
}

/// Learns the KV summary's slots (`--kv-summary M`): the model reads `chunks` of calibration
/// text with full attention while every layer's raw (pre-RoPE) keys are recorded, then k-means
/// gives `n_slot` centroids per layer and KV head. The first `skip` tokens of each chunk (the
/// sinks, which never reach the summary) are left out.
pub fn calibrate_kv_summary(
    model: &Model,
    chunks: &[Vec<u32>],
    n_slot: usize,
    skip: usize,
    n_batch: usize,
    log: &mut dyn FnMut(String),
) -> Result<KvSummary> {
    let hp = &model.hp;
    let n_ctx = chunks.first().map_or(0, |c| c.len());
    if n_slot == 0 || n_ctx <= skip || chunks.iter().any(|c| c.len() != n_ctx) {
        return Err(Error::Invalid(format!(
            "--kv-summary {n_slot}: needs at least 1 slot and chunks longer than {skip} tokens"
        )));
    }
    let mut s = Session::new(model, n_ctx, n_batch)?;
    let stream = StreamConfig {
        window: n_ctx,
        sinks: skip,
        sink_pos: SinkPos::Cache,
        summary: None,
        reference: false,
    };
    s.set_kv(KvTypes::default(), Some(stream))?;
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let mut keys: Vec<Vec<f32>> = vec![Vec::new(); hp.n_layer];
    for (i, chunk) in chunks.iter().enumerate() {
        s.clear();
        s.kv.record_keys();
        s.eval(chunk)?;
        for (il, k) in keys.iter_mut().enumerate() {
            let rec = s.kv.take_keys(il);
            k.extend_from_slice(&rec[skip.min(rec.len() / kv_dim) * kv_dim..]);
        }
        log(format!(
            "keys of chunk {} of {} recorded",
            i + 1,
            chunks.len()
        ));
    }
    if keys.iter().any(|k| k.len() / kv_dim < n_slot) {
        return Err(Error::Invalid(format!(
            "--kv-summary {n_slot}: the calibration text gave fewer keys than slots"
        )));
    }
    let hd = hp.head_dim;
    // Per (layer, KV head): that head's keys, clustered.
    let cents: Vec<Vec<f32>> = (0..hp.n_layer * hp.n_head_kv)
        .into_par_iter()
        .map(|i| {
            let (il, g) = (i / hp.n_head_kv, i % hp.n_head_kv);
            let x: Vec<f32> = keys[il]
                .chunks_exact(kv_dim)
                .flat_map(|r| r[g * hd..(g + 1) * hd].iter().copied())
                .collect();
            kmeans(&x, hd, n_slot, 12, 1 + i as u64)
        })
        .collect();
    let n_keys = keys[0].len() / kv_dim;
    log(format!(
        "k-means: {n_slot} slots per KV head from {n_keys} keys per layer"
    ));
    Ok(KvSummary {
        n_slot,
        centroids: cents.concat(),
        calib_tokens: n_keys.min(u32::MAX as usize) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_curve_counts_experts_and_dropped_weight() {
        // two tokens, 4 experts: one confident, one flat
        let trace = [0.7, 0.1, 0.1, 0.1, 0.25, 0.25, 0.25, 0.25];
        let (e, d) = layer_curve(&trace, 4, CalibKind::TopP, &[0.5, 1.0], 1, 2);
        // 0.5: token 1 keeps 1 (drops 0.1/0.8), token 2 keeps 2 (drops nothing)
        assert!((e[0] - 1.5).abs() < 1e-9);
        assert!((d[0] - 0.125 / 2.0).abs() < 1e-6);
        // 1.0 keeps the maximum, 2, for both
        assert!((e[1] - 2.0).abs() < 1e-9);
        assert!(d[1].abs() < 1e-9);
        let g = grid(CalibKind::Ratio);
        assert_eq!((g[0], g[g.len() - 1]), (1.0, CalibKind::Ratio.no_cut()));
        let g = grid(CalibKind::TopP);
        assert_eq!(g[g.len() - 1], CalibKind::TopP.no_cut());
    }
}
