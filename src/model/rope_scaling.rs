//! RoPE context extension (none, linear, YaRN) as llama.cpp resolves it: the file's
//! `{arch}.rope.*` keys give the trained values (llama_model's `*_train` hparams), the user's
//! overrides (llama.cpp's `--rope-scaling`, `--rope-scale`, `--rope-freq-base`,
//! `--rope-freq-scale`, `--yarn-*` flags) replace them, and the result is what every layer's
//! RoPE uses (llama_context's cparams).

use crate::error::{Error, Result};
use crate::gguf::GgufHeader;
use crate::kernels::rope::Yarn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeScalingType {
    None,
    Linear,
    Yarn,
}

impl RopeScalingType {
    pub fn parse(s: &str) -> Option<RopeScalingType> {
        match s {
            "none" => Some(RopeScalingType::None),
            "linear" => Some(RopeScalingType::Linear),
            "yarn" => Some(RopeScalingType::Yarn),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RopeScalingType::None => "none",
            RopeScalingType::Linear => "linear",
            RopeScalingType::Yarn => "yarn",
        }
    }
}

/// The RoPE values a file was trained with (its `{arch}.rope.*` keys, llama.cpp's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeTrain {
    pub scaling: RopeScalingType,
    pub freq_base: f32,
    /// 1 / `rope.scaling.factor` (1 when absent or 0).
    pub freq_scale: f32,
    /// `rope.scaling.original_context_length`, else the training context.
    pub n_ctx_orig: usize,
    /// `rope.scaling.attn_factor` (multiplies the resolved YaRN magnitude).
    pub attn_factor: f32,
    /// `rope.scaling.yarn_*`: negative ext_factor means "from the scaling type".
    pub yarn_ext_factor: f32,
    pub yarn_attn_factor: f32,
    pub yarn_beta_fast: f32,
    pub yarn_beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier` (DeepSeek's mscale_all_dim; 0: none).
    pub yarn_log_mul: f32,
}

impl RopeTrain {
    pub fn from_gguf(h: &GgufHeader, arch: &str, n_ctx_train: usize) -> Result<RopeTrain> {
        let k = |s: &str| format!("{arch}.{s}");
        let f = |s: &str, d: f32| -> Result<f32> {
            let key = k(s);
            match h.get_f64(&key)? {
                Some(v) if v.is_finite() => Ok(v as f32),
                Some(v) => Err(Error::metadata(key, format!("value {v} is not finite"))),
                None => Ok(d),
            }
        };
        // llama.cpp takes a missing type as "linear" (with factor 1: no scaling).
        let scaling = match h.get_str(&k("rope.scaling.type"))? {
            None => RopeScalingType::Linear,
            Some(t) => RopeScalingType::parse(t).ok_or_else(|| {
                Error::metadata(
                    k("rope.scaling.type"),
                    format!("{t:?} RoPE scaling is not supported (none, linear, yarn)"),
                )
            })?,
        };
        let factor = match h.get_f64(&k("rope.scaling.factor"))? {
            Some(v) => v as f32,
            None => f("rope.scale_linear", 0.0)?,
        };
        if !(factor >= 0.0 && factor.is_finite()) {
            return Err(Error::metadata(
                k("rope.scaling.factor"),
                format!("{factor} is not a positive factor"),
            ));
        }
        let n_ctx_orig = match h.get_u64(&k("rope.scaling.original_context_length"))? {
            Some(0) | None => n_ctx_train,
            Some(v) => v.min(1 << 31) as usize,
        };
        let mut yarn_log_mul = f("rope.scaling.yarn_log_multiplier", 0.0)?;
        if arch == "deepseek2" {
            // llama.cpp stores it divided by 0.1 for DeepSeek (deepseek2.cpp).
            yarn_log_mul /= 0.1;
        }
        Ok(RopeTrain {
            scaling,
            freq_base: f("rope.freq_base", 10_000.0)?,
            freq_scale: if factor == 0.0 { 1.0 } else { 1.0 / factor },
            n_ctx_orig,
            attn_factor: f("rope.scaling.attn_factor", 1.0)?,
            yarn_ext_factor: f("rope.scaling.yarn_ext_factor", -1.0)?,
            yarn_attn_factor: f("rope.scaling.yarn_attn_factor", 1.0)?,
            yarn_beta_fast: f("rope.scaling.yarn_beta_fast", 32.0)?,
            yarn_beta_slow: f("rope.scaling.yarn_beta_slow", 1.0)?,
            yarn_log_mul,
        })
    }
}

/// The user's overrides, named after llama.cpp's flags; `None` keeps the file's value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RopeOverrides {
    /// `--rope-scaling none|linear|yarn`
    pub scaling: Option<RopeScalingType>,
    /// `--rope-freq-base`
    pub freq_base: Option<f32>,
    /// `--rope-freq-scale`, or 1 / `--rope-scale`
    pub freq_scale: Option<f32>,
    /// `--yarn-orig-ctx`
    pub yarn_orig_ctx: Option<usize>,
    /// `--yarn-ext-factor`
    pub yarn_ext_factor: Option<f32>,
    /// `--yarn-attn-factor`
    pub yarn_attn_factor: Option<f32>,
    /// `--yarn-beta-fast`
    pub yarn_beta_fast: Option<f32>,
    /// `--yarn-beta-slow`
    pub yarn_beta_slow: Option<f32>,
}

impl RopeOverrides {
    pub fn is_empty(&self) -> bool {
        *self == RopeOverrides::default()
    }

    /// Every value in range (what `RopeScaling::resolve` checks first).
    pub fn check(&self) -> Result<()> {
        let bad = |flag: &str, v: f32| {
            Error::Invalid(format!("{flag} {v}: expected a positive, finite number"))
        };
        for (flag, v) in [
            ("--rope-freq-base", self.freq_base),
            ("--rope-freq-scale", self.freq_scale),
        ] {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                return Err(bad(flag, v));
            }
        }
        for (flag, v) in [
            ("--yarn-ext-factor", self.yarn_ext_factor),
            ("--yarn-attn-factor", self.yarn_attn_factor),
            ("--yarn-beta-fast", self.yarn_beta_fast),
            ("--yarn-beta-slow", self.yarn_beta_slow),
        ] {
            if let Some(v) = v.filter(|v| !(*v >= 0.0 && v.is_finite())) {
                return Err(Error::Invalid(format!(
                    "{flag} {v}: expected a finite number >= 0"
                )));
            }
        }
        if self.yarn_orig_ctx == Some(0) {
            return Err(Error::Invalid("--yarn-orig-ctx must be at least 1".into()));
        }
        Ok(())
    }
}

/// What the layers' RoPE uses after the overrides (llama_context's cparams).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub scaling: RopeScalingType,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub yarn: Yarn,
}

impl RopeScaling {
    /// llama_context's constructor, step by step; `is_deepseek2` for its mscale special case.
    pub fn resolve(t: &RopeTrain, o: &RopeOverrides, is_deepseek2: bool) -> Result<RopeScaling> {
        o.check()?;
        let scaling = o.scaling.unwrap_or(t.scaling);
        let freq_base = o.freq_base.unwrap_or(t.freq_base);
        let freq_scale = match scaling {
            RopeScalingType::None => 1.0,
            _ => o.freq_scale.unwrap_or(t.freq_scale),
        };
        let ext_factor = match o.yarn_ext_factor.unwrap_or(t.yarn_ext_factor) {
            e if e < 0.0 && scaling == RopeScalingType::Yarn => 1.0,
            e if e < 0.0 => 0.0,
            e => e,
        };
        let mut attn_factor = o.yarn_attn_factor.unwrap_or(t.yarn_attn_factor);
        if ext_factor != 0.0 {
            let get_mscale = |scale: f32, mscale: f32| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * mscale * scale.ln() + 1.0
                }
            };
            let factor = 1.0 / freq_scale;
            attn_factor = if t.yarn_log_mul != 0.0 {
                let all_dims = t.yarn_log_mul;
                let mscale = if is_deepseek2 && all_dims != 1.0 {
                    all_dims
                } else {
                    1.0
                };
                get_mscale(factor, mscale) / get_mscale(factor, all_dims)
            } else {
                get_mscale(factor, 1.0)
            };
            // ggml's kernel multiplies by 1 + 0.1 ln(factor) again; llama.cpp cancels it here.
            attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        attn_factor *= t.attn_factor;
        Ok(RopeScaling {
            scaling,
            freq_base,
            freq_scale,
            yarn: Yarn {
                ext_factor,
                attn_factor,
                beta_fast: o.yarn_beta_fast.unwrap_or(t.yarn_beta_fast),
                beta_slow: o.yarn_beta_slow.unwrap_or(t.yarn_beta_slow),
                n_ctx_orig: o.yarn_orig_ctx.unwrap_or(t.n_ctx_orig),
            },
        })
    }

    /// One line for `dsrun info` and the run/chat startup line.
    pub fn describe(&self) -> String {
        if self.freq_scale == 1.0 && self.yarn.ext_factor == 0.0 {
            return format!("no scaling, base {}", self.freq_base);
        }
        let mut s = format!(
            "{}, base {}, freq scale {} (factor {})",
            self.scaling.name(),
            self.freq_base,
            self.freq_scale,
            1.0 / self.freq_scale
        );
        if self.yarn.ext_factor != 0.0 {
            s += &format!(
                ", YaRN orig ctx {}, ext {}, attn {:.4}, beta {}/{}",
                self.yarn.n_ctx_orig,
                self.yarn.ext_factor,
                self.yarn.attn_factor,
                self.yarn.beta_fast,
                self.yarn.beta_slow
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train() -> RopeTrain {
        RopeTrain {
            scaling: RopeScalingType::Linear,
            freq_base: 1e6,
            freq_scale: 1.0,
            n_ctx_orig: 32768,
            attn_factor: 1.0,
            yarn_ext_factor: -1.0,
            yarn_attn_factor: 1.0,
            yarn_beta_fast: 32.0,
            yarn_beta_slow: 1.0,
            yarn_log_mul: 0.0,
        }
    }

    #[test]
    fn no_flags_no_scaling() {
        let r = RopeScaling::resolve(&train(), &RopeOverrides::default(), false).unwrap();
        assert_eq!(
            (r.freq_scale, r.yarn),
            (
                1.0,
                Yarn {
                    n_ctx_orig: 32768,
                    ..Yarn::NONE
                }
            )
        );
    }

    #[test]
    fn yarn_factor_4_as_llama_cpp() {
        let o = RopeOverrides {
            scaling: Some(RopeScalingType::Yarn),
            freq_scale: Some(0.25),
            ..Default::default()
        };
        let r = RopeScaling::resolve(&train(), &o, false).unwrap();
        assert_eq!(r.yarn.ext_factor, 1.0);
        // get_mscale(4) = 1 + 0.1 ln 4, then divided by the same: 1.
        assert!((r.yarn.attn_factor - 1.0).abs() < 1e-6);
        // --rope-scaling none ignores any scale.
        let o = RopeOverrides {
            scaling: Some(RopeScalingType::None),
            freq_scale: Some(0.25),
            ..Default::default()
        };
        let r = RopeScaling::resolve(&train(), &o, false).unwrap();
        assert_eq!((r.freq_scale, r.yarn.ext_factor), (1.0, 0.0));
    }

    #[test]
    fn bad_flags_are_errors() {
        for o in [
            RopeOverrides {
                freq_scale: Some(0.0),
                ..Default::default()
            },
            RopeOverrides {
                freq_base: Some(f32::NAN),
                ..Default::default()
            },
            RopeOverrides {
                yarn_orig_ctx: Some(0),
                ..Default::default()
            },
            RopeOverrides {
                yarn_beta_fast: Some(-1.0),
                ..Default::default()
            },
        ] {
            assert!(RopeScaling::resolve(&train(), &o, false).is_err(), "{o:?}");
        }
    }
}
