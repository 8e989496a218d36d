//! The engine: a loaded model (hyperparameters, weights, tokenizer) and sessions over it that
//! keep a KV cache, evaluate prompts in batches and generate tokens. Nothing here prints; the
//! caller receives tokens through a callback and timings in `GenStats`.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gpu::{GpuContext, GpuModel, GpuOptions, GpuSession};
use crate::model::forward::forward_moe;
use crate::model::kv_window::StreamConfig;
use crate::model::moe_calibration::MoeCalibration;
use crate::model::moe_select::{MoeConfig, MoeState};
use crate::model::{HParams, KvCache, KvTypes, Weights};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A model ready to run, borrowing its tensors from the mapped file.
pub struct Model<'a> {
    pub file: &'a GgufFile,
    pub hp: HParams,
    pub weights: Weights<'a>,
    pub tokenizer: Tokenizer,
    /// The calibrated expert-count rule stored in the file by `dsrun calibrate`, if any.
    pub moe_calibration: Option<MoeCalibration>,
    /// The weights on a GPU, when the model runs there (`--device gpu`).
    pub gpu: Option<Arc<GpuModel>>,
}

impl<'a> Model<'a> {
    pub fn load(file: &'a GgufFile) -> Result<Model<'a>> {
        file.check_supported()?;
        let hp = HParams::from_gguf(file)?;
        let weights = Weights::load(file, &hp)?;
        let tokenizer = Tokenizer::from_gguf(file)?;
        if tokenizer.n_vocab() != hp.n_vocab {
            return Err(Error::Invalid(format!(
                "the tokenizer has {} tokens but the output layer {}",
                tokenizer.n_vocab(),
                hp.n_vocab
            )));
        }
        let moe_calibration = MoeCalibration::from_gguf(file)?;
        if let Some(c) = &moe_calibration {
            c.check(hp.n_expert, hp.n_layer)?;
        }
        Ok(Model {
            file,
            hp,
            weights,
            tokenizer,
            moe_calibration,
            gpu: None,
        })
    }

    /// Uploads the weights to `ctx`'s device; sessions made afterwards run there.
    /// The expert cache starts from the calibration's expert shares when the file has them.
    pub fn use_gpu(&mut self, ctx: Arc<GpuContext>, mut opts: GpuOptions) -> Result<()> {
        if opts.expert_share.is_none() {
            opts.expert_share = self
                .moe_calibration
                .as_ref()
                .filter(|c| !c.expert_share.is_empty())
                .map(|c| c.expert_share.clone());
        }
        let g = GpuModel::new(ctx, &self.hp, &self.weights, opts)?;
        self.gpu = Some(Arc::new(g));
        Ok(())
    }
}

/// Prompt and generation timings of one call.
#[derive(Debug, Clone, Default)]
pub struct GenStats {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
    /// Why generation stopped.
    pub stop: StopReason,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    Limit,
    EndOfGeneration,
    ContextFull,
    Caller,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        self.n_prompt as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    pub fn gen_tps(&self) -> f64 {
        self.n_gen as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// One conversation or stream with its own KV cache.
pub struct Session<'m, 'a> {
    pub model: &'m Model<'a>,
    pub kv: KvCache,
    pub n_batch: usize,
    /// Tokens whose K/V are in the cache, in order.
    pub tokens: Vec<u32>,
    /// How many experts each token uses (the model's own count by default), and the counts.
    pub moe: MoeState,
    /// The KV cache and activations on the GPU when the model runs there.
    pub gpu: Option<GpuSession>,
}

impl<'m, 'a> Session<'m, 'a> {
    pub fn new(model: &'m Model<'a>, n_ctx: usize, n_batch: usize) -> Result<Self> {
        if n_ctx == 0 {
            return Err(Error::Invalid(
                "the context size (-c) must be at least 1".into(),
            ));
        }
        let hp = &model.hp;
        Ok(Session {
            model,
            kv: KvCache::with_windows(
                n_ctx,
                hp.n_head_kv * hp.head_dim,
                KvTypes::default(),
                &layer_windows(hp),
            )?,
            n_batch: n_batch.max(1),
            tokens: Vec::new(),
            moe: MoeState::default(),
            gpu: match &model.gpu {
                Some(g) => Some(GpuSession::new(g.clone(), hp, n_ctx, n_batch.max(1), None)?),
                None => None,
            },
        })
    }

    /// Stores K and V as `types` from now on (the cache starts empty again).
    pub fn set_kv_types(&mut self, types: KvTypes) -> Result<()> {
        self.set_kv(types, None)
    }

    /// Keeps K and V as `types` and, with `stream`, only sinks, a window and a summary in
    /// every layer without a native window (`kv_window`); the cache starts empty again.
    pub fn set_kv(&mut self, types: KvTypes, stream: Option<StreamConfig>) -> Result<()> {
        let hp = &self.model.hp;
        if self.gpu.is_some() && types != KvTypes::default() {
            return Err(Error::Invalid(
                "the GPU keeps its KV cache in f16 only: drop -ctk/-ctv or use --device cpu".into(),
            ));
        }
        if stream.is_some() && hp.mla.is_some() {
            return Err(Error::Invalid(
                "--kv-window is not supported for multi-head latent attention (deepseek2)".into(),
            ));
        }
        // The GPU's layers keep their own ring, sinks and summary.
        let gpu = match &self.model.gpu {
            Some(g) => {
                let (n_ctx, n_batch) = (self.kv.n_ctx, self.n_batch);
                Some(GpuSession::new(
                    g.clone(),
                    hp,
                    n_ctx,
                    n_batch,
                    stream.as_ref(),
                )?)
            }
            None => None,
        };
        let kv_dim = hp.n_head_kv * hp.head_dim;
        self.kv = KvCache::with_stream(
            self.kv.n_ctx,
            kv_dim,
            types,
            &layer_windows(hp),
            stream.map(|c| (c, hp.n_head_kv, hp.head_dim)),
        )?;
        if let Some(g) = gpu {
            self.gpu = Some(g);
        }
        self.tokens.clear();
        Ok(())
    }

    /// Sets the expert selection after checking it against the model.
    pub fn set_moe(&mut self, config: MoeConfig) -> Result<()> {
        config.validate(self.model.hp.n_expert, self.model.hp.n_layer)?;
        if self.gpu.is_some() && !config.is_model_default() {
            return Err(Error::Invalid(format!(
                "the GPU runs the model's own expert count only: a calibrated rule (in the \
                     file) or --moe-* flags need --device cpu; --moe-top-k {} selects the \
                     model's own count",
                self.model.hp.n_expert_used
            )));
        }
        self.moe.config = config;
        Ok(())
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx
    }

    pub fn clear(&mut self) {
        self.kv.clear();
        self.tokens.clear();
    }

    /// Drops cached tokens from position `n` on (all of them where sliding-window layers keep
    /// only their window: see `tokens.len()` afterwards).
    pub fn truncate(&mut self, n: usize) {
        self.kv.truncate(n);
        self.tokens.truncate(self.kv.n_past);
    }

    /// Evaluates `tokens` after the cached ones, in batches; returns the logits of the last.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(tokens)?;
        let mut logits = Vec::new();
        for batch in tokens.chunks(self.n_batch) {
            if let Some(g) = &mut self.gpu {
                let m = self.model;
                logits = g.forward(&m.hp, &m.weights, &mut self.kv, batch, false, &mut self.moe)?;
                self.kv.n_past += batch.len();
                self.tokens.extend_from_slice(batch);
                continue;
            }
            logits = forward_moe(
                &self.model.hp,
                &self.model.weights,
                &mut self.kv,
                batch,
                false,
                &mut self.moe,
            );
            self.tokens.extend_from_slice(batch);
        }
        Ok(logits)
    }

    /// Evaluates `tokens` after the cached ones and returns the logits of every one of them
    /// (n, n_vocab), as perplexity needs.
    pub fn eval_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(tokens)?;
        let mut logits = Vec::with_capacity(tokens.len() * self.model.hp.n_vocab);
        let n_batch = match &self.gpu {
            Some(g) => self.n_batch.min(g.max_out_rows),
            None => self.n_batch,
        };
        for batch in tokens.chunks(n_batch) {
            if let Some(g) = &mut self.gpu {
                let m = self.model;
                logits.extend(g.forward(
                    &m.hp,
                    &m.weights,
                    &mut self.kv,
                    batch,
                    true,
                    &mut self.moe,
                )?);
                self.kv.n_past += batch.len();
                self.tokens.extend_from_slice(batch);
                continue;
            }
            logits.extend(forward_moe(
                &self.model.hp,
                &self.model.weights,
                &mut self.kv,
                batch,
                true,
                &mut self.moe,
            ));
            self.tokens.extend_from_slice(batch);
        }
        Ok(logits)
    }

    fn check_fits(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("nothing to evaluate".into()));
        }
        if self.tokens.len() + tokens.len() > self.n_ctx() {
            return Err(Error::Invalid(format!(
                "{} tokens do not fit in the context: {} of {} are used (raise -c)",
                tokens.len(),
                self.tokens.len(),
                self.n_ctx()
            )));
        }
        let n_vocab = self.model.hp.n_vocab as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= n_vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        Ok(())
    }

    /// Evaluates the prompt, then samples up to `n_predict` tokens (unbounded if `None`), calling
    /// `on_token` with each; stops at end-of-generation, a full context, or when `on_token`
    /// breaks.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        n_predict: Option<usize>,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<GenStats> {
        let mut st = GenStats {
            n_prompt: prompt.len(),
            ..Default::default()
        };
        let t0 = Instant::now();
        for &t in prompt {
            sampler.accept(t);
        }
        let mut logits = self.eval(prompt)?;
        st.prompt_time = t0.elapsed();
        let t1 = Instant::now();
        loop {
            if n_predict.is_some_and(|n| st.n_gen >= n) {
                st.stop = StopReason::Limit;
                break;
            }
            let tok = sampler.sample(&logits);
            sampler.accept(tok);
            if self.model.tokenizer.is_eog(tok) {
                st.stop = StopReason::EndOfGeneration;
                break;
            }
            st.n_gen += 1;
            if on_token(tok).is_break() {
                st.stop = StopReason::Caller;
                break;
            }
            if self.tokens.len() >= self.n_ctx() {
                st.stop = StopReason::ContextFull;
                break;
            }
            logits = self.eval(&[tok])?;
        }
        st.gen_time = t1.elapsed();
        Ok(st)
    }
}

/// Per layer, the window a sliding-window layer's cache keeps (None: every position).
pub fn layer_windows(hp: &HParams) -> Vec<Option<usize>> {
    (0..hp.n_layer)
        .map(|il| hp.sliding_window.filter(|_| hp.is_swa_layer(il)))
        .collect()
}
