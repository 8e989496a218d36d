//! KV cache options (`-ctk` / `-ctv`, as llama.cpp spells them) and the line that says what the
//! cache will take.

use clap::Args;
use dsrun::engine::{Model, Session};
use dsrun::model::kv_cache::{kv_bytes, parse_kv_type};
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
            eprintln!("dsrun: {}", describe(session.model, session.n_ctx(), types));
        }
        Ok(())
    }
}

/// "KV cache: 4096 tokens, K f16 + V f16, 48.0 MiB (24 layers × 2.0 MiB)".
pub fn describe(model: &Model, n_ctx: usize, types: KvTypes) -> String {
    let hp = &model.hp;
    let kv_dim = hp.n_head_kv * hp.head_dim;
    let name = |t: dsrun::tensor::GgmlType| t.name().to_lowercase();
    let head = format!(
        "KV cache: {n_ctx} tokens, K {} + V {}",
        name(types.k),
        name(types.v)
    );
    match kv_bytes(hp.n_layer, n_ctx, kv_dim, types) {
        Some(b) => format!(
            "{head}, {} ({} layers × {})",
            mib(b),
            hp.n_layer,
            mib(b / hp.n_layer.max(1) as u64)
        ),
        None => format!("{head}: {kv_dim} values per position are not whole blocks"),
    }
}

pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Rewrites llama.cpp's two-letter-and-more short flags `-ctk` / `-ctv`, which clap cannot
/// parse as short options, to their long forms.
pub fn expand_llama_flags(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    })
    .collect()
}
