//! The `portcullis` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse()).await
}
