//! The `portcullis` binary: parses the command line and hands it to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: a proxy allocates and frees small buffers (headers, bodies,
/// records) on every request from several threads, where glibc's arenas and consolidation cost
/// about a tenth of the CPU (perf, pass-through load).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    cli::run(cli::Cli::parse()).await
}
