//! The importance matrix (`dsrun imatrix`), computed as llama.cpp's `llama-imatrix` computes it:
//! for every weight matrix that multiplies activations in the repeating layers, the sum over the
//! calibration tokens of each input column squared (and the plain sum), and how many tokens
//! went through it, per expert for stacked expert tensors. llama.cpp's quantizers weigh each
//! weight's rounding error by `sum2 / count` of its column (`quant_weights`).
//!
//! The text is cut into chunks of `n_ctx` tokens (the first replaced by BOS where the model adds
//! one), each evaluated from an empty cache by dsrun's own forward pass with an observer
//! (`model::activations`) on the inputs of the matrix products.
//!
//! - [`file`]: the GGUF and legacy `.dat` files.

pub mod file;

use crate::engine::{Model, Session};
use crate::error::{Error, Result};
use crate::model::activations::{self, Input};
use crate::perplexity::chunks;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// What was gathered for one weight: (n_mat, n_cols) sums, n_mat = 1 or the expert count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Sum over tokens of each input column squared: (n_mat, n_cols).
    pub sum2: Vec<f32>,
    /// Sum over tokens of each input column (empty in legacy files): (n_mat, n_cols).
    pub sum: Vec<f32>,
    /// Tokens seen, per matrix (legacy files: one `ncall`).
    pub counts: Vec<i64>,
}

impl Entry {
    pub fn n_cols(&self) -> usize {
        self.sum2.len() / self.counts.len().max(1)
    }
}

/// An importance matrix, computed or read from a file.
#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    /// By weight name (`blk.0.attn_q.weight`), sorted as llama.cpp stores them.
    pub entries: BTreeMap<String, Entry>,
    /// The calibration files it was computed from.
    pub datasets: Vec<String>,
    /// Chunks evaluated, and tokens per chunk.
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// Read from a legacy `.dat` file: `sum2` holds `sum2 / count * ncall`, `counts` one `ncall`.
    pub legacy: bool,
    /// A GGUF file with the `imatrix.*` keys llama-quantize requires.
    pub has_metadata: bool,
}

impl Imatrix {
    /// The importance of each input column as llama-quantize hands it to ggml's quantizers:
    /// `sum2 / count` per expert (1 where an expert saw no token); legacy files: `sum2 / ncall`.
    pub fn quant_weights(&self) -> HashMap<String, Vec<f32>> {
        self.entries
            .iter()
            .map(|(name, e)| {
                let v = if self.legacy {
                    let ncall = e.counts.first().copied().unwrap_or(0);
                    if ncall > 0 {
                        e.sum2.iter().map(|&s| s / ncall as f32).collect()
                    } else {
                        e.sum2.clone()
                    }
                } else {
                    let n = e.n_cols().max(1);
                    e.sum2
                        .chunks(n)
                        .zip(&e.counts)
                        .flat_map(|(row, &c)| {
                            let c = c as f32;
                            row.iter().map(move |&s| if c > 0.0 { s / c } else { 1.0 })
                        })
                        .collect()
                };
                (name.clone(), v)
            })
            .collect()
    }
}

/// How to compute an importance matrix (llama-imatrix's flags).
#[derive(Debug, Clone)]
pub struct ImatrixOptions {
    /// Tokens per chunk (`-c`, 512 as llama-imatrix).
    pub n_ctx: usize,
    /// At most this many chunks (`--chunks`); all the text gives otherwise.
    pub n_chunks: Option<usize>,
    /// Tokens per forward batch (`-b`, at most `n_ctx`).
    pub n_batch: usize,
    /// Also gather `output.weight`'s inputs (`--process-output`).
    pub process_output: bool,
    /// Stored in the file as the dataset.
    pub dataset: String,
}

impl Default for ImatrixOptions {
    fn default() -> Self {
        ImatrixOptions {
            n_ctx: 512,
            n_chunks: None,
            n_batch: 512,
            process_output: false,
            dataset: String::new(),
        }
    }
}

/// llama-imatrix skips plain products of fewer than 16 tokens (small batches).
const MIN_TOKENS: usize = 16;

/// The accumulator the observer feeds.
#[derive(Default)]
struct Collector {
    entries: BTreeMap<String, Entry>,
    process_output: bool,
    /// The first weight whose sums stopped being finite.
    non_finite: Option<String>,
}

impl Collector {
    fn wants(&self, name: &str) -> bool {
        name.starts_with("blk.")
            || (self.process_output && (name == "output.weight" || name == "token_embd.weight"))
    }

    fn observe(&mut self, i: &Input) {
        if !self.wants(i.weight) || i.n_tok == 0 {
            return;
        }
        let (mat, n_mat) = match i.expert {
            Some((x, n)) => (x, n),
            None if i.n_tok < MIN_TOKENS => return,
            None => (0, 1),
        };
        let n_cols = i.x.len() / i.n_tok;
        let e = self
            .entries
            .entry(i.weight.to_string())
            .or_insert_with(|| Entry {
                sum2: vec![0.0; n_cols * n_mat],
                sum: vec![0.0; n_cols * n_mat],
                counts: vec![0; n_mat],
            });
        if e.counts.len() != n_mat || e.sum2.len() != n_cols * n_mat || mat >= n_mat {
            self.non_finite
                .get_or_insert_with(|| format!("{}: inputs of inconsistent shapes", i.weight));
            return;
        }
        let acc = &mut e.sum2[mat * n_cols..(mat + 1) * n_cols];
        let act = &mut e.sum[mat * n_cols..(mat + 1) * n_cols];
        for row in i.x.chunks_exact(n_cols) {
            for ((a, s), &x) in acc.iter_mut().zip(act.iter_mut()).zip(row) {
                *a += x * x;
                *s += x;
            }
        }
        e.counts[mat] += i.n_tok as i64;
        if !acc.iter().all(|v| v.is_finite()) {
            self.non_finite
                .get_or_insert_with(|| format!("{}: non-finite values", i.weight));
        }
    }
}

/// Removes the observer however `gather` leaves (an error, a panic in the forward pass).
struct Uninstall;
impl Drop for Uninstall {
    fn drop(&mut self) {
        activations::set_observer(None);
    }
}

/// Runs `f` with an observer on this thread that sums the inputs of every matrix product of the
/// repeating layers (and of the output with `process_output`), as `compute` does; returns the
/// sums by weight name and what `f` returned.
pub fn gather<R>(
    process_output: bool,
    f: impl FnOnce() -> Result<R>,
) -> Result<(BTreeMap<String, Entry>, R)> {
    let collector = Rc::new(RefCell::new(Collector {
        process_output,
        ..Collector::default()
    }));
    let c = collector.clone();
    activations::set_observer(Some(Box::new(move |i: &Input| c.borrow_mut().observe(i))));
    let uninstall = Uninstall;
    let r = f();
    drop(uninstall);
    let r = r?;
    let mut c = collector.borrow_mut();
    if let Some(m) = &c.non_finite {
        return Err(Error::Invalid(format!("importance matrix: {m}")));
    }
    Ok((std::mem::take(&mut c.entries), r))
}

/// Computes the importance matrix of `model` on `text`; `progress(done, total)` after each chunk.
pub fn compute(
    model: &Model,
    text: &str,
    opts: &ImatrixOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Imatrix> {
    let n_ctx = opts.n_ctx;
    if n_ctx < 2 {
        return Err(Error::Invalid(
            "the chunk size (-c) must be at least 2".into(),
        ));
    }
    let tok = &model.tokenizer;
    let tokens = tok.encode(text, true, false)?;
    if tokens.len() < 2 * n_ctx {
        return Err(Error::Invalid(format!(
            "the text is {} tokens; an importance matrix with -c {n_ctx} needs at least {} \
             (2 x -c, as llama-imatrix)",
            tokens.len(),
            2 * n_ctx
        )));
    }
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let chunks = chunks(&tokens, n_ctx, opts.n_chunks, bos);
    if chunks.is_empty() {
        return Err(Error::Invalid("--chunks 0: nothing to compute".into()));
    }
    let mut session = Session::new(model, n_ctx, opts.n_batch.clamp(1, n_ctx))?;
    let (entries, ()) = gather(opts.process_output, || {
        for (i, chunk) in chunks.iter().enumerate() {
            session.clear();
            if opts.process_output {
                session.eval_all(chunk)?;
            } else {
                session.eval(chunk)?;
            }
            progress(i + 1, chunks.len());
        }
        Ok(())
    })?;
    Ok(Imatrix {
        entries,
        datasets: if opts.dataset.is_empty() {
            Vec::new()
        } else {
            vec![opts.dataset.clone()]
        },
        chunk_count: chunks.len() as u32,
        chunk_size: n_ctx as u32,
        legacy: false,
        has_metadata: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_sums_per_expert_and_skips_small_batches() {
        let mut c = Collector::default();
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect(); // 16 tokens of 2 columns
        c.observe(&Input {
            weight: "blk.0.attn_q.weight",
            expert: None,
            x: &x,
            n_tok: 16,
        });
        c.observe(&Input {
            weight: "blk.0.attn_k.weight",
            expert: None,
            x: &x[..30],
            n_tok: 15,
        });
        c.observe(&Input {
            weight: "output.weight",
            expert: None,
            x: &x,
            n_tok: 16,
        });
        c.observe(&Input {
            weight: "blk.0.ffn_up_exps.weight",
            expert: Some((2, 3)),
            x: &[1.0, -2.0],
            n_tok: 1,
        });
        assert_eq!(c.entries.len(), 2);
        let q = &c.entries["blk.0.attn_q.weight"];
        assert_eq!(q.counts, vec![16]);
        let even: f32 = (0..16).map(|i| ((2 * i) as f32).powi(2)).sum();
        assert_eq!(q.sum2[0], even);
        let up = &c.entries["blk.0.ffn_up_exps.weight"];
        assert_eq!(up.counts, vec![0, 0, 1]);
        assert_eq!(up.sum2, vec![0.0, 0.0, 0.0, 0.0, 1.0, 4.0]);
        assert_eq!(up.sum, vec![0.0, 0.0, 0.0, 0.0, 1.0, -2.0]);
        assert!(c.non_finite.is_none());
    }
}
