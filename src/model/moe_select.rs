//! How many experts a token uses, and which. The router's scores for one token (after the
//! architecture's own scoring: softmax for qwen3moe) and a `MoeConfig` go in; the chosen expert
//! ids, highest score first, come out. The caller then weights them by the model's own rule
//! (qwen3moe: the chosen probabilities normalised over the chosen), so a rule here never changes
//! how weights are formed, only how many experts there are.
//!
//! For other routing variants: `scores` must be non-negative and ordered as the router ranks
//! experts. Where an architecture takes the top-k of raw logits and then a softmax over the chosen
//! (mixtral), pass the softmax of all logits here (the same order, and a gate mass that top-p can
//! read), then weight the chosen by the architecture's rule; sigmoid scores (deepseek2) work as
//! they are, their mass being read as a share of their sum.
//!
//! Rules: the model's own top-k (the default, bit for bit what the file asks for), a fixed top-k,
//! top-p (the fewest experts whose share of the gate mass reaches P), and a calibrated rule with
//! one threshold per layer learned by `dsrun calibrate` (see `moe_calibration`). Every rule is
//! then clamped to `[min_experts, max_experts]`.

use super::moe_calibration::{CalibKind, MoeCalibration};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Which rule picks the number of experts.
#[derive(Debug, Clone, Default)]
pub enum MoeRule {
    /// `expert_used_count` from the file.
    #[default]
    ModelDefault,
    /// Exactly K experts (before clamping).
    TopK(usize),
    /// The fewest experts whose probabilities sum to at least P (of the total).
    TopP(f32),
    /// Per-layer thresholds learned by `dsrun calibrate`.
    Calibrated(Arc<MoeCalibration>),
}

/// Options of the expert selection, as the CLI's `--moe-*` flags set them.
#[derive(Debug, Clone, Default)]
pub struct MoeConfig {
    pub rule: MoeRule,
    /// At least this many experts per token (default 1; the calibrated rule's own otherwise).
    pub min_experts: Option<usize>,
    /// At most this many (default: all experts for top-p, the calibrated rule's own for it).
    pub max_experts: Option<usize>,
}

impl MoeConfig {
    /// The default: the model's own expert count, exactly as the file describes it.
    pub fn is_model_default(&self) -> bool {
        matches!(self.rule, MoeRule::ModelDefault)
            && self.min_experts.is_none()
            && self.max_experts.is_none()
    }

    /// Checks the options against a model with `n_expert` experts and `n_layer` layers; the
    /// errors name the flag.
    pub fn validate(&self, n_expert: usize, n_layer: usize) -> Result<()> {
        let changed = !self.is_model_default();
        if n_expert == 0 {
            if changed {
                return Err(Error::Invalid(
                    "the --moe-* options apply to Mixture-of-Experts models; this model has no experts"
                        .into(),
                ));
            }
            return Ok(());
        }
        let in_range = |flag: &str, v: usize| {
            if v == 0 || v > n_expert {
                Err(Error::Invalid(format!(
                    "{flag} {v}: must be between 1 and {n_expert} (the model's experts)"
                )))
            } else {
                Ok(())
            }
        };
        match &self.rule {
            MoeRule::ModelDefault => {}
            MoeRule::TopK(k) => in_range("--moe-top-k", *k)?,
            MoeRule::TopP(p) => {
                if !(p.is_finite() && *p > 0.0 && *p <= 1.0) {
                    return Err(Error::Invalid(format!(
                        "--moe-top-p {p}: must be above 0 and at most 1"
                    )));
                }
            }
            MoeRule::Calibrated(c) => c.check(n_expert, n_layer)?,
        }
        if let Some(v) = self.min_experts {
            in_range("--moe-min-experts", v)?;
        }
        if let Some(v) = self.max_experts {
            in_range("--moe-max-experts", v)?;
        }
        if let (Some(lo), Some(hi)) = (self.min_experts, self.max_experts) {
            if lo > hi {
                return Err(Error::Invalid(format!(
                    "--moe-min-experts {lo} is more than --moe-max-experts {hi}"
                )));
            }
        }
        Ok(())
    }

    /// The `[min, max]` experts a token may get under this config.
    pub fn bounds(&self, n_expert: usize, n_used: usize) -> (usize, usize) {
        let (lo, hi) = match &self.rule {
            MoeRule::ModelDefault => (n_used, n_used),
            MoeRule::TopK(k) => (*k, *k),
            MoeRule::TopP(_) => (1, n_expert),
            MoeRule::Calibrated(c) => (c.min_experts, c.max_experts),
        };
        // An explicit minimum above the rule's maximum raises it (`--moe-top-k 1
        // --moe-min-experts 3` is three experts); an explicit maximum lowers the rule's minimum.
        let hi = self
            .max_experts
            .unwrap_or(hi.max(self.min_experts.unwrap_or(0)))
            .clamp(1, n_expert.max(1));
        let lo = self.min_experts.unwrap_or(lo).clamp(1, hi);
        (lo, hi)
    }

    /// One line for stderr: what the selection does.
    pub fn describe(&self, n_expert: usize, n_used: usize) -> String {
        let (lo, hi) = self.bounds(n_expert, n_used);
        let range = if lo == hi {
            format!("{lo} per token")
        } else {
            format!("{lo} to {hi} per token")
        };
        match &self.rule {
            MoeRule::ModelDefault => format!("experts: the model's top-{n_used}, {range}"),
            MoeRule::TopK(k) => format!("experts: fixed top-{k}, {range}"),
            MoeRule::TopP(p) => format!("experts: top-p {p}, {range}"),
            MoeRule::Calibrated(c) => format!(
                "experts: the calibrated rule stored in the file ({}, {range}; calibrated for mean KLD {} on {} tokens: {:.4} at {:.2} experts/token)",
                c.describe_thresholds(),
                c.kld_budget,
                c.calib_tokens,
                c.calib_kld,
                c.calib_avg_experts
            ),
        }
    }
}

/// Orders expert ids by score, highest first; ties go to the lower id (as `top_k` always did).
pub fn sort_desc(scores: &[f32], idx: &mut Vec<usize>) {
    idx.clear();
    idx.extend(0..scores.len());
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
}

/// How many of the experts in `sorted` (scores, highest first) a rule keeps, before clamping.
/// `total` is the sum of all scores (1 for softmax probabilities).
fn rule_count(
    rule: &MoeRule,
    layer: usize,
    sorted: &[f32],
    total: f32,
    n_used: usize,
    hi: usize,
) -> usize {
    match rule {
        MoeRule::ModelDefault => n_used,
        MoeRule::TopK(k) => *k,
        MoeRule::TopP(p) => mass_count(sorted, p * total),
        MoeRule::Calibrated(c) => calibrated_count(c.kind, c.thresholds[layer], sorted, total, hi),
    }
}

/// How many experts the calibrated rule `kind` with threshold `t` keeps for one token, before
/// clamping: `sorted` are its scores highest first, `total` their sum, `hi` the most allowed.
pub fn calibrated_count(kind: CalibKind, t: f32, sorted: &[f32], total: f32, hi: usize) -> usize {
    match kind {
        CalibKind::TopP => mass_count(sorted, t * total),
        CalibKind::RelMass => {
            let top: f32 = sorted[..hi.min(sorted.len())].iter().sum();
            mass_count(sorted, t * top)
        }
        CalibKind::Ratio => sorted
            .iter()
            .take_while(|&&s| s >= t * sorted[0])
            .count()
            .max(1),
    }
}

/// The fewest leading entries of `sorted` whose sum reaches `target` (all of them if none does).
fn mass_count(sorted: &[f32], target: f32) -> usize {
    let mut cum = 0.0f32;
    for (i, &s) in sorted.iter().enumerate() {
        cum += s;
        if cum >= target {
            return i + 1;
        }
    }
    sorted.len()
}

/// Scratch space of `select`, kept between calls so routing allocates nothing per token.
#[derive(Debug, Default)]
pub struct SelectScratch {
    idx: Vec<usize>,
    sorted: Vec<f32>,
}

/// The experts one token uses in `layer`: ids, highest score first. `scores` are the router's
/// outputs after the architecture's scoring (non-negative; softmax probabilities for qwen3moe),
/// `n_used` the model's own `expert_used_count`.
pub fn select<'s>(
    scores: &[f32],
    layer: usize,
    n_used: usize,
    cfg: &MoeConfig,
    scratch: &'s mut SelectScratch,
) -> &'s [usize] {
    let ne = scores.len();
    sort_desc(scores, &mut scratch.idx);
    let (lo, hi) = cfg.bounds(ne, n_used);
    let n = if lo == hi {
        lo
    } else {
        scratch.sorted.clear();
        scratch
            .sorted
            .extend(scratch.idx.iter().map(|&i| scores[i]));
        let total: f32 = scratch.sorted.iter().sum();
        rule_count(&cfg.rule, layer, &scratch.sorted, total, n_used, hi).clamp(lo, hi)
    };
    &scratch.idx[..n.min(ne)]
}

/// How many experts tokens got, per layer; optionally every token's sorted router
/// probabilities, which `dsrun calibrate` learns from.
#[derive(Debug, Clone, Default)]
pub struct MoeStats {
    /// Per layer: tokens routed.
    pub tokens: Vec<u64>,
    /// Per layer: experts chosen, summed over tokens.
    pub experts: Vec<u64>,
    /// When set: per layer, each token's scores sorted highest first, normalised to sum 1,
    /// concatenated (n_token * n_expert).
    pub trace: Option<Vec<Vec<f32>>>,
    /// The GPU's VRAM expert cache (`--moe-gpu-cache`): experts served from it, experts looked
    /// up (those chosen in layers whose experts stay in RAM).
    pub vram: (u64, u64),
    /// When tracing: per layer, how often each expert was chosen.
    pub chosen: Vec<Vec<u64>>,
}

impl MoeStats {
    /// Counts one token of `layer` that used `n_chosen` experts.
    pub fn count(&mut self, layer: usize, n_chosen: usize) {
        if self.tokens.len() <= layer {
            self.tokens.resize(layer + 1, 0);
            self.experts.resize(layer + 1, 0);
        }
        self.tokens[layer] += 1;
        self.experts[layer] += n_chosen as u64;
    }

    /// Counts one token and, when tracing, keeps its sorted normalised scores.
    pub fn record(&mut self, layer: usize, scores: &[f32], chosen: &[usize]) {
        self.count(layer, chosen.len());
        if let Some(trace) = self.trace.as_mut() {
            if trace.len() <= layer {
                trace.resize(layer + 1, Vec::new());
            }
            let mut s = scores.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            let total: f32 = s.iter().sum();
            trace[layer].extend(s.iter().map(|v| v / total.max(f32::MIN_POSITIVE)));
            if self.chosen.len() <= layer {
                self.chosen.resize(layer + 1, Vec::new());
            }
            let c = &mut self.chosen[layer];
            if c.len() < scores.len() {
                c.resize(scores.len(), 0);
            }
            chosen.iter().for_each(|&x| c[x] += 1);
        }
    }

    /// Per layer, the share of counted tokens that chose each expert (from a traced run).
    pub fn expert_share(&self) -> Vec<Vec<f32>> {
        self.chosen
            .iter()
            .zip(&self.tokens)
            .map(|(c, &t)| c.iter().map(|&n| n as f32 / t.max(1) as f32).collect())
            .collect()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.experts.clear();
        if let Some(t) = self.trace.as_mut() {
            t.clear();
        }
        self.chosen.clear();
    }

    /// Mean experts per token in each layer.
    pub fn per_layer(&self) -> Vec<f64> {
        self.tokens
            .iter()
            .zip(&self.experts)
            .map(|(&t, &e)| e as f64 / t.max(1) as f64)
            .collect()
    }

    /// Mean experts per token over all layers (None when no MoE layer ran).
    pub fn average(&self) -> Option<f64> {
        let t: u64 = self.tokens.iter().sum();
        (t > 0).then(|| self.experts.iter().sum::<u64>() as f64 / t as f64)
    }

    /// "2.61 experts/token (per layer: 2.1 2.9 ...)", or None for a dense model.
    pub fn summary(&self) -> Option<String> {
        let avg = self.average()?;
        let layers: Vec<String> = self.per_layer().iter().map(|v| format!("{v:.2}")).collect();
        let vram = match self.vram {
            (_, 0) => String::new(),
            (h, n) => format!(
                ", VRAM expert cache hit rate {:.1}% ({h} of {n})",
                100.0 * h as f64 / n as f64
            ),
        };
        Some(format!(
            "{avg:.3} experts/token (per layer: {}){vram}",
            layers.join(" ")
        ))
    }
}

/// The selection config and its counters, as one forward pass needs them.
#[derive(Debug, Default)]
pub struct MoeState {
    pub config: MoeConfig,
    pub stats: MoeStats,
    pub scratch: SelectScratch,
    /// The experts' working buffers, kept between layers and calls: allocated afresh, a
    /// prompt's megabytes came back as page faults (8% of the tiny MoE's prompt time).
    pub buffers: MoeBuffers,
}

/// Stacked expert activations (see `moe::experts_batched`); contents are scratch.
#[derive(Debug, Default)]
pub struct MoeBuffers {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

impl MoeBuffers {
    /// The three buffers with at least these lengths, contents unspecified.
    pub fn get(&mut self, gate_up: usize, down: usize) -> (&mut [f32], &mut [f32], &mut [f32]) {
        for (v, n) in [
            (&mut self.gate, gate_up),
            (&mut self.up, gate_up),
            (&mut self.down, down),
        ] {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
        (
            &mut self.gate[..gate_up],
            &mut self.up[..gate_up],
            &mut self.down[..down],
        )
    }
}

impl MoeState {
    pub fn new(config: MoeConfig) -> Self {
        MoeState {
            config,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(scores: &[f32], layer: usize, n_used: usize, cfg: &MoeConfig) -> Vec<usize> {
        let mut s = SelectScratch::default();
        select(scores, layer, n_used, cfg, &mut s).to_vec()
    }

    fn cfg(rule: MoeRule) -> MoeConfig {
        MoeConfig {
            rule,
            ..Default::default()
        }
    }

    fn calibrated(kind: CalibKind, thresholds: Vec<f32>, lo: usize, hi: usize) -> MoeConfig {
        cfg(MoeRule::Calibrated(Arc::new(MoeCalibration {
            kind,
            thresholds,
            min_experts: lo,
            max_experts: hi,
            ..Default::default()
        })))
    }

    /// The probabilities and ids the old `moe_ffn` formed: top-k, then normalised in that order.
    fn old_routing(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        idx.truncate(k);
        let sum: f32 = idx.iter().map(|&x| probs[x]).sum();
        idx.iter().map(|&x| (x, probs[x] / sum)).collect()
    }

    fn random_probs(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        let mut v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 10_000) as f32 / 1000.0).exp()
            })
            .collect();
        let sum: f32 = v.iter().sum();
        v.iter_mut().for_each(|x| *x /= sum);
        v
    }

    #[test]
    fn model_default_is_the_old_routing_bit_for_bit() {
        for seed in 0..200 {
            let p = random_probs(seed, 16);
            let mut q = p.clone();
            if seed % 3 == 0 {
                q[5] = q[2]; // ties go to the lower id
            }
            for c in [
                cfg(MoeRule::ModelDefault),
                cfg(MoeRule::TopK(4)),
                // top-p 1.0 capped at the model's k reaches the same four
                MoeConfig {
                    rule: MoeRule::TopP(1.0),
                    max_experts: Some(4),
                    min_experts: Some(4),
                },
            ] {
                let sel = pick(&q, 0, 4, &c);
                let sum: f32 = sel.iter().map(|&x| q[x]).sum();
                let ours: Vec<(usize, f32)> = sel.iter().map(|&x| (x, q[x] / sum)).collect();
                let old = old_routing(&q, 4);
                assert_eq!(ours.len(), old.len());
                for (a, b) in ours.iter().zip(&old) {
                    assert_eq!(a.0, b.0);
                    assert_eq!(a.1.to_bits(), b.1.to_bits());
                }
            }
        }
    }

    #[test]
    fn fixed_top_k_and_clamps() {
        let p = [0.05, 0.4, 0.3, 0.15, 0.1];
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopK(3))), vec![1, 2, 3]);
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::ModelDefault)), vec![1, 2]);
        let c = MoeConfig {
            rule: MoeRule::ModelDefault,
            max_experts: Some(1),
            min_experts: None,
        };
        assert_eq!(pick(&p, 0, 2, &c), vec![1]);
        let c = MoeConfig {
            rule: MoeRule::TopK(1),
            min_experts: Some(3),
            max_experts: None,
        };
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2, 3]);
    }

    #[test]
    fn top_p_takes_the_fewest_that_reach_the_mass() {
        let p = [0.05, 0.4, 0.3, 0.15, 0.1];
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopP(0.4))), vec![1]);
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopP(0.41))), vec![1, 2]);
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopP(0.7))), vec![1, 2]);
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopP(0.8))), vec![1, 2, 3]);
        assert_eq!(pick(&p, 0, 2, &cfg(MoeRule::TopP(1.0))).len(), 5);
        // unnormalised scores: the mass is a share of their total
        let s: Vec<f32> = p.iter().map(|v| v * 10.0).collect();
        assert_eq!(pick(&s, 0, 2, &cfg(MoeRule::TopP(0.7))), vec![1, 2]);
        let c = MoeConfig {
            rule: MoeRule::TopP(0.99),
            max_experts: Some(2),
            min_experts: None,
        };
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2]);
        let c = MoeConfig {
            rule: MoeRule::TopP(0.1),
            max_experts: None,
            min_experts: Some(2),
        };
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2]);
    }

    #[test]
    fn calibrated_rules_use_their_layer_threshold() {
        let p = [0.05, 0.4, 0.3, 0.15, 0.1];
        // layer 0 cuts at 40% of the mass, layer 1 at 80%
        let c = calibrated(CalibKind::TopP, vec![0.4, 0.8], 1, 4);
        assert_eq!(pick(&p, 0, 2, &c), vec![1]);
        assert_eq!(pick(&p, 1, 2, &c), vec![1, 2, 3]);
        // relative to the top-3 mass 0.85: 0.8 * 0.85 = 0.68 -> 2 experts
        let c = calibrated(CalibKind::RelMass, vec![0.8, 1.0], 1, 3);
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2]);
        assert_eq!(pick(&p, 1, 2, &c), vec![1, 2, 3]);
        // keep experts within a ratio of the best: 0.5 * 0.4 = 0.2 -> 0.4, 0.3
        let c = calibrated(CalibKind::Ratio, vec![0.5, 0.0], 1, 4);
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2]);
        assert_eq!(pick(&p, 1, 2, &c), vec![1, 2, 3, 4]);
        // the calibrated minimum holds
        let c = calibrated(CalibKind::Ratio, vec![1.0], 2, 4);
        assert_eq!(pick(&p, 0, 2, &c), vec![1, 2]);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = |c: MoeConfig| c.validate(16, 6).unwrap_err().to_string();
        assert!(err(cfg(MoeRule::TopK(0))).contains("--moe-top-k 0"));
        assert!(err(cfg(MoeRule::TopK(17))).contains("between 1 and 16"));
        for p in [0.0, -0.5, 1.5, f32::NAN] {
            assert!(err(cfg(MoeRule::TopP(p))).contains("--moe-top-p"));
        }
        let e = err(MoeConfig {
            rule: MoeRule::ModelDefault,
            min_experts: Some(5),
            max_experts: Some(2),
        });
        assert!(
            e.contains("--moe-min-experts 5 is more than --moe-max-experts 2"),
            "{e}"
        );
        let e = err(MoeConfig {
            rule: MoeRule::ModelDefault,
            min_experts: None,
            max_experts: Some(0),
        });
        assert!(e.contains("--moe-max-experts 0"), "{e}");
        let e = cfg(MoeRule::TopK(2))
            .validate(0, 6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no experts"), "{e}");
        assert!(cfg(MoeRule::ModelDefault).validate(0, 6).is_ok());
        assert!(cfg(MoeRule::TopP(1.0)).validate(16, 6).is_ok());
        let c = calibrated(CalibKind::TopP, vec![0.5; 5], 1, 4);
        assert!(err(c).contains("dsrun.moe.thresholds"));
    }

    #[test]
    fn stats_count_and_trace() {
        let mut st = MoeStats {
            trace: Some(Vec::new()),
            ..Default::default()
        };
        st.record(1, &[0.5, 1.5], &[1]);
        st.record(1, &[1.0, 1.0], &[0, 1]);
        assert_eq!(st.per_layer(), vec![0.0, 1.5]);
        assert_eq!(st.average(), Some(1.5));
        assert_eq!(st.trace.as_ref().unwrap()[1], vec![0.75, 0.25, 0.5, 0.5]);
        assert!(st.summary().unwrap().starts_with("1.500 experts/token"));
        st.clear();
        assert_eq!(st.average(), None);
    }
}
