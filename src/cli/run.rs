//! `dsrun run`: generation for shell pipes. The prompt comes from the argument or stdin; only the
//! generated text goes to stdout; load time and speeds go to stderr (unless `-q`); `--json`
//! prints one object instead. A closed pipe ends the run quietly.

use super::common::{ModelArgs, SampleArgs};
use super::CliError;
use clap::Args;
use dsrun::engine::{Model, Session, StopReason};
use dsrun::gguf::GgufFile;
use dsrun::sampling::Sampler;
use dsrun::tokenizer::StreamDecoder;
use dsrun::Error;
use std::io::{IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Tokens to generate (-1: until end of generation or a full context)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i64,
    /// No statistics on stderr
    #[arg(short, long)]
    pub quiet: bool,
    /// Print one JSON object with the text, token counts and timings
    #[arg(long)]
    pub json: bool,
    /// Also report the experts used per token (Mixture-of-Experts models)
    #[arg(short, long)]
    pub verbose: bool,
    /// Prompt text (read from stdin when absent)
    pub prompt: Option<String>,
}

fn read_prompt(arg: Option<String>) -> Result<String, CliError> {
    let text = match arg {
        Some(p) => p,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(
                    Error::Invalid("no prompt: give it as an argument or on stdin".into()).into(),
                );
            }
            let mut bytes = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("stdin", e))?;
            let mut text = String::from_utf8(bytes).map_err(|e| {
                Error::Invalid(format!(
                    "the prompt on stdin is not valid UTF-8 (at byte {})",
                    e.utf8_error().valid_up_to()
                ))
            })?;
            // `echo prompt | dsrun run` means the prompt, not the prompt and a newline.
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }
    };
    if text.trim().is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()).into());
    }
    Ok(text)
}

pub fn run(args: RunArgs) -> Result<(), CliError> {
    args.model.init_threads();
    let prompt = read_prompt(args.prompt)?;
    let t_load = Instant::now();
    let file = GgufFile::open(&args.model.model)?;
    let mut model = Model::load(&file)?;
    args.model.rope.apply(&mut model, args.quiet || args.json)?;
    args.model
        .device
        .apply(&mut model, args.quiet || args.json)?;
    let load_time = t_load.elapsed();
    let n_ctx = args.model.n_ctx(4096, model.hp.n_ctx_train);
    let mut session = Session::new(&model, n_ctx, args.model.batch_size)?;
    args.model
        .moe
        .apply(&mut session, args.quiet || args.json)?;
    let tok = &model.tokenizer;
    let ids = tok.encode(&prompt, true, true)?;
    if ids.len() >= n_ctx {
        return Err(Error::Invalid(format!(
            "the prompt is {} tokens, which does not fit in the context of {n_ctx} (raise -c)",
            ids.len()
        ))
        .into());
    }
    args.model.kv.apply(&mut session, args.quiet || args.json)?;
    let cfg = args.sample.config();
    let seed = cfg.seed;
    let mut sampler = Sampler::new(cfg);
    let n_predict = usize::try_from(args.n_predict).ok();

    let mut out = std::io::stdout().lock();
    let mut dec = StreamDecoder::new(false);
    let mut text = String::new();
    let mut io_err = None;
    let stats = session.generate(&ids, n_predict, &mut sampler, |t| {
        let piece = dec.push(tok, t);
        if args.json {
            text.push_str(&piece);
            return ControlFlow::Continue(());
        }
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    let tail = dec.finish();
    if args.json {
        text.push_str(&tail);
        let v = serde_json::json!({
            "text": text,
            "n_prompt": stats.n_prompt,
            "n_gen": stats.n_gen,
            "stop": format!("{:?}", stats.stop),
            "load_ms": load_time.as_secs_f64() * 1e3,
            "prompt_ms": stats.prompt_time.as_secs_f64() * 1e3,
            "gen_ms": stats.gen_time.as_secs_f64() * 1e3,
            "prompt_tps": stats.prompt_tps(),
            "gen_tps": stats.gen_tps(),
            "seed": seed,
            "moe_avg_experts": session.moe.stats.average(),
            "moe_avg_experts_per_layer": session.moe.stats.per_layer(),
        });
        writeln!(out, "{v}")?;
    } else {
        out.write_all(tail.as_bytes())?;
        writeln!(out)?;
    }
    out.flush()?;
    if !args.quiet && !args.json {
        if stats.stop == StopReason::ContextFull {
            eprintln!("dsrun: stopped: the context of {n_ctx} tokens is full (raise -c)");
        }
        eprintln!(
            "dsrun: load {:.0} ms | prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s | seed {seed}",
            load_time.as_secs_f64() * 1e3,
            stats.n_prompt,
            stats.prompt_tps(),
            stats.n_gen,
            stats.gen_tps()
        );
        if let Some(s) = session.moe.stats.summary().filter(|_| args.verbose) {
            eprintln!("dsrun: experts: {s}");
        }
        if let Some(p) = session.gpu.as_ref().and_then(|g| g.profile.as_ref()) {
            let mut v: Vec<_> = p.lock().unwrap().clone().into_iter().collect();
            v.sort_by_key(|b| std::cmp::Reverse(b.1));
            for (name, t) in v {
                eprintln!(
                    "dsrun: GPU profile: {name:<20} {:>9.1} ms",
                    t.as_secs_f64() * 1e3
                );
            }
        }
    }
    Ok(())
}
