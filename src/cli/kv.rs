//! KV cache options (`-ctk` / `-ctv`, as llama.cpp spells them) and the line that says what the
//! cache will take.

use clap::Args;
use dsrun::engine::{layer_windows, Session};
use dsrun::model::kv_cache::{kv_bytes, parse_kv_type};
use dsrun::model::HParams;
use dsrun::model::KvTypes;

#[derive(Args, Debug, Clone, Default)]
pub struct KvArgs {
    /// KV cache type for K: f16, q8_0 or q4_0 (also -ctk)
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f16")]
    pub cache_type_k: String,
    /// KV cache type for V: f16, q8_0 or q4_0 (also -ctv)
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f16")]
    pub cache_type_v: String,
}

impl KvArgs {
    pub fn types(&self) -> Result<KvTypes, dsrun::Error> {
        Ok(KvTypes {
            k: parse_kv_type(&self.cache_type_k)?,
            v: parse_kv_type(&self.cache_type_v)?,
        })
    }

    /// Sets the session's cache types and, unless `quiet`, says on stderr what the cache takes.
    pub fn apply(&self, session: &mut Session, quiet: bool) -> Result<(), dsrun::Error> {
        let types = self.types()?;
        if types != session.kv.types() {
            session.set_kv_types(types)?;
        }
        if !quiet {
            eprintln!(
                "dsrun: {}",
                describe(&session.model.hp, session.n_ctx(), types)
            );
        }
        Ok(())
    }
}

/// "KV cache: 4096 tokens, K f16 + V f16, 48.0 MiB (24 layers × 2.0 MiB)", with global and
/// sliding-window layers (which keep only their window) counted apart where the model has both.
pub fn describe(hp: &HParams, n_ctx: usize, types: KvTypes) -> String {
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let name = |t: dsrun::tensor::GgmlType| t.name().to_lowercase();
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
