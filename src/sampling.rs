//! Choosing the next token from logits: greedy, or llama.cpp's default chain — repetition
//! penalty, top-k, top-p, min-p, temperature, then a seeded random draw — so a seed reproduces
//! a run exactly.

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// 0 or below: greedy.
    pub temp: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1.0: off.
    pub top_p: f32,
    /// 0.0: off.
    pub min_p: f32,
    /// 1.0: off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults.
    fn default() -> Self {
        SamplerConfig {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5eed,
        }
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: u64,
    recent: Vec<u32>,
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
        Sampler {
            cfg,
            rng,
            recent: Vec::new(),
        }
    }

    /// splitmix64 → uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Records a token of the context (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, tok: u32) {
        self.recent.push(tok);
        let n = self.cfg.repeat_last_n;
        if self.recent.len() > 2 * n.max(1) {
            self.recent.drain(..self.recent.len() - n);
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut logits = logits.to_vec();
        let c = self.cfg.clone();
        if c.repeat_penalty != 1.0 && c.repeat_last_n > 0 {
            let start = self.recent.len().saturating_sub(c.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &self.recent[start..] {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / c.repeat_penalty
                        } else {
                            *l * c.repeat_penalty
                        };
                    }
                }
            }
        }
        if c.temp <= 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, highest first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if c.top_k > 0 {
            cand.truncate(c.top_k.max(1));
        }
        let probs = |cand: &[(u32, f32)], t: f32| -> Vec<f32> {
            let max = cand[0].1;
            let e: Vec<f32> = cand.iter().map(|&(_, l)| ((l - max) / t).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        };
        if c.top_p < 1.0 {
            let p = probs(&cand, 1.0);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, &pi) in p.iter().enumerate() {
                cum += pi;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            let p = probs(&cand, 1.0);
            let thresh = p[0] * c.min_p;
            let keep = p.iter().take_while(|&&pi| pi >= thresh).count();
            cand.truncate(keep.max(1));
        }
        let p = probs(&cand, c.temp);
        let r = self.uniform() as f32;
        let mut cum = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            cum += pi;
            if r < cum {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded() {
        let logits = vec![0.1, 2.0, 1.9, -1.0, 0.5];
        let mut g = Sampler::new(SamplerConfig {
            temp: 0.0,
            ..Default::default()
        });
        assert_eq!(g.sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                top_k: 0,
                min_p: 0.0,
                top_p: 1.0,
                temp: 1.0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).iter().all(|&t| t < 5));
    }

    #[test]
    fn top_k_one_is_greedy_and_penalty_applies() {
        let logits = vec![0.1, 2.0, 1.9];
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplerConfig {
            temp: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        s.accept(1);
        assert_eq!(s.sample(&logits), 2);
    }
}
