//! Perplexity as llama-perplexity computes it: the text is cut into chunks of `n_ctx` tokens,
//! the first token of each chunk is replaced by BOS where the model uses one, each chunk is
//! evaluated from an empty cache, and only the second half of each chunk is scored (so every
//! scored token has at least n_ctx/2 tokens of context).

pub mod base_file;

/// Running totals over scored tokens.
#[derive(Debug, Clone, Default)]
pub struct PplStats {
    pub count: u64,
    pub nll: f64,
    pub nll2: f64,
}

impl PplStats {
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// llama.cpp's error estimate: the standard error of the mean NLL, scaled by the PPL.
    pub fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// `log softmax(logits)[tok]`, accumulated in f64 as llama.cpp does.
pub fn log_prob(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[tok as usize] as f64 - max - sum.ln()
}

/// The chunks of `tokens` that are scored: `min(n_chunks, len / n_ctx)` slices of `n_ctx`, with
/// the first token replaced by `bos` when given.
pub fn chunks(
    tokens: &[u32],
    n_ctx: usize,
    n_chunks: Option<usize>,
    bos: Option<u32>,
) -> Vec<Vec<u32>> {
    let avail = tokens.len() / n_ctx.max(1);
    let n = n_chunks.map_or(avail, |c| c.min(avail));
    (0..n)
        .map(|i| {
            let mut c = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect()
}

/// Scores one chunk given all its logits (n_ctx, n_vocab): positions n_ctx/2 .. n_ctx-2 predict
/// the next token. Returns the per-token NLLs.
pub fn score_chunk(chunk: &[u32], logits: &[f32], n_vocab: usize) -> Vec<f64> {
    let n_ctx = chunk.len();
    (n_ctx / 2..n_ctx - 1)
        .map(|j| -log_prob(&logits[j * n_vocab..(j + 1) * n_vocab], chunk[j + 1]))
        .collect()
}

impl PplStats {
    pub fn add(&mut self, nlls: &[f64]) {
        for &v in nlls {
            self.count += 1;
            self.nll += v;
            self.nll2 += v * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_vocab_size() {
        let n_vocab = 10;
        let chunk: Vec<u32> = (0..8).map(|i| i % 10).collect();
        let logits = vec![0.0f32; 8 * n_vocab];
        let mut s = PplStats::default();
        s.add(&score_chunk(&chunk, &logits, n_vocab));
        assert_eq!(s.count, 3);
        assert!((s.ppl() - 10.0).abs() < 1e-9);
        assert_eq!(s.ppl_err(), 0.0);
    }

    #[test]
    fn chunking_replaces_bos() {
        let toks: Vec<u32> = (10..30).collect();
        let c = chunks(&toks, 8, None, Some(1));
        assert_eq!(c.len(), 2);
        assert_eq!(c[1][0], 1);
        assert_eq!(c[1][1], 19);
        assert_eq!(chunks(&toks, 8, Some(1), None).len(), 1);
    }
}

/// KL divergence of the log-probabilities `cur` from the reference `base` (both log-softmax
/// over the vocabulary): `sum p_base * (log p_base - log p_cur)`.
pub fn kl_divergence(base_logp: &[f32], cur_logp: &[f32]) -> f64 {
    base_logp
        .iter()
        .zip(cur_logp)
        .map(|(&b, &c)| {
            let p = (b as f64).exp();
            if p > 0.0 {
                p * (b as f64 - c as f64)
            } else {
                0.0
            }
        })
        .sum()
}

/// `log softmax(logits)` as f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// Summary of per-token KL divergences and top-token agreement.
#[derive(Debug, Clone, Default)]
pub struct KldStats {
    pub klds: Vec<f64>,
    pub same_top: u64,
}

impl KldStats {
    pub fn mean(&self) -> f64 {
        self.klds.iter().sum::<f64>() / self.klds.len().max(1) as f64
    }

    /// Standard error of the mean.
    pub fn mean_err(&self) -> f64 {
        let n = self.klds.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let m = self.mean();
        let var = self.klds.iter().map(|k| (k - m).powi(2)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    }

    /// The q-quantile (0..=1) of the per-token KLDs.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.klds.is_empty() {
            return 0.0;
        }
        let mut v = self.klds.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i]
    }

    pub fn same_top_frac(&self) -> f64 {
        self.same_top as f64 / self.klds.len().max(1) as f64
    }
}

#[cfg(test)]
mod kld_tests {
    use super::*;

    #[test]
    fn kld_is_zero_for_equal_and_positive_otherwise() {
        let a = log_softmax(&[1.0, 2.0, 3.0]);
        let b = log_softmax(&[3.0, 2.0, 1.0]);
        assert!(kl_divergence(&a, &a).abs() < 1e-9);
        assert!(kl_divergence(&a, &b) > 0.1);
        let s = KldStats {
            klds: vec![0.0, 1.0, 2.0, 3.0],
            same_top: 2,
        };
        assert_eq!(s.mean(), 1.5);
        assert_eq!(s.quantile(0.5), 2.0);
        assert_eq!(s.same_top_frac(), 0.5);
    }
}
