//! `dsrun perplexity`: perplexity of a text file as llama-perplexity measures it, and the KL
//! divergence mode that judges an approximation (quantization, fewer experts, a compressed KV
//! cache) against a saved reference run.

use super::common::ModelArgs;
use super::CliError;
use clap::Args;
use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::perplexity::base_file::{scored_per_chunk, BaseReader, BaseWriter};
use dsrun::perplexity::{
    chunks, kl_divergence, log_prob, log_softmax, score_chunk, KldStats, PplStats,
};
use dsrun::sampling::argmax;
use dsrun::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Score at most this many chunks of -c tokens
    #[arg(long)]
    pub chunks: Option<usize>,
    /// With --kl-divergence: the reference file to compare with; alone: where to save this
    /// run's log-probabilities as the reference
    #[arg(long = "kl-divergence-base")]
    pub kl_base: Option<PathBuf>,
    /// Compare with the reference in --kl-divergence-base (the text comes from that file)
    #[arg(long = "kl-divergence", requires = "kl_base")]
    pub kl_divergence: bool,
}

pub fn run(args: PerplexityArgs) -> Result<(), CliError> {
    args.model.init_threads();
    let file = GgufFile::open(&args.model.model)?;
    let mut model = Model::load(&file)?;
    args.model.rope.apply(&mut model, false)?;
    args.model.device.apply(&mut model, false)?;
    if args.kl_divergence {
        return run_kld(&args, &model);
    }
    let path = args
        .file
        .as_ref()
        .ok_or_else(|| Error::Invalid("no text to score: give it with -f FILE".into()))?;
    let text = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    let text = String::from_utf8_lossy(&text);
    // The figures everyone quotes (llama.cpp's included) use -c 512: that is the default here.
    let n_ctx = args.model.n_ctx(512, model.hp.n_ctx_train);
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true, false)?;
    if n_ctx < 8 || tokens.len() < 2 * n_ctx {
        return Err(Error::Invalid(format!(
            "the text is {} tokens; perplexity with -c {n_ctx} needs at least {} (2 x -c, and -c at least 8)",
            tokens.len(),
            2 * n_ctx
        ))
        .into());
    }
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let chunks = chunks(&tokens, n_ctx, args.chunks, bos);
    eprintln!(
        "dsrun: {} tokens, scoring {} chunks of {n_ctx} (the second half of each)",
        tokens.len(),
        chunks.len()
    );
    let n_vocab = model.hp.n_vocab;
    let mut writer = match &args.kl_base {
        Some(p) => Some(BaseWriter::create(p, n_ctx, n_vocab, chunks.len())?),
        None => None,
    };
    let mut session = Session::new(&model, n_ctx, args.model.batch_size)?;
    args.model.moe.apply(&mut session, false)?;
    args.model.kv.apply(&mut session, false)?;
    let mut stats = PplStats::default();
    let mut out = std::io::stdout().lock();
    let t0 = Instant::now();
    for (i, chunk) in chunks.iter().enumerate() {
        session.clear();
        if writer.is_none() {
            // Logits only for the scored half, a batch at a time: long contexts (-c 32768 with
            // a 150K vocabulary) would otherwise hold gigabytes of logits.
            stats.add(&score_in_batches(&mut session, chunk, n_vocab)?);
            write!(out, "[{}]{:.4},", i + 1, stats.ppl())?;
            out.flush()?;
            if i == 0 {
                let per = t0.elapsed().as_secs_f64();
                eprintln!(
                    "\ndsrun: {per:.2} s per chunk, about {:.0} s in all",
                    per * chunks.len() as f64
                );
            }
            continue;
        }
        let logits = match session.eval_all(chunk) {
            Ok(l) => l,
            Err(e) => {
                if let Some(w) = writer.take() {
                    w.abandon();
                }
                return Err(e.into());
            }
        };
        stats.add(&score_chunk(chunk, &logits, n_vocab));
        if let Some(w) = writer.as_mut() {
            let rows: Vec<Vec<f32>> = (n_ctx / 2..n_ctx - 1)
                .map(|j| log_softmax(&logits[j * n_vocab..(j + 1) * n_vocab]))
                .collect();
            w.add_chunk(chunk, &rows)?;
        }
        write!(out, "[{}]{:.4},", i + 1, stats.ppl())?;
        out.flush()?;
        if i == 0 {
            let per = t0.elapsed().as_secs_f64();
            eprintln!(
                "\ndsrun: {per:.2} s per chunk, about {:.0} s in all",
                per * chunks.len() as f64
            );
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        stats.ppl(),
        stats.ppl_err()
    )?;
    if let Some(w) = writer {
        w.finish()?;
    }
    if let Some(s) = session.moe.stats.summary() {
        eprintln!("dsrun: experts: {s}");
    }
    Ok(())
}

/// The negative log-likelihoods of `score_chunk` (tokens `n/2 + 1..n` of the chunk), with the
/// first half evaluated for its cache only and the rest's logits kept one batch at a time.
fn score_in_batches(s: &mut Session, chunk: &[u32], n_vocab: usize) -> Result<Vec<f64>, Error> {
    let (n, half) = (chunk.len(), chunk.len() / 2);
    s.eval(&chunk[..half])?;
    let mut nll = Vec::with_capacity(n - 1 - half);
    let mut j = half;
    while j < n - 1 {
        let end = (j + s.n_batch).min(n - 1);
        let logits = s.eval_all(&chunk[j..end])?;
        for (r, k) in (j..end).enumerate() {
            nll.push(-log_prob(
                &logits[r * n_vocab..(r + 1) * n_vocab],
                chunk[k + 1],
            ));
        }
        j = end;
    }
    Ok(nll)
}

fn run_kld(args: &PerplexityArgs, model: &Model) -> Result<(), CliError> {
    let base_path = args.kl_base.as_ref().expect("clap requires it");
    let mut base = BaseReader::open(base_path)?;
    let (n_ctx, n_vocab) = (base.n_ctx, base.n_vocab);
    if n_vocab != model.hp.n_vocab {
        return Err(Error::Invalid(format!(
            "the base file has a vocabulary of {n_vocab}, this model {}",
            model.hp.n_vocab
        ))
        .into());
    }
    let n_chunks = args.chunks.map_or(base.n_chunks, |c| c.min(base.n_chunks));
    let mut session = Session::new(model, n_ctx, args.model.batch_size)?;
    args.model.moe.apply(&mut session, false)?;
    args.model.kv.apply(&mut session, false)?;
    let (mut ppl, mut ppl_base) = (PplStats::default(), PplStats::default());
    let mut kld = KldStats::default();
    let mut out = std::io::stdout().lock();
    for i in 0..n_chunks {
        let (chunk, base_rows) = base.next_chunk()?;
        session.clear();
        let logits = session.eval_all(&chunk)?;
        let mut nll = Vec::new();
        let mut nll_base = Vec::new();
        for (r, j) in (n_ctx / 2..n_ctx - 1).enumerate() {
            let cur = log_softmax(&logits[j * n_vocab..(j + 1) * n_vocab]);
            let next = chunk[j + 1] as usize;
            nll.push(-(cur[next] as f64));
            nll_base.push(-(base_rows[r][next] as f64));
            kld.klds.push(kl_divergence(&base_rows[r], &cur));
            if argmax(&cur) == argmax(&base_rows[r]) {
                kld.same_top += 1;
            }
        }
        debug_assert_eq!(nll.len(), scored_per_chunk(n_ctx));
        ppl.add(&nll);
        ppl_base.add(&nll_base);
        write!(out, "[{}] KLD {:.6},", i + 1, kld.mean())?;
        out.flush()?;
    }
    writeln!(out)?;
    writeln!(out, "====== Perplexity statistics ======")?;
    writeln!(
        out,
        "Mean PPL(Q)    : {:.6} +/- {:.6}",
        ppl.ppl(),
        ppl.ppl_err()
    )?;
    writeln!(
        out,
        "Mean PPL(base) : {:.6} +/- {:.6}",
        ppl_base.ppl(),
        ppl_base.ppl_err()
    )?;
    writeln!(out, "====== KL divergence statistics ======")?;
    writeln!(
        out,
        "Mean    KLD: {:.6} +/- {:.6}",
        kld.mean(),
        kld.mean_err()
    )?;
    writeln!(out, "Maximum KLD: {:.6}", kld.quantile(1.0))?;
    writeln!(out, "99.0%   KLD: {:.6}", kld.quantile(0.99))?;
    writeln!(out, "Median  KLD: {:.6}", kld.quantile(0.5))?;
    writeln!(out, "====== Token probability statistics ======")?;
    writeln!(out, "Same top p: {:.3} %", 100.0 * kld.same_top_frac())?;
    if let Some(s) = session.moe.stats.summary() {
        writeln!(out, "Experts per token: {s}")?;
    }
    Ok(())
}
