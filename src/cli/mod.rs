//! Command-line arguments and the subcommands. Only this layer prints to the terminal.

mod bench;
mod calibrate;
mod chat;
mod common;
mod device;
mod imatrix;
mod info;
mod kv;
mod perplexity;
#[cfg(feature = "quantize")]
mod quantize;
mod rope;
mod run;

use clap::{Parser, Subcommand};
use std::fmt;

#[derive(Parser, Debug)]
#[command(
    name = "dsrun",
    version,
    about = "Run sparse Mixture-of-Experts language models locally from GGUF files"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a GGUF model: architecture, sizes, experts, tokenizer, tensor types, memory needed
    Info(info::InfoArgs),
    /// Generate text from a prompt (argument or stdin) to stdout
    Run(run::RunArgs),
    /// Chat with a model in the terminal, with its own chat template
    Chat(chat::ChatArgs),
    /// Perplexity of a text file (llama-perplexity's method), or KL divergence from a reference
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt and generation speed, measured as llama-bench does
    Bench(bench::BenchArgs),
    /// Learn how many experts each token needs from a text, within a KL-divergence budget, and
    /// store the rule in a copy of the model
    Calibrate(calibrate::CalibrateArgs),
    /// Compute an importance matrix for the quantizers from calibration text, as llama-imatrix
    Imatrix(imatrix::ImatrixArgs),
    /// Convert a GGUF file or a Hugging Face folder to a GGUF of a llama-quantize type (Q4_K_M, ...)
    #[cfg(feature = "quantize")]
    Quantize(quantize::QuantizeArgs),
}

/// A CLI-level error: a library error or an I/O error on stdout, with context.
#[derive(Debug)]
pub enum CliError {
    Lib(dsrun::Error),
    Stdout(std::io::Error),
}

impl CliError {
    /// A reader that closed the pipe (`dsrun info x | head`) is not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Lib(e) => write!(f, "{e}"),
            CliError::Stdout(e) => write!(f, "writing to stdout: {e}"),
        }
    }
}

impl From<dsrun::Error> for CliError {
    fn from(e: dsrun::Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Stdout(e)
    }
}

pub use kv::expand_llama_flags;

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Imatrix(args) => imatrix::run(args),
        #[cfg(feature = "quantize")]
        Command::Quantize(args) => quantize::run(args),
    }
}
