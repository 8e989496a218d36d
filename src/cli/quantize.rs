//! `dsrun quantize IN OUT TYPE`: a GGUF file or a Hugging Face folder to a GGUF file of a
//! llama-quantize preset, with progress bars on stderr; Ctrl-C leaves no partial file.

use super::CliError;
use clap::Args;
use dsrun::gguf::writer::tmp_path;
use dsrun::quantize::{
    self, Ftype, GgufSource, PlannedTensor, Progress, QuantizeOptions, Report, Source,
};
use dsrun::tensor::GgmlType;
use dsrun::Error;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input: a GGUF file (F32/F16/BF16/Q8_0, or any type with --allow-requantize) or a Hugging
    /// Face model folder (config.json, *.safetensors, tokenizer.json)
    pub input: PathBuf,
    /// Output GGUF file (written as OUTPUT.tmp and renamed when complete)
    pub output: PathBuf,
    /// Type as llama-quantize names it: Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, F16, BF16, F32, ...
    pub ftype: String,
    /// Allow requantizing tensors that are already quantized
    #[arg(long = "allow-requantize")]
    pub allow_requantize: bool,
    /// Give every quantizable tensor the preset's default type (no per-tensor rules)
    #[arg(long)]
    pub pure: bool,
    /// Leave output.weight as it is
    #[arg(long = "leave-output-tensor")]
    pub leave_output_tensor: bool,
    /// Type of output.weight
    #[arg(long = "output-tensor-type")]
    pub output_tensor_type: Option<String>,
    /// Type of token_embd.weight
    #[arg(long = "token-embedding-type")]
    pub token_embedding_type: Option<String>,
    /// Importance matrix (from `dsrun imatrix` or llama-imatrix, GGUF or legacy .dat) to weigh
    /// the quantizers' rounding errors with, as llama-quantize's --imatrix
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Print the type of each tensor and the sizes, write nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Threads (default: all cores)
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// No progress bars or per-tensor lines, only the summary
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Choose each tensor's type to meet this many bits per weight at the least KL divergence,
    /// measured on the calibration text (-f); the input must be an F16, BF16 or F32 GGUF
    #[arg(long = "target-bpw", conflicts_with_all = ["target_size", "recipe"])]
    pub target_bpw: Option<f64>,
    /// As --target-bpw, for a total tensor size: bytes, or with K, M, G, KiB, MiB, GiB
    #[arg(long = "target-size", conflicts_with = "recipe")]
    pub target_size: Option<String>,
    /// Calibration text for --target-bpw / --target-size
    #[arg(short = 'f', long = "calibration")]
    pub calibration: Option<PathBuf>,
    /// Calibration chunks of --calib-ctx tokens
    #[arg(long = "calib-chunks", default_value_t = 4)]
    pub calib_chunks: usize,
    /// Tokens per calibration chunk
    #[arg(long = "calib-ctx", default_value_t = 256)]
    pub calib_ctx: usize,
    /// Measure the divergence with these types only (one or two, e.g. Q3_K,Q8_0) and estimate
    /// the other candidates' from their importance-weighted errors: one or two model
    /// evaluations per tensor instead of five
    #[arg(long = "probe-type")]
    pub probe_type: Option<String>,
    /// Write the chosen recipe (each tensor's type, and the measurements) as JSON
    #[arg(long = "recipe-out")]
    pub recipe_out: Option<PathBuf>,
    /// Give tensors the types of a recipe written by --recipe-out (no measuring)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
}

/// "14731264", "14.05MiB", "2G" -> bytes.
fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(Error::Invalid(format!(
                "--target-size: unknown unit in {s:?}"
            )))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("--target-size: {s:?} is not a size")))?;
    Ok((n * mult) as u64)
}

/// `--recipe`, or `--target-bpw`/`--target-size`: measure, choose, print the recipe.
fn adaptive(args: &QuantizeArgs, opts: &mut QuantizeOptions) -> Result<(), Error> {
    use dsrun::quantize::adaptive::{choose, measure, CalibrationOptions, Recipe};
    if let Some(path) = &args.recipe {
        opts.recipe.overrides = Recipe::read(path)?.overrides()?;
        return Ok(());
    }
    if args.target_bpw.is_none() && args.target_size.is_none() {
        return Ok(());
    }
    if args.input.is_dir() {
        return Err(Error::Invalid(
            "--target-bpw needs a GGUF input: convert the folder to F16 first".into(),
        ));
    }
    let calib = args.calibration.as_ref().ok_or_else(|| {
        Error::Invalid("--target-bpw / --target-size need calibration text: -f FILE".into())
    })?;
    let text = std::fs::read(calib).map_err(|e| Error::io(calib.display().to_string(), e))?;
    let text = String::from_utf8_lossy(&text);
    if let Some(t) = args.threads {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    let copts = CalibrationOptions {
        n_ctx: args.calib_ctx,
        n_chunks: args.calib_chunks,
        imatrix: opts.imatrix.clone(),
        ..CalibrationOptions::default()
    };
    let mut copts = copts;
    if let Some(list) = &args.probe_type {
        for p in list.split(',') {
            let ty = tensor_type("--probe-type", p.trim())?;
            if !copts.candidates.contains(&ty) {
                return Err(Error::Invalid(format!(
                    "--probe-type {p}: not one of the candidate types (Q3_K, Q4_K, Q5_K, Q6_K, Q8_0)"
                )));
            }
            copts.probe.push(ty);
        }
        if copts.probe.len() > 2 {
            return Err(Error::Invalid(
                "--probe-type: one or two types (e.g. Q3_K,Q8_0)".into(),
            ));
        }
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:40}] {pos}/{len} {msg} (elapsed {elapsed}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("measure");
    let t0 = Instant::now();
    let sens = measure(&args.input, &text, &copts, &|done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    let target = match (&args.target_size, args.target_bpw) {
        (Some(s), _) => parse_size(s)?,
        (None, Some(b)) => (b * sens.n_elements as f64 / 8.0) as u64,
        (None, None) => unreachable!("checked above"),
    };
    let recipe = choose(&sens, target)?;
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in recipe.tensors.values() {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "recipe: {} ({:.3} BPW, {} bytes of tensors for a target of {}), estimated KLD {:.6}; measured in {:.1} s",
        counts.join(", "),
        recipe.bytes as f64 * 8.0 / sens.n_elements as f64,
        recipe.bytes,
        target,
        recipe.estimated_kld,
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = &args.recipe_out {
        recipe.write(p)?;
        eprintln!("recipe written to {}", p.display());
    }
    opts.recipe.overrides = recipe.overrides()?;
    Ok(())
}

fn tensor_type(flag: &str, name: &str) -> Result<GgmlType, Error> {
    GgmlType::from_name(name)
        .or_else(|| Ftype::parse(name).map(Ftype::default_type))
        .ok_or_else(|| Error::Invalid(format!("{flag}: unknown tensor type {name:?}")))
}

pub fn run(args: QuantizeArgs) -> Result<(), CliError> {
    let ftype = Ftype::parse(&args.ftype).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown type {:?}; one of: {}",
            args.ftype,
            Ftype::names().join(", ")
        ))
    })?;
    let mut opts = QuantizeOptions::new(ftype);
    opts.allow_requantize = args.allow_requantize;
    opts.recipe.pure = args.pure;
    opts.recipe.leave_output_tensor = args.leave_output_tensor;
    if let Some(t) = &args.output_tensor_type {
        opts.recipe.output_tensor_type = Some(tensor_type("--output-tensor-type", t)?);
    }
    if let Some(t) = &args.token_embedding_type {
        opts.recipe.token_embedding_type = Some(tensor_type("--token-embedding-type", t)?);
    }
    opts.n_threads = args.threads.unwrap_or(0);
    if let Some(path) = &args.imatrix {
        let m = dsrun::quantize::ImatrixWeights::load(path)?;
        if !args.quiet {
            eprintln!(
                "dsrun: {} importance-matrix entries from {} ({} chunks)",
                m.weights.len(),
                path.display(),
                m.chunk_count
            );
        }
        opts.imatrix = Some(m);
        opts.recipe.has_imatrix = true;
    }

    let t0 = Instant::now();
    let source: Box<dyn Source> = if args.input.is_dir() {
        Box::new(quantize::hf::HfSource::open(&args.input, ftype)?)
    } else {
        Box::new(GgufSource::open(&args.input)?)
    };
    check_paths(&args.input, &args.output)?;
    on_signal(tmp_path(&args.output));
    adaptive(&args, &mut opts)?;
    if args.dry_run {
        let planned = quantize::plan(source.as_ref(), &opts)?;
        for (i, p) in planned.iter().enumerate() {
            eprintln!("{}", tensor_line(i, planned.len(), p));
        }
        let report = Report {
            n_elements: planned.iter().map(|p| p.dims.iter().product::<u64>()).sum(),
            bytes_in: planned.iter().map(|p| p.bytes_in).sum(),
            bytes_out: planned.iter().map(|p| p.bytes_out).sum(),
            tensors: planned,
        };
        eprintln!("{}", summary(&report, ftype));
        return Ok(());
    }

    let bars = Bars::new(args.quiet);
    let report = quantize::quantize(source.as_ref(), &args.output, &opts, &bars).map_err(|e| {
        Error::Invalid(format!(
            "{e}; no output written to {}",
            args.output.display()
        ))
    })?;
    bars.finish();
    eprintln!("{}", summary(&report, ftype));
    eprintln!(
        "wrote {} in {:.1} s",
        args.output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM: the writer may be mid-file; remove the partial output and exit as a shell reports a death by that signal (130, 143).
fn on_signal(tmp: PathBuf) {
    let cleanup = move |what: &str, code: i32| {
        let _ = std::fs::remove_file(&tmp);
        eprintln!(
            "\ndsrun: {what}; removed the partial output {}",
            tmp.display()
        );
        std::process::exit(code);
    };
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // Without the handler the default action still kills the process; only the
        // temporary file would stay behind.
        if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let what = if sig == SIGTERM {
                        "terminated"
                    } else {
                        "interrupted"
                    };
                    cleanup(what, 128 + sig);
                }
            });
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrlc::set_handler(move || cleanup("interrupted", 130));
    }
}

/// The output must not replace the input (it is memory-mapped while being read) and its folder
/// must exist.
fn check_paths(input: &Path, output: &Path) -> Result<(), Error> {
    if output.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a directory; give the output file's name",
            output.display()
        )));
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::Invalid(format!(
                "{}: the output would overwrite the input",
                output.display()
            )));
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn tensor_line(i: usize, n: usize, p: &PlannedTensor) -> String {
    let dims: Vec<String> = p.dims.iter().map(u64::to_string).collect();
    format!(
        "[{:>4}/{n:>4}] {:<36} [{:>16}] {:>6} -> {:<7} {:>9.3} MiB -> {:>9.3} MiB",
        i + 1,
        p.name,
        dims.join(", "),
        p.from.name(),
        p.to.name(),
        mib(p.bytes_in),
        mib(p.bytes_out)
    )
}

fn summary(r: &Report, ftype: Ftype) -> String {
    format!(
        "{ftype}: {} tensors, model size {:.2} MiB ({:.2} BPW) -> {:.2} MiB ({:.2} BPW, {} bytes of tensors)",
        r.tensors.len(),
        mib(r.bytes_in),
        r.bpw_in(),
        mib(r.bytes_out),
        r.bpw_out(),
        r.bytes_out
    )
}

/// indicatif bars on stderr: one for the whole model (weights done, ETA) and one per tensor
/// being quantized. Hidden when stderr is not a terminal; per-tensor lines are printed anyway.
struct Bars {
    quiet: bool,
    multi: MultiProgress,
    total: ProgressBar,
    n_tensors: Mutex<usize>,
    done: Mutex<usize>,
    per_tensor: Mutex<HashMap<usize, ProgressBar>>,
}

impl Bars {
    fn new(quiet: bool) -> Bars {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:40}] {percent:>3}% {msg} (elapsed {elapsed}, ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Bars {
            quiet,
            multi,
            total,
            n_tensors: Mutex::new(0),
            done: Mutex::new(0),
            per_tensor: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self) {
        self.total.finish_and_clear();
    }
}

impl Progress for Bars {
    fn begin(&self, n_tensors: usize, n_elements: u64) {
        *self.n_tensors.lock().unwrap_or_else(|e| e.into_inner()) = n_tensors;
        self.total.set_length(n_elements);
        self.total.set_message(format!("0/{n_tensors} tensors"));
    }

    fn tensor_begin(&self, i: usize, name: &str, n_elements: u64) {
        let bar = self.multi.add(ProgressBar::new(n_elements));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:40}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix("tensor");
        bar.set_message(name.to_string());
        self.per_tensor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i, bar);
    }

    fn advance(&self, i: usize, n: u64) {
        self.total.inc(n);
        if let Some(bar) = self
            .per_tensor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&i)
        {
            bar.inc(n);
        }
    }

    fn tensor_end(&self, i: usize, p: &PlannedTensor) {
        if let Some(bar) = self
            .per_tensor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&i)
        {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let n = *self.n_tensors.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *done += 1;
        self.total.set_message(format!("{}/{n} tensors", *done));
        if !self.quiet {
            let line = tensor_line(i, n, p);
            self.multi.suspend(|| eprintln!("{line}"));
        }
    }
}
