//! face-edge command line: argument parsing and exit codes. Each subcommand lives in `cli/`.

#![forbid(unsafe_code)]

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let service = args.is_service();
    cli::init_logging(args.log_level, service);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("face-edge: error: {e:#}");
            ExitCode::from(cli::EXIT_CONFIG)
        }
    }
}
