//! The calibrated expert-count rule as it is stored in a GGUF file, under `dsrun.moe.*` keys
//! (llama.cpp ignores keys it does not know). `dsrun calibrate` learns it; `Model::load` reads it
//! back and refuses a malformed one with the key named.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `dsrun.moe.rule` | string | `top_p`, `rel_mass` or `ratio` (see `CalibKind`) |
//! | `dsrun.moe.thresholds` | f32 array, one per layer | the rule's threshold in that layer |
//! | `dsrun.moe.min_experts`, `dsrun.moe.max_experts` | u32 | the clamp |
//! | `dsrun.moe.kld_budget` | f32 | the mean-KLD budget it was calibrated for |
//! | `dsrun.moe.calib_kld`, `dsrun.moe.calib_avg_experts` | f32 | what calibration measured |
//! | `dsrun.moe.calib_tokens` | u32 | scored calibration tokens |
//! | `dsrun.moe.calib_text` | string | the calibration text's file name |
//! | `dsrun.moe.expert_share` | f32 array, n_layer × n_expert | share of calibration tokens that chose each expert at the model's own count (optional; the GPU's expert cache starts from it) |

use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, Value, ValueType};

/// How a layer's threshold `t` turns a token's sorted router probabilities `p1 >= p2 >= ...`
/// into a number of experts (then clamped to `[min, max]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CalibKind {
    /// The fewest experts whose probabilities sum to `t` (of all experts' mass).
    #[default]
    TopP,
    /// The fewest whose sum reaches `t` times the mass of the `max` best.
    RelMass,
    /// Every expert with `p >= t * p1`.
    Ratio,
}

/// The kinds, with their names in the file.
pub const CALIB_KINDS: &[(CalibKind, &str)] = &[
    (CalibKind::TopP, "top_p"),
    (CalibKind::RelMass, "rel_mass"),
    (CalibKind::Ratio, "ratio"),
];

impl CalibKind {
    pub fn name(self) -> &'static str {
        CALIB_KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    pub fn from_name(name: &str) -> Option<CalibKind> {
        CALIB_KINDS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k)
    }

    /// The threshold that cuts nothing: every token keeps `max` experts.
    pub fn no_cut(self) -> f32 {
        match self {
            CalibKind::TopP | CalibKind::RelMass => 1.0,
            CalibKind::Ratio => 0.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoeCalibration {
    pub kind: CalibKind,
    /// One per layer, in [0, 1].
    pub thresholds: Vec<f32>,
    pub min_experts: usize,
    pub max_experts: usize,
    pub kld_budget: f32,
    pub calib_kld: f32,
    pub calib_avg_experts: f32,
    pub calib_tokens: u32,
    pub calib_text: String,
    /// (n_layer, n_expert): the share of calibration tokens that chose each expert at the
    /// model's own count; empty in files written before it was recorded.
    pub expert_share: Vec<f32>,
}

pub const KEY_RULE: &str = "dsrun.moe.rule";
pub const KEY_THRESHOLDS: &str = "dsrun.moe.thresholds";
const KEY_MIN: &str = "dsrun.moe.min_experts";
const KEY_MAX: &str = "dsrun.moe.max_experts";
const KEY_BUDGET: &str = "dsrun.moe.kld_budget";
const KEY_KLD: &str = "dsrun.moe.calib_kld";
const KEY_AVG: &str = "dsrun.moe.calib_avg_experts";
const KEY_TOKENS: &str = "dsrun.moe.calib_tokens";
const KEY_TEXT: &str = "dsrun.moe.calib_text";
const KEY_SHARE: &str = "dsrun.moe.expert_share";

impl MoeCalibration {
    /// The rule stored in `h`, `None` when the file has none.
    pub fn from_gguf(h: &GgufHeader) -> Result<Option<MoeCalibration>> {
        let Some(rule) = h.get_str(KEY_RULE)? else {
            return Ok(None);
        };
        let kind = CalibKind::from_name(rule).ok_or_else(|| {
            Error::metadata(
                KEY_RULE,
                format!("unknown rule {rule:?} (top_p, rel_mass or ratio)"),
            )
        })?;
        let f32s = |key: &str, arr: &Value| -> Result<Vec<f32>> {
            match arr {
                Value::Array(ValueType::F32, items) => items
                    .iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>(),
                _ => None,
            }
            .ok_or_else(|| Error::metadata(key, "expected an array of f32"))
        };
        let arr = h
            .get(KEY_THRESHOLDS)
            .ok_or_else(|| Error::metadata(KEY_THRESHOLDS, "missing"))?;
        let thresholds = f32s(KEY_THRESHOLDS, arr)?;
        let expert_share = match h.get(KEY_SHARE) {
            Some(arr) => f32s(KEY_SHARE, arr)?,
            None => Vec::new(),
        };
        let count = |key: &str| -> Result<usize> {
            h.get_u64(key)?
                .map(|v| v.min(u32::MAX as u64) as usize)
                .ok_or_else(|| Error::metadata(key, "missing"))
        };
        let float = |key: &str| -> Result<f32> { Ok(h.get_f64(key)?.unwrap_or(f64::NAN) as f32) };
        Ok(Some(MoeCalibration {
            kind,
            thresholds,
            min_experts: count(KEY_MIN)?,
            max_experts: count(KEY_MAX)?,
            kld_budget: float(KEY_BUDGET)?,
            calib_kld: float(KEY_KLD)?,
            calib_avg_experts: float(KEY_AVG)?,
            calib_tokens: h.get_u64(KEY_TOKENS)?.unwrap_or(0).min(u32::MAX as u64) as u32,
            calib_text: h.get_str(KEY_TEXT)?.unwrap_or("").to_string(),
            expert_share,
        }))
    }

    /// Checks the rule against a model; errors name the key.
    pub fn check(&self, n_expert: usize, n_layer: usize) -> Result<()> {
        if self.thresholds.len() != n_layer {
            return Err(Error::metadata(
                KEY_THRESHOLDS,
                format!(
                    "{} thresholds for a model of {n_layer} layers",
                    self.thresholds.len()
                ),
            ));
        }
        if let Some(t) = self
            .thresholds
            .iter()
            .find(|t| !(t.is_finite() && (0.0..=1.0).contains(*t)))
        {
            return Err(Error::metadata(
                KEY_THRESHOLDS,
                format!("threshold {t} is outside [0, 1]"),
            ));
        }
        for (key, v) in [(KEY_MIN, self.min_experts), (KEY_MAX, self.max_experts)] {
            if v == 0 || v > n_expert {
                return Err(Error::metadata(
                    key,
                    format!("{v} is not between 1 and the model's {n_expert} experts"),
                ));
            }
        }
        if self.min_experts > self.max_experts {
            return Err(Error::metadata(
                KEY_MIN,
                format!(
                    "{} is more than {KEY_MAX} {}",
                    self.min_experts, self.max_experts
                ),
            ));
        }
        let n_share = n_layer * n_expert;
        if !self.expert_share.is_empty()
            && (self.expert_share.len() != n_share
                || self.expert_share.iter().any(|v| !(0.0..=1.0).contains(v)))
        {
            return Err(Error::metadata(
                KEY_SHARE,
                format!(
                    "{} values, expected {n_share} ({n_layer} layers × {n_expert} experts) in [0, 1]",
                    self.expert_share.len()
                ),
            ));
        }
        Ok(())
    }

    /// The keys and values to store, in order.
    pub fn to_metadata(&self) -> Vec<(&'static str, Value)> {
        let mut kv = vec![
            (KEY_RULE, Value::String(self.kind.name().into())),
            (
                KEY_THRESHOLDS,
                Value::Array(
                    ValueType::F32,
                    self.thresholds.iter().map(|&t| Value::F32(t)).collect(),
                ),
            ),
            (KEY_MIN, Value::U32(self.min_experts as u32)),
            (KEY_MAX, Value::U32(self.max_experts as u32)),
            (KEY_BUDGET, Value::F32(self.kld_budget)),
            (KEY_KLD, Value::F32(self.calib_kld)),
            (KEY_AVG, Value::F32(self.calib_avg_experts)),
            (KEY_TOKENS, Value::U32(self.calib_tokens)),
            (KEY_TEXT, Value::String(self.calib_text.clone())),
        ];
        if !self.expert_share.is_empty() {
            kv.push((
                KEY_SHARE,
                Value::Array(
                    ValueType::F32,
                    self.expert_share.iter().map(|&v| Value::F32(v)).collect(),
                ),
            ));
        }
        kv
    }

    /// "top_p per layer 0.62 0.71 ..." for messages.
    pub fn describe_thresholds(&self) -> String {
        let t: Vec<String> = self.thresholds.iter().map(|t| format!("{t:.3}")).collect();
        format!("{} per layer {}", self.kind.name(), t.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;

    fn sample() -> MoeCalibration {
        MoeCalibration {
            kind: CalibKind::RelMass,
            thresholds: vec![0.5, 0.75, 1.0],
            min_experts: 1,
            max_experts: 4,
            kld_budget: 0.02,
            calib_kld: 0.019,
            calib_avg_experts: 2.5,
            calib_tokens: 1020,
            calib_text: "persuasion.txt".into(),
            expert_share: (0..3 * 4).map(|i| (i % 4) as f32 / 4.0).collect(),
        }
    }

    fn header_with(meta: &[(&str, Value)]) -> GgufHeader {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("qwen3moe".into()));
        for (k, v) in meta {
            w.set(k, v.clone());
        }
        GgufHeader::parse(&w.to_bytes(|_| Ok(Vec::new())).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_absence() {
        let c = sample();
        let h = header_with(&c.to_metadata());
        let back = MoeCalibration::from_gguf(&h).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(back.check(4, 3).is_ok());
        // The shares are optional (files written before them), and checked against the model.
        let mut old = c.clone();
        old.expert_share.clear();
        let back = MoeCalibration::from_gguf(&header_with(&old.to_metadata())).unwrap();
        assert_eq!(back.unwrap(), old);
        let e = c.check(16, 3).unwrap_err().to_string();
        assert!(
            e.contains("dsrun.moe.expert_share") && e.contains("12 values"),
            "{e}"
        );
        assert!(MoeCalibration::from_gguf(&header_with(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn malformed_rules_name_the_key() {
        let mut m = sample().to_metadata();
        m[0].1 = Value::String("magic".into());
        let e = MoeCalibration::from_gguf(&header_with(&m)).unwrap_err();
        assert!(e.to_string().contains("dsrun.moe.rule"), "{e}");

        let mut m = sample().to_metadata();
        m[1].1 = Value::Array(ValueType::U32, vec![Value::U32(1)]);
        let e = MoeCalibration::from_gguf(&header_with(&m)).unwrap_err();
        assert!(e.to_string().contains("dsrun.moe.thresholds"), "{e}");

        let mut m = sample().to_metadata();
        m.remove(3);
        let e = MoeCalibration::from_gguf(&header_with(&m)).unwrap_err();
        assert!(
            e.to_string().contains("dsrun.moe.max_experts: missing"),
            "{e}"
        );

        let c = sample();
        assert!(c
            .check(16, 6)
            .unwrap_err()
            .to_string()
            .contains("3 thresholds"));
        assert!(c
            .check(2, 3)
            .unwrap_err()
            .to_string()
            .contains("max_experts"));
        let mut c = sample();
        c.thresholds[1] = 1.5;
        assert!(c.check(16, 3).unwrap_err().to_string().contains("outside"));
        let mut c = sample();
        c.min_experts = 5;
        assert!(c
            .check(16, 3)
            .unwrap_err()
            .to_string()
            .contains("more than"));
    }
}
