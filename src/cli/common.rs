//! Options shared by the subcommands that run a model.

use clap::Args;
use dsrun::engine::{Model, Session};
use dsrun::model::moe_select::{MoeConfig, MoeRule};
use dsrun::sampling::SamplerConfig;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Context size in tokens [default: 4096; perplexity: 512] (0: the model's training context)
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Tokens per batch when evaluating a prompt
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// Threads (default: all cores)
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub moe: MoeArgs,
    #[command(flatten)]
    pub kv: super::kv::KvArgs,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
    #[command(flatten)]
    pub rope: super::rope::RopeArgs,
}

impl ModelArgs {
    /// Sets the worker pool size once for the process.
    pub fn init_threads(&self) {
        if let Some(t) = self.threads {
            // An error only means a pool exists already, which keeps its size.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(t.max(1))
                .build_global();
        }
    }

    /// The context size: `-c`, else `default`; 0 means the model's training context.
    pub fn n_ctx(&self, default: usize, n_ctx_train: usize) -> usize {
        match self.ctx_size.unwrap_or(default) {
            0 => n_ctx_train,
            n => n,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Temperature (0: greedy)
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the K most likely tokens (0: off)
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this probability mass (1.0: off)
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top token's probability (0.0: off)
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise repeats of recent tokens (1.0: off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty considers
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: a new one each run, printed with the statistics)
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
}

impl SampleArgs {
    pub fn config(&self) -> SamplerConfig {
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64) << 32
        });
        SamplerConfig {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        }
    }
}

/// How many experts each token of a Mixture-of-Experts model uses.
#[derive(Args, Debug, Clone, Default)]
pub struct MoeArgs {
    /// Use exactly K experts per token instead of the model's own count
    #[arg(long = "moe-top-k", value_name = "K", conflicts_with = "moe_top_p")]
    pub moe_top_k: Option<usize>,
    /// Use the fewest experts whose router probabilities sum to at least P (0 < P <= 1)
    #[arg(long = "moe-top-p", value_name = "P")]
    pub moe_top_p: Option<f32>,
    /// At least this many experts per token
    #[arg(long = "moe-min-experts", value_name = "N")]
    pub moe_min_experts: Option<usize>,
    /// At most this many experts per token
    #[arg(long = "moe-max-experts", value_name = "N")]
    pub moe_max_experts: Option<usize>,
}

impl MoeArgs {
    /// The selection these flags ask for on `model`: `--moe-top-k`/`--moe-top-p` when given
    /// (`--moe-top-k` at the model's own count is its default rule), else the calibrated rule
    /// stored in the file when there is one, else the model's own count. Checked against the
    /// model; `what` is one line saying what it does, for stderr (None for a dense model).
    pub fn config(&self, model: &Model) -> Result<(MoeConfig, Option<String>), dsrun::Error> {
        let rule = match (self.moe_top_k, self.moe_top_p, &model.moe_calibration) {
            // The model's own count is the default rule (also over a calibrated file's rule).
            (Some(k), _, _) if k == model.hp.n_expert_used && model.hp.n_expert > 0 => {
                MoeRule::ModelDefault
            }
            (Some(k), _, _) => MoeRule::TopK(k),
            (None, Some(p), _) => MoeRule::TopP(p),
            (None, None, Some(c)) if model.hp.n_expert > 0 => {
                MoeRule::Calibrated(Arc::new(c.clone()))
            }
            _ => MoeRule::ModelDefault,
        };
        let cfg = MoeConfig {
            rule,
            min_experts: self.moe_min_experts,
            max_experts: self.moe_max_experts,
        };
        cfg.validate(model.hp.n_expert, model.hp.n_layer)?;
        let what = (model.hp.n_expert > 0)
            .then(|| cfg.describe(model.hp.n_expert, model.hp.n_expert_used));
        Ok((cfg, what))
    }

    /// Sets the session's selection and says on stderr what it is, unless it is the model's own
    /// count or `quiet`.
    pub fn apply(&self, session: &mut Session, quiet: bool) -> Result<(), dsrun::Error> {
        let (cfg, what) = self.config(session.model)?;
        if let Some(w) = what.filter(|_| !quiet && !cfg.is_model_default()) {
            eprintln!("dsrun: {w}");
        }
        session.set_moe(cfg)
    }
}
