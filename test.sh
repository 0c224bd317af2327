#!/usr/bin/env bash
# The whole test suite. Needs only the Rust toolchain (stable); installs nothing else yet.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --locked --all-features "$@"
