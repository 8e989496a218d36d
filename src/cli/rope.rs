//! RoPE scaling flags, as llama.cpp spells them, shared by run/chat/perplexity/bench/info.

use clap::Args;
use dsrun::engine::Model;
use dsrun::model::rope_scaling::{RopeOverrides, RopeScalingType};
use dsrun::model::HParams;

#[derive(Args, Debug, Clone, Default)]
pub struct RopeArgs {
    /// RoPE frequency scaling: none, linear or yarn (default: the model's)
    #[arg(long = "rope-scaling", value_name = "{none,linear,yarn}")]
    pub rope_scaling: Option<String>,
    /// RoPE context scaling factor: expands the context by N (--rope-freq-scale 1/N)
    #[arg(
        long = "rope-scale",
        value_name = "N",
        conflicts_with = "rope_freq_scale"
    )]
    pub rope_scale: Option<f32>,
    /// RoPE base frequency (default: the model's)
    #[arg(long = "rope-freq-base", value_name = "N")]
    pub rope_freq_base: Option<f32>,
    /// RoPE frequency scaling factor: expands the context by 1/N
    #[arg(long = "rope-freq-scale", value_name = "N")]
    pub rope_freq_scale: Option<f32>,
    /// YaRN: the model's original context size (default: the model's training context)
    #[arg(long = "yarn-orig-ctx", value_name = "N")]
    pub yarn_orig_ctx: Option<usize>,
    /// YaRN: extrapolation mix factor (default: 1 for yarn, else 0)
    #[arg(long = "yarn-ext-factor", value_name = "N")]
    pub yarn_ext_factor: Option<f32>,
    /// YaRN: magnitude scale (replaced by YaRN's own when the mix factor is not 0, as in llama.cpp)
    #[arg(long = "yarn-attn-factor", value_name = "N")]
    pub yarn_attn_factor: Option<f32>,
    /// YaRN: low correction dim or beta (default: 1)
    #[arg(long = "yarn-beta-slow", value_name = "N")]
    pub yarn_beta_slow: Option<f32>,
    /// YaRN: high correction dim or alpha (default: 32)
    #[arg(long = "yarn-beta-fast", value_name = "N")]
    pub yarn_beta_fast: Option<f32>,
}

impl RopeArgs {
    pub fn overrides(&self) -> Result<RopeOverrides, dsrun::Error> {
        let scaling = match self.rope_scaling.as_deref() {
            None => None,
            Some(s) => Some(RopeScalingType::parse(s).ok_or_else(|| {
                dsrun::Error::Invalid(format!(
                    "--rope-scaling {s:?}: expected none, linear or yarn"
                ))
            })?),
        };
        let freq_scale = match (self.rope_scale, self.rope_freq_scale) {
            (Some(n), _) if !(n > 0.0 && n.is_finite()) => {
                return Err(dsrun::Error::Invalid(format!(
                    "--rope-scale {n}: expected a positive, finite factor"
                )))
            }
            (Some(n), _) => Some(1.0 / n),
            (None, s) => s,
        };
        let o = RopeOverrides {
            scaling,
            freq_base: self.rope_freq_base,
            freq_scale,
            yarn_orig_ctx: self.yarn_orig_ctx,
            yarn_ext_factor: self.yarn_ext_factor,
            yarn_attn_factor: self.yarn_attn_factor,
            yarn_beta_fast: self.yarn_beta_fast,
            yarn_beta_slow: self.yarn_beta_slow,
        };
        o.check()?;
        Ok(o)
    }

    /// `hp` with the flags applied.
    pub fn resolve(&self, hp: &HParams) -> Result<HParams, dsrun::Error> {
        hp.clone().with_rope(&self.overrides()?)
    }

    /// Applies the flags to a loaded model (before it is uploaded to a GPU or run) and says
    /// on stderr what RoPE scaling is in force when there is any, unless `quiet`.
    pub fn apply(&self, model: &mut Model, quiet: bool) -> Result<(), dsrun::Error> {
        model.hp = self.resolve(&model.hp)?;
        let r = &model.hp.rope;
        if !quiet && (r.freq_scale != 1.0 || r.yarn.ext_factor != 0.0) {
            eprintln!("dsrun: rope scaling {}", r.describe());
        }
        Ok(())
    }
}
