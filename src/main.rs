//! The `dsrun` command: parse arguments, run the subcommand, turn the outcome into an exit code.
//! Errors are printed once, as one line on stderr.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse_from(cli::expand_llama_flags(std::env::args_os()));
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsrun: error: {e}");
            ExitCode::FAILURE
        }
    }
}
