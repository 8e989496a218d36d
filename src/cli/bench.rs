//! `dsrun bench`: prompt-processing and generation speed measured as llama-bench measures them —
//! ppN evaluates N tokens from an empty cache in batches, tgN generates N tokens one at a time
//! from an empty cache — each after one warm-up run, repeated `-r` times, reported as mean ± std
//! tokens per second, as a markdown table or as JSON with llama-bench's field names. With
//! `-d D` (llama-bench's `--n-depth`) each test starts after D tokens already in the cache
//! ("pp512 @ d8192"): the D tokens are evaluated once, untimed, and the cache is rewound to them
//! before each run (windowed caches, which cannot rewind, evaluate them again, untimed).

use super::common::MoeArgs;
use super::CliError;
use clap::Args;
use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::model::moe_select::MoeStats;
use dsrun::model::KvTypes;
use dsrun::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF model file
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Prompt lengths to test (comma-separated; 0 skips)
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test (comma-separated; 0 skips)
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Tokens already in the cache when each test starts (comma-separated), as llama-bench's
    /// `-d`: the speed at a long context
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub n_depth: Vec<usize>,
    /// Thread counts to test (comma-separated)
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Batch size for prompt processing
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// Repetitions of each test
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Output format: md or json
    #[arg(short = 'o', long = "output", default_value = "md")]
    pub output: String,
    #[command(flatten)]
    pub moe: MoeArgs,
    #[command(flatten)]
    pub kv: super::kv::KvArgs,
    #[command(flatten)]
    pub device: super::device::DeviceArgs,
    #[command(flatten)]
    pub rope: super::rope::RopeArgs,
}

struct Result1 {
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    samples_ns: Vec<u128>,
    /// Experts per token over the timed runs (MoE models).
    experts: MoeStats,
}

impl Result1 {
    fn n_tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
    fn ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.n_tokens() as f64 * 1e9 / ns.max(1) as f64)
            .collect()
    }
    fn mean_std(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        (m, var.sqrt())
    }
    fn test_name(&self) -> String {
        let test = if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        match self.n_depth {
            0 => test,
            d => format!("{test} @ d{d}"),
        }
    }
}

/// Pseudo-random token ids (llama-bench also feeds random tokens).
fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

/// One timed run on `s`: rewinds it to its first `depth` tokens (evaluating them again, untimed,
/// where the cache cannot rewind), then times `n_prompt` tokens in batches or `n_gen` tokens one
/// at a time.
fn run_test(
    s: &mut Session,
    experts: &mut MoeStats,
    depth: usize,
    n_prompt: usize,
    n_gen: usize,
) -> Result<u128, Error> {
    let nv = s.model.hp.n_vocab;
    s.truncate(depth);
    if s.tokens.len() != depth {
        s.clear();
        if depth > 0 {
            s.eval(&tokens(depth, nv, 3))?;
        }
    }
    s.moe.stats = std::mem::take(experts);
    let t0 = Instant::now();
    if n_prompt > 0 {
        s.eval(&tokens(n_prompt, nv, 7))?;
    }
    let mut tok = tokens(1, nv, 11)[0];
    for _ in 0..n_gen {
        let logits = s.eval(&[tok])?;
        tok = dsrun::sampling::argmax(&logits);
    }
    let ns = t0.elapsed().as_nanos();
    *experts = std::mem::take(&mut s.moe.stats);
    Ok(ns)
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let file = GgufFile::open(&args.model)?;
    let mut model = Model::load(&file)?;
    args.rope.apply(&mut model, args.output == "json")?;
    args.device.apply(&mut model, false)?;
    // On the GPU: memory bandwidth by a copy, and the decode roofline it implies.
    let roofline = match &model.gpu {
        Some(g) => {
            let bw = g.ctx.copy_bandwidth()?;
            let bytes = g.decode_bytes(&model.hp);
            eprintln!(
                "dsrun bench: GPU copy bandwidth {:.1} GB/s; a decoded token reads {:.1} MiB of \
                 weights: roofline {:.1} t/s",
                bw / 1e9,
                bytes as f64 / (1u64 << 20) as f64,
                bw / bytes as f64
            );
            Some((bw, bytes))
        }
        None => None,
    };
    let device = if model.gpu.is_some() { "gpu" } else { "cpu" };
    let (moe, what) = args.moe.config(&model)?;
    if let Some(w) = what.filter(|_| !moe.is_model_default()) {
        eprintln!("dsrun bench: {w}");
    }
    let kv = args.kv.types()?;
    if kv != KvTypes::default() {
        let n = |t: dsrun::tensor::GgmlType| t.name().to_lowercase();
        eprintln!("dsrun bench: KV cache K {} + V {}", n(kv.k), n(kv.v));
    }
    let stream = args.kv.stream(&file, &model.hp)?;
    if let Some(c) = &stream {
        let longest = args.n_prompt.iter().chain(&args.n_gen).max().copied();
        let deepest = args.n_depth.iter().max().copied().unwrap_or(0);
        let n = (longest.unwrap_or(0) + deepest).max(1);
        let line = super::kv::describe(&model.hp, n, kv, Some(c));
        eprintln!("dsrun bench: {line}");
    }
    let threads = if args.threads.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        args.threads.clone()
    };
    if !matches!(args.output.as_str(), "md" | "json") {
        return Err(Error::Invalid(format!(
            "unknown output format {:?} (md or json)",
            args.output
        ))
        .into());
    }
    let mut tests = Vec::new();
    for &d in &args.n_depth {
        for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
            tests.push((p, 0, d));
        }
        for &n in args.n_gen.iter().filter(|&&n| n > 0) {
            tests.push((0, n, d));
        }
    }
    let mut results = Vec::new();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {t} threads: {e}")))?;
        for &(p, n, d) in &tests {
            let mut experts = MoeStats::default();
            let samples = pool.install(|| -> Result<Vec<u128>, Error> {
                let mut s = Session::new(&model, (d + p + n).max(1), args.batch_size)?;
                s.set_moe(moe.clone())?;
                s.set_kv(kv, stream.clone())?;
                run_test(&mut s, &mut MoeStats::default(), d, p, n)?;
                (0..args.reps.max(1))
                    .map(|_| run_test(&mut s, &mut experts, d, p, n))
                    .collect()
            })?;
            let r = Result1 {
                threads: t,
                n_prompt: p,
                n_gen: n,
                n_depth: d,
                samples_ns: samples,
                experts,
            };
            if args.output == "md" {
                let (m, sd) = Result1::mean_std(&r.ts());
                let experts = match r.experts.summary() {
                    Some(s) => format!(", {s}"),
                    None => String::new(),
                };
                let roof = match roofline.filter(|_| r.n_gen > 0) {
                    Some((bw, bytes)) => {
                        format!(", {:.0}% of the roofline", 100.0 * m * bytes as f64 / bw)
                    }
                    None => String::new(),
                };
                eprintln!(
                    "dsrun bench: t={t} {device} {}: {m:.2} ± {sd:.2} t/s{experts}{roof}",
                    r.test_name()
                );
            }
            results.push(r);
        }
    }
    let mut out = std::io::stdout().lock();
    let name = file
        .path()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = file.tensors.iter().map(|t| t.n_bytes).sum::<u64>();
    let params = file.tensors.iter().map(|t| t.n_elements()).sum::<u64>();
    if args.output == "json" {
        let arr: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let ts = r.ts();
                let (m, sd) = Result1::mean_std(&ts);
                let ns: Vec<f64> = r.samples_ns.iter().map(|&x| x as f64).collect();
                let (mn, sn) = Result1::mean_std(&ns);
                serde_json::json!({
                    "model_filename": args.model.display().to_string(),
                    "model_type": model.hp.arch.name,
                    "model_size": size,
                    "model_n_params": params,
                    "n_batch": args.batch_size,
                    "n_threads": r.threads,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "n_depth": r.n_depth,
                    "avg_ns": mn as u64,
                    "stddev_ns": sn as u64,
                    "avg_ts": m,
                    "stddev_ts": sd,
                    "samples_ns": r.samples_ns,
                    "samples_ts": ts,
                    "moe_avg_experts": r.experts.average(),
                    "moe_avg_experts_per_layer": r.experts.per_layer(),
                    "moe_vram_hit_rate": match r.experts.vram {
                        (_, 0) => None,
                        (h, n) => Some(h as f64 / n as f64),
                    },
                    "device": device,
                    "gpu_name": model.gpu.as_ref().map(|g| g.ctx.info.name.clone()),
                    "gpu_copy_bandwidth_bps": roofline.map(|r| r.0),
                    "decode_bytes_per_token": roofline.map(|r| r.1),
                    "roofline_ts": roofline.map(|(bw, b)| bw / b as f64),
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&arr).expect("serializable")
        )?;
    } else {
        writeln!(
            out,
            "| model | size | params | device | threads | test | t/s |"
        )?;
        writeln!(out, "| --- | ---: | ---: | --- | ---: | ---: | ---: |")?;
        for r in &results {
            let (m, sd) = Result1::mean_std(&r.ts());
            writeln!(
                out,
                "| {name} | {:.2} MiB | {:.2} M | {device} | {} | {} | {m:.2} ± {sd:.2} |",
                size as f64 / (1u64 << 20) as f64,
                params as f64 / 1e6,
                r.threads,
                r.test_name()
            )?;
        }
    }
    Ok(())
}
