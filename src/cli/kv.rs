//! KV cache options (`-ctk` / `-ctv`, as llama.cpp spells them; `--kv-window`, `--kv-sinks`,
//! `--kv-summary`) and the line that says what the cache will take.

use clap::Args;
use dsrun::engine::{layer_windows, Session};
use dsrun::gguf::GgufHeader;
use dsrun::model::kv_cache::{kv_bytes, parse_kv_type};
use dsrun::model::kv_summary::KvSummary;
use dsrun::model::kv_window::{
    Assign, SinkPos, SlotKeys, StreamConfig, SummaryConfig, DEFAULT_HORIZON, DEFAULT_LOG_WEIGHT,
};
use dsrun::model::HParams;
use dsrun::model::KvTypes;
use std::sync::Arc;

#[derive(Args, Debug, Clone, Default)]
pub struct KvArgs {
    /// KV cache type for K: f16, q8_0 or q4_0 (also -ctk)
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f16")]
    pub cache_type_k: String,
    /// KV cache type for V: f16, q8_0 or q4_0 (also -ctv)
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f16")]
    pub cache_type_v: String,
    /// Keep only the last W tokens' K/V (with the sinks and summary): memory fixed for any length
    #[arg(long = "kv-window", value_name = "W")]
    pub kv_window: Option<usize>,
    /// With --kv-window: also keep the first S tokens (attention sinks)
    #[arg(long = "kv-sinks", value_name = "S", default_value_t = 4)]
    pub kv_sinks: usize,
    /// With --kv-window: M summary slots per layer and KV head absorb the tokens that leave the
    /// window (default: the file's learned slots if it has them, from `dsrun calibrate
    /// --kv-summary`; 0: none)
    #[arg(long = "kv-summary", value_name = "M")]
    pub kv_summary: Option<usize>,
    /// How a leaving token picks its slot: learned (nearest centroid), round-robin or recency
    #[arg(long = "kv-summary-assign", default_value = "learned", hide = true)]
    pub kv_summary_assign: String,
    /// A·ln(count) is added to a summary slot's score (1: a slot of n tokens weighs as n tokens
    /// with the mean score; for measurements)
    #[arg(
        long = "kv-summary-log-weight",
        value_name = "A",
        default_value_t = DEFAULT_LOG_WEIGHT,
        hide = true
    )]
    pub kv_summary_log_weight: f32,
    /// A slot's key: true-pos (the mean of the absorbed keys after RoPE at their own positions)
    /// or window (the mean pre-RoPE key placed at distance W; for measurements)
    #[arg(long = "kv-summary-keys", default_value = "true-pos", hide = true)]
    pub kv_summary_keys: String,
    /// Summary slots forget: each absorption scales the slots by 1 - 1/H (0: never; for
    /// measurements)
    #[arg(
        long = "kv-summary-horizon",
        value_name = "H",
        default_value_t = DEFAULT_HORIZON,
        hide = true
    )]
    pub kv_summary_horizon: usize,
    /// Where sinks sit for queries past the window: cache (StreamingLLM) or absolute
    #[arg(long = "kv-sink-pos", default_value = "cache", hide = true)]
    pub kv_sink_pos: String,
}

impl KvArgs {
    pub fn types(&self) -> Result<KvTypes, dsrun::Error> {
        Ok(KvTypes {
            k: parse_kv_type(&self.cache_type_k)?,
            v: parse_kv_type(&self.cache_type_v)?,
        })
    }

    /// The window, sinks and summary settings, with the learned slots of `file` (if any).
    pub fn stream(
        &self,
        file: &GgufHeader,
        hp: &HParams,
    ) -> Result<Option<StreamConfig>, dsrun::Error> {
        let bad = |m: String| dsrun::Error::Invalid(m);
        let Some(window) = self.kv_window else {
            if self.kv_summary.is_some_and(|m| m > 0) {
                return Err(bad("--kv-summary needs --kv-window".into()));
            }
            return Ok(None);
        };
        if window == 0 {
            return Err(bad("--kv-window must be at least 1".into()));
        }
        let sink_pos = match self.kv_sink_pos.as_str() {
            "cache" => SinkPos::Cache,
            "absolute" => SinkPos::Absolute,
            o => {
                return Err(bad(format!(
                    "--kv-sink-pos {o:?}: expected cache or absolute"
                )))
            }
        };
        let log_weight = self.kv_summary_log_weight;
        if !log_weight.is_finite() {
            return Err(bad(format!(
                "--kv-summary-log-weight {log_weight}: expected a finite number"
            )));
        }
        let keys = match self.kv_summary_keys.as_str() {
            "window" => SlotKeys::Window,
            "true-pos" => SlotKeys::TruePos,
            o => {
                return Err(bad(format!(
                    "--kv-summary-keys {o:?}: expected window or true-pos"
                )))
            }
        };
        let learned = KvSummary::from_gguf(file, hp.n_layer, hp.n_head_kv, hp.head_dim)?;
        let summary = match (self.kv_summary_assign.as_str(), self.kv_summary) {
            (_, Some(0)) => None,
            ("learned", m) => match (learned, m) {
                (None, None) => None,
                (None, Some(m)) => {
                    return Err(bad(format!(
                        "--kv-summary {m}: the model has no learned summary slots \
                         (dsrun calibrate --kv-summary {m} -o copy.gguf writes them)"
                    )))
                }
                (Some(l), m) if m.is_some_and(|m| m != l.n_slot) => {
                    return Err(bad(format!(
                        "--kv-summary {}: the model's learned summary has {} slots",
                        m.unwrap_or(0),
                        l.n_slot
                    )))
                }
                (Some(l), _) => Some(SummaryConfig {
                    n_slot: l.n_slot,
                    assign: Assign::Centroids(Arc::new(l.centroids)),
                    log_weight,
                    keys,
                    horizon: self.kv_summary_horizon,
                }),
            },
            (name, m) => {
                let assign = match name {
                    "round-robin" => Assign::RoundRobin,
                    "recency" => Assign::Recency,
                    o => {
                        return Err(bad(format!(
                            "--kv-summary-assign {o:?}: expected learned, round-robin or recency"
                        )))
                    }
                };
                let m = m.ok_or_else(|| {
                    bad(format!("--kv-summary-assign {name} needs --kv-summary M"))
                })?;
                Some(SummaryConfig {
                    n_slot: m,
                    assign,
                    log_weight,
                    keys,
                    horizon: self.kv_summary_horizon,
                })
            }
        };
        Ok(Some(StreamConfig {
            window,
            sinks: self.kv_sinks,
            sink_pos,
            summary,
            reference: false,
        }))
    }

    /// Sets the session's cache types and window and, unless `quiet`, says on stderr what the
    /// cache takes.
    pub fn apply(&self, session: &mut Session, quiet: bool) -> Result<(), dsrun::Error> {
        let types = self.types()?;
        let hp = &session.model.hp;
        let stream = self.stream(session.model.file, hp)?;
        if types != session.kv.types() || stream.is_some() {
            session.set_kv(types, stream.clone())?;
        }
        if !quiet {
            let hp = &session.model.hp;
            eprintln!(
                "dsrun: {}",
                describe(hp, session.n_ctx(), types, stream.as_ref())
            );
            if let Some(g) = &session.gpu {
                let mib = g.kv_bytes() as f64 / (1 << 20) as f64;
                eprintln!("dsrun: the GPU's KV state: {mib:.1} MiB");
            }
            if session.n_ctx() > hp.n_ctx_train {
                let why = match &stream {
                    Some(c) if c.window + c.sinks <= hp.n_ctx_train => {
                        "the window and sinks keep every distance within it"
                    }
                    _ => "distances past it are untrained and quality may fall",
                };
                eprintln!(
                    "dsrun: warning: a context of {} tokens is beyond the {} the model was \
                     trained on; {why}",
                    session.n_ctx(),
                    hp.n_ctx_train
                );
            }
        }
        Ok(())
    }
}

/// "KV cache: 4096 tokens, K f16 + V f16, 48.0 MiB (24 layers × 2.0 MiB)", with global and
/// sliding-window layers (which keep only their window) counted apart where the model has both.
pub fn describe(
    hp: &HParams,
    n_ctx: usize,
    types: KvTypes,
    stream: Option<&StreamConfig>,
) -> String {
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let name = |t: dsrun::tensor::GgmlType| t.name().to_lowercase();
    if let Some(c) = stream {
        return describe_stream(hp, n_ctx, types, c);
    }
    let head = format!(
        "KV cache: {n_ctx} tokens, K {} + V {}",
        name(types.k),
        name(types.v)
    );
    let Some(per_pos) = kv_bytes(1, 1, kv_dim, types) else {
        return format!("{head}: {kv_dim} values per position are not whole blocks");
    };
    let windows = layer_windows(hp);
    let n_local = windows
        .iter()
        .filter(|w| w.is_some_and(|w| w < n_ctx))
        .count();
    let n_global = hp.n_layer - n_local;
    let global = per_pos * n_ctx as u64;
    match hp.sliding_window.filter(|_| n_local > 0) {
        None => format!(
            "{head}, {} ({} layers × {})",
            mib(global * n_global as u64),
            n_global,
            mib(global)
        ),
        Some(w) => {
            let local = per_pos * w as u64;
            format!(
                "{head}, {} ({n_global} global layers × {} + {n_local} sliding-window layers \
                 keeping {w} tokens × {})",
                mib(global * n_global as u64 + local * n_local as u64),
                mib(global),
                mib(local)
            )
        }
    }
}

/// "KV cache: window 4096 + 4 sinks + 64 learned summary slots per KV head, K f16 + V f16,
/// 48.1 MiB (24 layers × 2.0 MiB), the same for any context length".
fn describe_stream(hp: &HParams, n_ctx: usize, types: KvTypes, c: &StreamConfig) -> String {
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let name = |t: dsrun::tensor::GgmlType| t.name().to_lowercase();
    let per_pos = kv_bytes(1, 1, kv_dim, types).unwrap_or(0);
    let windows = layer_windows(hp);
    let n_stream = windows.iter().filter(|w| w.is_none()).count();
    let ring = c.window.min(n_ctx) as u64;
    let per_layer = per_pos * ring + c.extra_bytes(hp.n_head_kv, hp.head_dim) as u64;
    let native: u64 = windows
        .iter()
        .flatten()
        .map(|&w| per_pos * w.min(n_ctx) as u64)
        .sum();
    let summary = match &c.summary {
        None => String::new(),
        Some(s) => format!(
            " + {} {} summary slots per KV head{}{}",
            s.n_slot,
            match s.assign {
                Assign::Centroids(_) => "learned",
                Assign::RoundRobin => "round-robin",
                Assign::Recency => "recency",
            },
            match (s.keys, s.log_weight) {
                (SlotKeys::TruePos, DEFAULT_LOG_WEIGHT) => String::new(),
                (SlotKeys::TruePos, a) => format!(" ({a}·ln count)"),
                (SlotKeys::Window, a) => format!(" (keys at distance W, {a}·ln count)"),
            },
            match s.horizon {
                DEFAULT_HORIZON => String::new(),
                0 => " (never forgetting)".to_string(),
                h => format!(" (forgetting over {h} tokens)"),
            }
        ),
    };
    let native_txt = if native > 0 {
        format!(" + {} in sliding-window layers", mib(native))
    } else {
        String::new()
    };
    format!(
        "KV cache: window {} + {} sinks{summary}, K {} + V {}, {} ({n_stream} layers × {}{native_txt}), \
         the same for any context length (-c {n_ctx})",
        c.window,
        c.sinks,
        name(types.k),
        name(types.v),
        mib(per_layer * n_stream as u64 + native),
        mib(per_layer),
    )
}

pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Rewrites llama.cpp's two-letter-and-more short flags `-ctk` / `-ctv` / `-ngl`, which clap cannot
/// parse as short options, to their long forms.
pub fn expand_llama_flags(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        Some("-ngl") => "--gpu-layers".into(),
        _ => a,
    })
    .collect()
}
