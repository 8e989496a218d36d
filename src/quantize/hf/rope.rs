//! RoPE scaling from `config.json` as llama.cpp's converter writes it: `linear` and `yarn`
//! become `{arch}.rope.scaling.*` keys; Llama 3.1's `llama3` becomes the tensor
//! `rope_freqs.weight` (one frequency divisor per rotated pair, ggml's freq_factors), computed
//! in f32 as the converter's `LlamaModel.generate_extra_tensors` does.
//!
//! | `rope_type` | written |
//! |---|---|
//! | absent, `default` | nothing |
//! | `linear` | `rope.scaling.type` linear, `.factor` |
//! | `yarn` | `rope.scaling.type` yarn, `.factor`, `.original_context_length`, and the optional `.yarn_ext_factor`, `.yarn_attn_factor`, `.yarn_beta_fast`, `.yarn_beta_slow` |
//! | `llama3` (Llama-family checkpoints) | `rope_freqs.weight` |
//! | anything else | refused |

use crate::error::{Error, Result};
use crate::gguf::Value;
use serde_json::Value as Json;

use super::{cfg_f64, cfg_u64};

/// The RoPE parameters object (`rope_parameters`, else `rope_scaling`; its `full_attention`
/// part where it has one), as the converter reads it.
pub(super) fn params(cfg: &Json) -> Option<&Json> {
    let r = cfg
        .get("rope_parameters")
        .filter(|r| r.is_object())
        .or_else(|| cfg.get("rope_scaling").filter(|r| r.is_object()))?;
    Some(
        r.get("full_attention")
            .filter(|f| f.is_object())
            .unwrap_or(r),
    )
}

fn rope_type(cfg: &Json) -> Option<&str> {
    params(cfg)
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(Json::as_str)
}

/// The `{a}.rope.scaling.*` keys for the checkpoint's scaling; `llama` says whether the
/// architecture is a Llama-family one (the only ones whose `llama3` scaling the converter
/// turns into `rope_freqs.weight`).
pub(super) fn scaling_metadata(cfg: &Json, a: &str, llama: bool) -> Result<Vec<(String, Value)>> {
    let mut md = Vec::new();
    let Some(ty) = rope_type(cfg) else {
        return Ok(md);
    };
    let r = params(cfg).expect("a type came from it");
    let need_factor = || {
        cfg_f64(r, &["factor"]).ok_or_else(|| {
            Error::Invalid(format!("config.json: {ty} RoPE scaling without a factor"))
        })
    };
    match ty {
        "default" => {}
        "linear" | "yarn" => {
            let factor = need_factor()?;
            md.push((format!("{a}.rope.scaling.type"), Value::String(ty.into())));
            md.push((
                format!("{a}.rope.scaling.factor"),
                Value::F32(factor as f32),
            ));
        }
        t if t.eq_ignore_ascii_case("llama3") && llama => {}
        t if t.eq_ignore_ascii_case("llama3") => {
            return Err(Error::Invalid(format!(
                "config.json: llama3 RoPE scaling on a {a} checkpoint: llama.cpp's converter \
                 applies it to Llama-family models only"
            )))
        }
        other => {
            return Err(Error::Invalid(format!(
                "config.json: RoPE scaling {other:?} is not supported yet (default, linear, yarn \
                 and llama3 are)"
            )))
        }
    }
    if ty == "yarn" {
        let orig = cfg_u64(r, &["original_max_position_embeddings"]).ok_or_else(|| {
            Error::Invalid(
                "config.json: yarn RoPE scaling without original_max_position_embeddings".into(),
            )
        })?;
        md.push((
            format!("{a}.rope.scaling.original_context_length"),
            Value::U32(orig.min(u32::MAX as u64) as u32),
        ));
        for (keys, name) in [
            (&["extrapolation_factor"][..], "yarn_ext_factor"),
            (&["attention_factor", "attn_factor"][..], "yarn_attn_factor"),
            (&["beta_fast"][..], "yarn_beta_fast"),
            (&["beta_slow"][..], "yarn_beta_slow"),
        ] {
            if let Some(x) = cfg_f64(r, keys) {
                md.push((format!("{a}.rope.scaling.{name}"), Value::F32(x as f32)));
            }
        }
    }
    Ok(md)
}

/// `rope_freqs.weight` for a Llama-family checkpoint with `llama3` scaling (`None`
/// otherwise): per rotated pair `i` of a head of `dim`, with `freq = 1 / θ^(2i / dim)` and
/// `wavelen = 2π / freq`: 1 below `orig / high_freq_factor`, `factor` above `orig /
/// low_freq_factor`, and between them `1 / ((1 - s) / factor + s)` with `s = (orig / wavelen -
/// low) / (high - low)`. Defaults as the converter's: factor 8, low 1, high 4, orig 8192, θ 10000.
pub(super) fn llama3_factors(cfg: &Json, n_embd: u64, llama: bool) -> Result<Option<Vec<f32>>> {
    let is_llama3 = rope_type(cfg).is_some_and(|t| t.eq_ignore_ascii_case("llama3"));
    if !llama || !is_llama3 {
        return Ok(None);
    }
    let r = params(cfg).expect("a type came from it");
    let n_head = cfg_u64(cfg, &["num_attention_heads"]).unwrap_or(1).max(1);
    let dim = cfg_u64(cfg, &["head_dim"]).unwrap_or(n_embd / n_head);
    if dim == 0 || !dim.is_multiple_of(2) || dim > 1 << 16 {
        return Err(Error::Invalid(format!(
            "config.json: llama3 RoPE scaling needs an even head size, not {dim}"
        )));
    }
    let f = |k: &str, d: f64| cfg_f64(r, &[k]).unwrap_or(d) as f32;
    let base = cfg_f64(r, &["rope_theta"])
        .or_else(|| cfg_f64(cfg, &["rope_theta"]))
        .unwrap_or(10000.0) as f32;
    let (factor, low, high) = (
        f("factor", 8.0),
        f("low_freq_factor", 1.0),
        f("high_freq_factor", 4.0),
    );
    let orig = f("original_max_position_embeddings", 8192.0);
    if high == low {
        return Err(Error::Invalid(
            "config.json: llama3 RoPE scaling with low_freq_factor = high_freq_factor".into(),
        ));
    }
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    let factors = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    Ok(Some(factors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rope: &str) -> Json {
        serde_json::from_str(&format!(
            r#"{{"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
                "rope_scaling": {rope}}}"#
        ))
        .unwrap()
    }

    /// Llama 3.1 8B's config: θ 500000, heads of 128, factor 8, low 1, high 4, orig 8192.
    /// Wavelengths 2π · 500000^(i/64) pass 2048 after pair 28 and 8192 after pair 34, so 29
    /// pairs keep 1, 29 take 8, and pairs 29–34 rise between; pair 32 (wavelength 2π · √500000
    /// = 4442.88) has s = (8192 / 4442.88 − 1) / 3 = 0.28128 and 1 / ((1 − s) / 8 + s) = 2.6945.
    #[test]
    fn llama31_factors() {
        let c = cfg(
            r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        );
        let f = llama3_factors(&c, 4096, true).unwrap().unwrap();
        assert_eq!(f.len(), 64);
        assert!(f[..29].iter().all(|&x| x == 1.0), "{f:?}");
        assert!(f[35..].iter().all(|&x| x == 8.0), "{f:?}");
        assert!(f[28..36].windows(2).all(|w| w[0] < w[1]), "{f:?}");
        assert!((f[32] - 2.6945).abs() < 1e-3, "{}", f[32]);
        assert!(scaling_metadata(&c, "llama", true).unwrap().is_empty());
        // Not a Llama-family checkpoint: no tensor, and the scaling is refused.
        assert_eq!(llama3_factors(&c, 4096, false).unwrap(), None);
        let e = scaling_metadata(&c, "qwen2", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Llama-family"), "{e}");
    }

    #[test]
    fn yarn_and_linear_keys() {
        let c = cfg(
            r#"{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                "beta_fast": 16.0}"#,
        );
        let md = scaling_metadata(&c, "qwen2", false).unwrap();
        let keys: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(
            keys,
            [
                ("qwen2.rope.scaling.type", &Value::String("yarn".into())),
                ("qwen2.rope.scaling.factor", &Value::F32(4.0)),
                (
                    "qwen2.rope.scaling.original_context_length",
                    &Value::U32(32768)
                ),
                ("qwen2.rope.scaling.yarn_beta_fast", &Value::F32(16.0)),
            ]
        );
        let c = cfg(r#"{"rope_type": "yarn", "factor": 4.0}"#);
        let e = scaling_metadata(&c, "qwen2", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("original_max_position_embeddings"), "{e}");
        let c = cfg(r#"{"rope_type": "linear", "factor": 2.0}"#);
        assert_eq!(scaling_metadata(&c, "llama", true).unwrap().len(), 2);
        let c = cfg(r#"{"rope_type": "longrope", "factor": 2.0}"#);
        let e = scaling_metadata(&c, "phi3", false).unwrap_err().to_string();
        assert!(e.contains("\"longrope\" is not supported"), "{e}");
    }
}
