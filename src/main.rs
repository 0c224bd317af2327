//! The `portcullis` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: a proxy allocates and frees small buffers (headers, bodies,
/// records) on every request from several threads, where glibc's arenas and consolidation cost
/// about a tenth of the CPU (perf, pass-through load).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    portcullis::cli::run(portcullis::cli::Cli::parse()).await
}
