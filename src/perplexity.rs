//! Perplexity as llama-perplexity computes it: the text is cut into chunks of `n_ctx` tokens,
//! the first token of each chunk is replaced by BOS where the model uses one, each chunk is
//! evaluated from an empty cache, and only the second half of each chunk is scored (so every
//! scored token has at least n_ctx/2 tokens of context).

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
