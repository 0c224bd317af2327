#!/usr/bin/env bash
# The whole test suite: `./test.sh` (extra arguments go to `cargo test`). Needs the Rust
# toolchain (rust-toolchain.toml), a C compiler (aws-lc-sys builds from source) and Debian's
# redis-server, which the shared-state tests start privately on a free port (never the system
# service). Missing Debian packages are installed when this can (root, or sudo without a
# password); otherwise it stops at once and prints the command to run.
set -euo pipefail
cd "$(dirname "$0")"

# need_packages PACKAGE... installs the Debian packages that are not installed yet, or stops
# with the exact command that would. Add packages a test needs to the call below.
need_packages() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$p")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "test.sh: missing Debian package(s): ${missing[*]}. Install them, then run ./test.sh again:" >&2
      echo "  sudo sh -c '$cmd'" >&2
      exit 1
    fi
  fi
  echo "test.sh: installing ${missing[*]} (Debian packages) for the tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests start their own servers; a packaged service that came with them is not needed.
  if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
}

if command -v dpkg-query >/dev/null 2>&1; then
  # gcc and libc6-dev: aws-lc-sys compiles C; redis-server: tests/redis.rs.
  need_packages gcc libc6-dev redis-server
elif ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: redis-server is needed for the shared-state tests (not a Debian system: install it with your package manager)" >&2
  exit 1
fi
# The differential harness (tests/differential.rs) runs real frameworks behind the proxy: Tomcat's
# libraries, Jackson and a JDK from Debian, Node for Express, Python's venv for Flask. The test
# itself installs the npm and pip packages under target/tmp/differential.
diff_pkgs=""
[ -f /usr/share/java/tomcat10-catalina.jar ] || diff_pkgs="$diff_pkgs libtomcat10-java"
[ -f /usr/share/java/jackson-databind.jar ] || diff_pkgs="$diff_pkgs libjackson2-databind-java"
command -v javac >/dev/null 2>&1 || diff_pkgs="$diff_pkgs default-jdk-headless"
command -v npm >/dev/null 2>&1 || diff_pkgs="$diff_pkgs nodejs npm"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || diff_pkgs="$diff_pkgs python3-venv"
# tests/oidc_provider.rs runs oidc-provider (Node) as a real authorization server: Node is needed
# even when the harness is skipped.
if [ "${PORTCULLIS_SKIP_DIFFERENTIAL:-}" = 1 ]; then
  diff_pkgs=""
  command -v npm >/dev/null 2>&1 || diff_pkgs=" nodejs npm"
fi
if [ -n "$diff_pkgs" ]; then
  echo "test.sh: installing$diff_pkgs (Debian packages) for the differential harness and the oidc-provider test" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $diff_pkgs >/dev/null
fi
cargo test --locked --all-features "$@"
