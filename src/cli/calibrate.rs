//! `dsrun calibrate`: learn how many experts each token needs (`dsrun::calibrate`) from a text
//! and write the rule into a copy of the model under `dsrun.moe.*` keys, which llama.cpp
//! ignores. The copy is written beside its destination and renamed when complete.

use super::common::ModelArgs;
use super::CliError;
use clap::Args;
use dsrun::calibrate::{calibrate, CalibrateOptions};
use dsrun::engine::Model;
use dsrun::gguf::writer::GgufWriter;
use dsrun::gguf::{GgufFile, Value};
use dsrun::model::moe_calibration::{CalibKind, CALIB_KINDS};
use dsrun::perplexity::chunks;
use dsrun::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration text (not the text you will evaluate on)
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Mean KL divergence from the model's own expert count not to exceed (nats per token)
    #[arg(long = "kld-budget", default_value_t = 0.02)]
    pub kld_budget: f64,
    /// Chunks of -c tokens of the text to use
    #[arg(long, default_value_t = 8)]
    pub chunks: usize,
    /// Rule kinds to try: auto (all), or one of top_p, rel_mass, ratio
    #[arg(long, default_value = "auto")]
    pub rule: String,
    /// Where to write the calibrated copy of the model (without -o: only report the rule)
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

pub fn run(args: CalibrateArgs) -> Result<(), CliError> {
    args.model.init_threads();
    // `--kv-summary M` (a KV option shared with run/perplexity): learn M summary slots per
    // layer and KV head for --kv-window instead of an expert rule.
    if let Some(m) = args.model.kv.kv_summary {
        return run_kv_summary(&args, m);
    }
    let moe = &args.model.moe;
    if moe.moe_top_k.is_some() || moe.moe_top_p.is_some() {
        return Err(Error::Invalid(
            "calibrate learns its own rule: --moe-top-k and --moe-top-p do not apply (--moe-min-experts and --moe-max-experts bound it)"
                .into(),
        )
        .into());
    }
    let kinds: Vec<CalibKind> = match args.rule.as_str() {
        "auto" => CALIB_KINDS.iter().map(|(k, _)| *k).collect(),
        name => vec![CalibKind::from_name(name).ok_or_else(|| {
            Error::Invalid(format!(
                "--rule {name:?}: expected auto, top_p, rel_mass or ratio"
            ))
        })?],
    };
    if args.chunks == 0 {
        return Err(Error::Invalid("--chunks must be at least 1".into()).into());
    }
    let file = GgufFile::open(&args.model.model)?;
    if let Some(out) = &args.output {
        let same = match (out.canonicalize(), file.path().canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::Invalid(format!(
                "-o {}: refusing to overwrite the model being calibrated; write a copy",
                out.display()
            ))
            .into());
        }
    }
    if args.model.device.wants_gpu()? {
        return Err(Error::Invalid(
            "calibrate runs on the CPU (it records every router score): drop --device/-ngl".into(),
        )
        .into());
    }
    let mut model = Model::load(&file)?;
    args.model.rope.apply(&mut model, false)?;
    let hp = &model.hp;
    if hp.n_expert == 0 {
        return Err(Error::Invalid(format!(
            "{}: calibration is for Mixture-of-Experts models; this {} model has no experts",
            args.model.model.display(),
            hp.arch.name
        ))
        .into());
    }
    let lo = moe.moe_min_experts.unwrap_or(1);
    let hi = moe.moe_max_experts.unwrap_or(hp.n_expert_used);
    let chunks = calibration_chunks(&args, &model)?;
    let opts = CalibrateOptions {
        kld_budget: args.kld_budget,
        min_experts: lo,
        max_experts: hi,
        kinds,
        n_batch: args.model.batch_size,
    };
    let t0 = Instant::now();
    let mut report = calibrate(&model, chunks, opts, &mut |line| {
        eprintln!("dsrun calibrate: {line}")
    })?;
    report.best.calib_text = args
        .file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| rule | thresholds per layer | mean KLD | experts/token |"
    )?;
    writeln!(out, "| --- | --- | ---: | ---: |")?;
    for c in &report.candidates {
        let t: Vec<String> = c.thresholds.iter().map(|v| format!("{v:.2}")).collect();
        writeln!(
            out,
            "| {} {} | {} | {:.5} | {:.3} |",
            c.kind.name(),
            c.method,
            t.join(" "),
            c.kld,
            c.avg_experts
        )?;
    }
    let b = &report.best;
    writeln!(
        out,
        "kept: {} (mean KLD {:.5} <= {} at {:.3} experts/token, {} to {} per token; {} tokens scored, {} rules measured, {:.0} s)",
        b.describe_thresholds(),
        b.calib_kld,
        b.kld_budget,
        b.calib_avg_experts,
        b.min_experts,
        b.max_experts,
        report.n_scored,
        report.n_evals,
        t0.elapsed().as_secs_f64()
    )?;
    if b.calib_kld > b.kld_budget {
        eprintln!(
            "dsrun calibrate: warning: no rule met the budget; the file keeps the model's own count"
        );
    }
    if let Some(path) = &args.output {
        let mut w = GgufWriter::new();
        w.metadata = file.metadata.clone();
        for (k, v) in b.to_metadata() {
            w.set(k, v);
        }
        w.set("dsrun.moe.calib_text", Value::String(b.calib_text.clone()));
        for t in &file.tensors {
            w.add_tensor(&t.name, t.ty, &t.dims);
        }
        w.write_file(path, |i| Ok(file.tensor_data(&file.tensors[i])?.to_vec()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// `dsrun calibrate --kv-summary M`: k-means centroids of each layer's and KV head's pre-RoPE
/// keys over the text, written under `dsrun.kv_summary.*` keys.
/// The calibration text (`-f`) as chunks of `-c` tokens (default 512), at most `--chunks`, each
/// starting with BOS where the model adds one.
fn calibration_chunks(args: &CalibrateArgs, model: &Model) -> Result<Vec<Vec<u32>>, CliError> {
    let text =
        std::fs::read(&args.file).map_err(|e| Error::io(args.file.display().to_string(), e))?;
    let text = String::from_utf8_lossy(&text);
    let n_ctx = args.model.n_ctx(512, model.hp.n_ctx_train);
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true, false)?;
    if n_ctx < 8 || tokens.len() < n_ctx {
        return Err(Error::Invalid(format!(
            "{}: {} tokens; calibration with -c {n_ctx} needs at least {n_ctx} (and -c at least 8)",
            args.file.display(),
            tokens.len()
        ))
        .into());
    }
    let bos = if tok.add_bos() { tok.bos() } else { None };
    Ok(chunks(&tokens, n_ctx, Some(args.chunks), bos))
}

fn run_kv_summary(args: &CalibrateArgs, n_slot: usize) -> Result<(), CliError> {
    if args.chunks == 0 || n_slot == 0 {
        return Err(Error::Invalid("--chunks and --kv-summary must be at least 1".into()).into());
    }
    let file = GgufFile::open(&args.model.model)?;
    if let Some(out) = &args.output {
        if let (Ok(a), Ok(b)) = (out.canonicalize(), file.path().canonicalize()) {
            if a == b {
                return Err(Error::Invalid(format!(
                    "-o {}: refusing to overwrite the model being calibrated; write a copy",
                    out.display()
                ))
                .into());
            }
        }
    }
    let mut model = Model::load(&file)?;
    args.model.rope.apply(&mut model, false)?;
    let chunks = calibration_chunks(args, &model)?;
    let t0 = Instant::now();
    let skip = args.model.kv.kv_sinks;
    let summary = dsrun::calibrate::calibrate_kv_summary(
        &model,
        &chunks,
        n_slot,
        skip,
        args.model.batch_size,
        &mut |line| eprintln!("dsrun calibrate: {line}"),
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kv summary: {n_slot} slots per layer and KV head from {} keys ({:.0} s)",
        summary.calib_tokens,
        t0.elapsed().as_secs_f64()
    )?;
    if let Some(path) = &args.output {
        let mut w = GgufWriter::new();
        w.metadata = file.metadata.clone();
        for (k, v) in summary.to_metadata() {
            w.set(k, v);
        }
        for t in &file.tensors {
            w.add_tensor(&t.name, t.ty, &t.dims);
        }
        w.write_file(path, |i| Ok(file.tensor_data(&file.tensors[i])?.to_vec()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}
