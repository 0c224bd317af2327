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
