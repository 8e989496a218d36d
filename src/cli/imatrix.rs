//! `dsrun imatrix -m M -f TEXT -o FILE`: the importance matrix llama-imatrix computes, in the
//! GGUF file format it writes (or its legacy `.dat`), for `dsrun quantize --imatrix` and
//! `llama-quantize --imatrix`.

use super::CliError;
use clap::{Args, ValueEnum};
use dsrun::engine::Model;
use dsrun::gguf::GgufFile;
use dsrun::imatrix::{compute, ImatrixOptions};
use dsrun::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Gguf,
    Dat,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// GGUF model file
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Calibration text
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Output file
    #[arg(short = 'o', long = "output-file", default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Tokens per chunk (each chunk is evaluated from an empty context)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// At most this many chunks (default: all the text gives)
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per batch
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// Threads (default: all cores)
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Also collect output.weight's inputs
    #[arg(long = "process-output")]
    pub process_output: bool,
    /// gguf (llama.cpp's default) or dat (its legacy format)
    #[arg(long = "output-format", value_enum, default_value_t = OutputFormat::Gguf)]
    pub output_format: OutputFormat,
}

pub fn run(args: ImatrixArgs) -> Result<(), CliError> {
    if let Some(t) = args.threads {
        // An error only means a pool exists already, which keeps its size.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    if args.output.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a directory; give the output file's name",
            args.output.display()
        ))
        .into());
    }
    let file = GgufFile::open(&args.model)?;
    let model = Model::load(&file)?;
    let text =
        std::fs::read(&args.file).map_err(|e| Error::io(args.file.display().to_string(), e))?;
    let text = String::from_utf8_lossy(&text);
    let opts = ImatrixOptions {
        n_ctx: args.ctx_size,
        n_chunks: args.chunks,
        n_batch: args.batch_size,
        process_output: args.process_output,
        dataset: args.file.display().to_string(),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:40}] {pos}/{len} chunks (elapsed {elapsed}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("imatrix");
    let t0 = Instant::now();
    let m = compute(&model, &text, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let partial = m.entries.values().filter(|e| e.counts.contains(&0)).count();
    match args.output_format {
        OutputFormat::Gguf => m.write_gguf(&args.output)?,
        OutputFormat::Dat => m.write_dat(&args.output)?,
    }
    eprintln!(
        "dsrun: {} chunks of {} tokens in {:.1} s; {} entries ({partial} with experts no token reached) written to {}",
        m.chunk_count,
        m.chunk_size,
        t0.elapsed().as_secs_f64(),
        m.entries.len(),
        args.output.display()
    );
    Ok(())
}
