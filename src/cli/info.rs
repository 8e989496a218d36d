//! `dsrun info FILE`: what a model file holds and what running it needs.

use super::CliError;
use clap::Args;
use dsrun::gguf::GgufFile;
use dsrun::model::ModelInfo;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// GGUF model file
    pub model: PathBuf,
    /// Context length for the memory estimate (tokens of KV cache)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: u64,
    #[command(flatten)]
    pub kv: super::kv::KvArgs,
    #[command(flatten)]
    pub rope: super::rope::RopeArgs,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Also list every metadata key and every tensor
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(args: InfoArgs) -> Result<(), CliError> {
    let file = GgufFile::open(&args.model)?;
    // Bad flags fail before anything is printed.
    args.rope.overrides()?;
    let info = ModelInfo::from_gguf_kv(&file, args.ctx_size, args.kv.types()?)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&info).expect("ModelInfo serializes");
        if args.verbose {
            let meta: serde_json::Map<_, _> = file
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect();
            v["metadata"] = serde_json::Value::Object(meta);
        }
        writeln!(out, "{v}")?;
    } else {
        write_text(&mut out, &info)?;
        // Where dsrun can run the model: the cache as it allocates it, per layer kind.
        if let Ok(hp) = dsrun::model::HParams::from_gguf(&file) {
            let hp = args.rope.resolve(&hp)?;
            let factors = match file.tensor("rope_freqs.weight") {
                Some(_) => ", frequency factors from rope_freqs.weight",
                None => "",
            };
            writeln!(out, "dsrun rope:     {}{factors}", hp.rope.describe())?;
            let n_ctx = args.ctx_size as usize;
            let stream = args.kv.stream(&file, &hp)?;
            writeln!(
                out,
                "dsrun {}",
                super::kv::describe(&hp, n_ctx, args.kv.types()?, stream.as_ref())
            )?;
        }
        if args.verbose {
            write_verbose(&mut out, &file)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_else(|| "-".into())
}

fn write_text(out: &mut impl Write, i: &ModelInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "file:           {} ({}, GGUF v{})",
        i.path,
        mib(i.file_size),
        i.gguf_version
    )?;
    writeln!(out, "architecture:   {}", i.architecture)?;
    if let Some(name) = &i.name {
        writeln!(out, "name:           {name}")?;
    }
    if i.is_moe() {
        writeln!(
            out,
            "parameters:     {} total, {} active per token ({} / {})",
            params(i.n_params),
            params(i.n_params_active),
            i.n_params,
            i.n_params_active
        )?;
    } else {
        writeln!(
            out,
            "parameters:     {} ({})",
            params(i.n_params),
            i.n_params
        )?;
    }
    writeln!(out, "layers:         {}", opt(&i.n_layer))?;
    writeln!(
        out,
        "embedding:      {}   feed-forward: {}",
        opt(&i.n_embd),
        opt(&i.n_ff)
    )?;
    writeln!(
        out,
        "heads:          {} query, {} key/value, head dim {} (k) / {} (v)",
        opt(&i.n_head),
        opt(&i.n_head_kv),
        opt(&i.head_dim_k),
        opt(&i.head_dim_v)
    )?;
    if i.is_moe() {
        writeln!(
            out,
            "experts:        {} total, {} used per token, {} shared, expert width {}",
            opt(&i.expert_count),
            opt(&i.expert_used_count),
            i.expert_shared_count.unwrap_or(0),
            opt(&i.expert_ff)
        )?;
    } else {
        writeln!(out, "experts:        none (dense)")?;
    }
    writeln!(out, "context length: {}", opt(&i.context_length))?;
    if let Some(w) = i.sliding_window {
        writeln!(out, "sliding window: {w}")?;
    }
    let scaling = match (&i.rope_scaling, i.rope_scaling_factor) {
        (Some(t), Some(f)) => format!(", scaling {t} x{f}"),
        (Some(t), None) => format!(", scaling {t}"),
        _ => String::new(),
    };
    writeln!(
        out,
        "rope:           base {}, dims {}{scaling}",
        opt(&i.rope_freq_base),
        opt(&i.rope_dim)
    )?;
    writeln!(
        out,
        "tokenizer:      {} (pre {}), vocab {}, bos {}, eos {}, chat template {}",
        opt(&i.tokenizer_model),
        opt(&i.tokenizer_pre),
        opt(&i.vocab_size),
        opt(&i.bos_token_id),
        opt(&i.eos_token_id),
        if i.has_chat_template { "yes" } else { "no" }
    )?;
    writeln!(
        out,
        "tensors:        {} (data from byte {})",
        i.n_tensors, i.data_offset
    )?;
    for (name, c) in &i.tensor_types {
        writeln!(
            out,
            "  {name:<7} {:>5} tensors {:>15} weights {:>11}",
            c.tensors,
            c.elements,
            mib(c.bytes)
        )?;
    }
    if !i.unsupported_tensors.is_empty() {
        writeln!(
            out,
            "unsupported:    {} tensors have types dsrun cannot decode yet (first: {})",
            i.unsupported_tensors.len(),
            i.unsupported_tensors[0]
        )?;
    }
    writeln!(
        out,
        "memory:         weights {} + {} KV cache for {} tokens {} = {}",
        mib(i.weights_bytes),
        i.kv_types,
        i.kv_n_ctx,
        i.kv_bytes.map(mib).unwrap_or_else(|| "unknown".into()),
        mib(i.ram_bytes)
    )
}

fn write_verbose(out: &mut impl Write, file: &GgufFile) -> std::io::Result<()> {
    writeln!(out, "\nmetadata ({} keys):", file.metadata.len())?;
    for (k, v) in &file.metadata {
        let mut s = v.to_string();
        if s.len() > 120 {
            let cut = (0..=117)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            s.truncate(cut);
            s.push_str("...");
        }
        writeln!(out, "  {k} = {s}")?;
    }
    writeln!(out, "\ntensors ({}):", file.tensors.len())?;
    for t in &file.tensors {
        writeln!(out, "  {:<40} {:<7} {:?}", t.name, t.ty.name(), t.dims)?;
    }
    Ok(())
}
