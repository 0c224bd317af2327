#!/usr/bin/env bash
# The whole test suite: `./test.sh` (extra arguments go to `cargo test`). Needs the Rust
# toolchain (rust-toolchain.toml), a C compiler (aws-lc-sys builds from source), Debian's
# redis-server and redis-sentinel, which the shared-state tests start privately on free ports
# (never the system services), and Chromium, which renders the HTML reports headless. Missing
# Debian packages are installed when this can (root, or sudo without a password); otherwise it
# stops at once and prints the command to run.
set -euo pipefail
cd "$(dirname "$0")"

# install PACKAGE... installs Debian packages when this can (root, or sudo without a password),
# or stops with the exact command that would.
install() {
  [ "$#" -eq 0 ] && return 0
  local cmd="apt-get update && apt-get install -y --no-install-recommends $*"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "test.sh: missing Debian package(s): $*. Install them, then run ./test.sh again:" >&2
      echo "  sudo sh -c '$cmd'" >&2
      exit 1
    fi
  fi
  echo "test.sh: installing $* (Debian packages) for the tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # The tests start their own servers; a packaged service that came with them is not needed.
  if [[ " $* " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  if [[ " $* " == *" redis-sentinel "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now redis-sentinel >/dev/null 2>&1 || true
  fi
  if [[ " $* " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
}

# need_packages PACKAGE... installs the Debian packages that are not installed yet.
need_packages() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
      missing+=("$p")
    fi
  done
  install "${missing[@]}"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "test.sh: not a Debian system: install gcc, redis-server, redis-sentinel, the openssl CLI, Chromium, Prometheus's promtool, a JDK with Tomcat 10 and Jackson jars, Node with npm and Python's venv with your package manager, then run cargo test --locked --all-features" >&2
  exit 1
fi
# gcc and libc6-dev: aws-lc-sys compiles C; redis-server: tests/redis.rs and tests/redis_ha.rs;
# redis-sentinel: the failover in tests/redis_ha.rs; openssl: the handshakes rustls cannot offer
# (TLS 1.0/1.1, CBC suites) in tests/attacks_auth.rs, the OCSP responder (`openssl ocsp`) in
# tests/ocsp.rs and the HTTPS CRL server (`openssl s_server`) in tests/revocation.rs;
# prometheus: its promtool checks the example alert rules in tests/metrics.rs (the server it
# also ships is not started by the tests).
need_packages gcc libc6-dev redis-server redis-sentinel openssl ca-certificates prometheus
# chromium: tests/loadgen.rs and tests/audit.rs render the HTML reports in headless Chromium and
# check the screenshot (about 1.5 minutes to install on the 2-core VM; a Chromium already on
# PATH is used as it is).
command -v chromium >/dev/null 2>&1 || need_packages chromium
# tests/differential.rs runs real frameworks behind the proxy (Tomcat's libraries, Jackson and a
# JDK; Node for Express; Python's venv for Flask) and tests/oidc_provider.rs a real authorization
# server (Node). These are looked for by what the tests run, not by package name: a Node or JDK
# that did not come from Debian's packages is used as it is. The tests install their own npm and
# pip packages under target/tmp.
extra=()
[ -f /usr/share/java/tomcat10-catalina.jar ] || extra+=(libtomcat10-java)
[ -f /usr/share/java/jackson-databind.jar ] || extra+=(libjackson2-databind-java)
command -v javac >/dev/null 2>&1 || extra+=(default-jdk-headless)
command -v npm >/dev/null 2>&1 || extra+=(nodejs npm)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || extra+=(python3-venv)
if [ "${PORTCULLIS_SKIP_DIFFERENTIAL:-}" = 1 ]; then
  extra=()
  command -v npm >/dev/null 2>&1 || extra=(nodejs npm)
fi
install "${extra[@]}"
cargo test --locked --all-features "$@"
