#!/usr/bin/env bash
# The whole test suite. Needs the Rust toolchain (stable) and Debian's redis-server, which the
# shared-state tests start privately on a free port (never the system service); installed here
# when missing.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  echo "test.sh: installing redis-server (Debian package) for the shared-state tests" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The tests start their own servers; the packaged service is not needed.
  if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
cargo test --locked --all-features "$@"
