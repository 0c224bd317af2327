# Shared shell for benches/compare_haproxy.sh, benches/memory.sh and benches/soak.sh (sourced,
# not run): processes and their cleanup, free loopback ports, the release binary, the bench
# configs (mock bank, portcullis configs and policies, HAProxy's pass-through config,
# access-token keys, the full-FAPI loadgen scenario) and /proc sampling.
#
# A script sets ROOT and KEEP_WORKDIR, sources this file, calls `bench_traps`, and then
# `bench_workdir NAME` (sets WORK and CERTS). Everything listens on 127.0.0.1 only; every
# process started with `start_bg` is stopped on exit (including Ctrl-C).
#
# The environment it reads: CARGO_TARGET_DIR (default target/: the binary
# release/portcullis, and where the scripts write their results), BUILD (0: no cargo build),
# KEEP_WORKDIR, TMPDIR (the work directory); HEADER_READ_TIMEOUT and IDLE_TIMEOUT (the
# listener's, for portcullis_config) and FAPI_TOKEN_LIFETIME (fapi_scenario), which the
# scripts set. Its Python steps are benches/py/lib.py.
# shellcheck shell=bash

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
# A BIN given by the caller wins over the release build of CARGO_TARGET_DIR.
BIN=${BIN:-$TARGET_DIR/release/portcullis}

# Where a bench writes its JSON summary: $OUT when the caller gives it, else TARGET_DIR/$1; its
# directory is created.
result_json() {
    local out=${OUT:-$TARGET_DIR/$1}
    mkdir -p "$(dirname "$out")"
    echo "$out"
}

# The access tokens' issuer and audience, and the scope the token routes require.
AS_ISSUER=https://as.bank.example
AS_AUDIENCE=https://api.bank.example
TOKEN_SCOPE=accounts
# The pass-through and token route; the full-FAPI route (one account of the token's grant).
ROUTE=/open-banking/v3.1/aisp/accounts
FAPI_ROUTE_TEMPLATE=/open-banking/v3.1/aisp/accounts/{AccountId}
FAPI_ACCOUNT=acc-1
FAPI_OTHER_ACCOUNT=acc-2
FAPI_PATH=$ROUTE/$FAPI_ACCOUNT

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- processes and cleanup -------------------------------------------------------------------

PIDS=()
WORK=""

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}

# Drops a pid that has been reaped, so that cleanup never signals a reused pid.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Stops a started process and forgets it.
stop_started() {
    stop_pid "$1"
    forget_pid "$1"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        # Kept when asked, or after a failure (its logs say why); not after Ctrl-C or SIGTERM.
        if [[ ${KEEP_WORKDIR:-0} == 1 || ($rc -ne 0 && $rc -ne 130 && $rc -ne 143) ]]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

bench_traps() {
    trap 'printf "error: line %s: %s exited %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Starts a command in the background with its output in a log file; sets STARTED_PID.
start_bg() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# Waits until `curl ARGS...` answers 200, or fails if the process dies or 15 s pass.
wait_200() {
    local pid=$1 logfile=$2
    shift 2
    local i code
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "process $pid exited early (log above)"; }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    cat "$logfile" >&2
    die "no 200 from: curl $* (last status '$code')"
}

# Runs a command in the background and waits for it (so that Ctrl-C interrupts the wait at
# once); its exit status is returned. Standard output and error as the caller redirects them.
run_fg() {
    "$@" &
    local pid=$! rc=0
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# Prints N free loopback TCP ports, all distinct, from below the kernel's ephemeral range:
# a port inside it can still be held by a TIME_WAIT socket of a client connection closed a
# moment ago (the previous run's load generator), and a listener's bind there then fails with
# "Address already in use" although nothing listens (seen twice in a row between runs).
free_ports() {
    python3 "$ROOT/benches/py/lib.py" free-ports "$1"
}

# --- /proc -----------------------------------------------------------------------------------

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() {
    local f
    read -r -a f <"/proc/$1/stat"
    echo $((f[13] + f[14]))
}

# Steal ticks of the whole machine so far (/proc/stat, all CPUs): time the hypervisor ran
# something else while a virtual CPU wanted to run, e.g. the host emulating a disk write.
steal_ticks() {
    local f
    read -r -a f </proc/stat
    echo "${f[8]:-0}"
}

# User+system CPU ticks of the audit writer thread of process $1 (thread name
# `portcullis-audit`, shown as `portcullis-audi`); 0 when it has none.
audit_writer_ticks() {
    local t f n=0
    for t in /proc/"$1"/task/*; do
        [[ $(<"$t/comm") == portcullis-audi* ]] || continue
        read -r -a f <"$t/stat"
        n=$((f[13] + f[14]))
    done
    echo "$n"
}

# A kB field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in KiB.
status_kib() {
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "" }' "/proc/$1/status"
}

# Open file descriptors of a process.
fd_count() {
    local n=0 f
    for f in /proc/"$1"/fd/*; do [[ -e $f || -L $f ]] && n=$((n + 1)); done
    echo "$n"
}

# Threads of a process.
thread_count() { awk '$1 == "Threads:" { print $2 }' "/proc/$1/status"; }

# --- prerequisites ---------------------------------------------------------------------------

require_tools() {
    local t
    for t in "$@"; do command -v "$t" >/dev/null || die "$t is required"; done
}

apt_install() {
    local as_root=(env DEBIAN_FRONTEND=noninteractive)
    [[ $(id -u) -eq 0 ]] || as_root=(sudo DEBIAN_FRONTEND=noninteractive)
    log "installing $* from Debian's packages"
    "${as_root[@]}" apt-get install -y "$@" ||
        { "${as_root[@]}" apt-get update && "${as_root[@]}" apt-get install -y "$@"; }
}

# Builds the release binary (a no-op when it is up to date); BUILD=0 skips cargo and only
# checks that the binary exists.
ensure_binary() {
    if [[ ${BUILD:-1} != 0 ]]; then
        log "building portcullis (cargo build --release)"
        (cd "$ROOT" && cargo build --release)
    fi
    [[ -x $BIN ]] || die "no binary at $BIN (cargo build --release)"
}

# The revision measured: the commit, "+dirty" when src/ or the manifests differ from it.
revision() {
    local rev
    rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ $rev != unknown ]] && ! (cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null); then
        rev="$rev+dirty"
    fi
    echo "$rev"
}

# A temporary work directory with dev certificates and access-token keys:
# WORK, CERTS (dev-certs), TOK (dev-token keygen: as.key, as-jwks.json, dpop.key).
bench_workdir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-$1.XXXXXX")
    CERTS=$WORK/certs
    TOK=$WORK/tokens
    mkdir -p "$WORK/policies" "$WORK/audit" "$WORK/results"
    "$BIN" dev-certs --out "$CERTS" >/dev/null
    "$BIN" dev-token keygen --out "$TOK" >/dev/null
    CURL_MTLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key")
}

# --- the upstream and portcullis -------------------------------------------------------------

# Starts the mock bank on 127.0.0.1:$1; sets PID_BANK and P_BANK.
start_mock_bank() {
    P_BANK=$1
    start_bg "$WORK/mock-bank.log" "$BIN" mock-bank --listen "127.0.0.1:$P_BANK"
    PID_BANK=$STARTED_PID
    wait_200 "$PID_BANK" "$WORK/mock-bank.log" "http://127.0.0.1:$P_BANK$ROUTE"
}

# The bench policies in $WORK/policies:
#   bench.yaml          the pass-through route (mTLS only)
#   bench-limited.yaml  the same with a client rate-limit class
#   bench-token.yaml    mTLS + FAPI 2.0 sender-constrained token + scope + rate-limit class
#   bench-fapi.yaml     the full FAPI route: mTLS, DPoP-bound token (fapi2), scope, object
#                       rule (the account in the path must be granted by the token's
#                       authorization_details), rate-limit class
write_policies() {
    cat >"$WORK/policies/bench.yaml" <<EOF
# The pass-through route: mTLS only.
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
EOF
    cat >"$WORK/policies/bench-limited.yaml" <<EOF
# The pass-through route with one rate-limit check per request (a quota it never reaches).
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    rate_limit: bench
EOF
    cat >"$WORK/policies/bench-token.yaml" <<EOF
# The token route: a certificate-bound (or DPoP-bound) token with the '$TOKEN_SCOPE' scope, and
# the client's rate-limit class (a quota it never reaches), like HAProxy's stick table.
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    auth: {profile: fapi2}
    scopes: {all_of: [$TOKEN_SCOPE]}
    rate_limit: bench
EOF
    cat >"$WORK/policies/bench-fapi.yaml" <<EOF
# The full FAPI route: mTLS, a FAPI 2.0 sender-constrained token (the load generator's is
# DPoP-bound, with a fresh proof per request), the '$TOKEN_SCOPE' scope, an object rule (the
# account in the path must be one the token's authorization_details grant), and the client's
# rate-limit class (a quota it never reaches). The audit log is on (file sink).
group: bench
upstream: bank
routes:
  - id: aisp.accounts.get
    method: GET
    path: $FAPI_ROUTE_TEMPLATE
    body_limit: 0
    auth: {profile: fapi2}
    scopes: {all_of: [$TOKEN_SCOPE]}
    rate_limit: bench
    rules:
      - id: account-in-grant
        value: {path: AccountId}
        in: {authorization_details: {type: account_information, field: accounts}}
EOF
}

# The class of every rate-limited bench route: a quota never reached. (Not rate 10^9 with the
# same burst: GCRA tolerates a request whose clock reading lags the bucket by up to burst x
# per/rate, here 1 s; at 10^9/s that is 1 ms, and a worker thread descheduled for longer
# between reading the clock and updating the bucket was refused, 429, on a busy 2-core box.)
RATE_LIMITS="rate_limits:
  classes:
    bench: {rate: 1000000, per: 1s, burst: 1000000}"

# The DPoP replay cache, sized for the full-FAPI load: saturation on a 2-core machine reaches
# ~17,000 proofs/s, which with the 65 s window (max_age 60 s + clock skew 5 s) is ~1.1M live
# jtis, over the default 1M; a full cache fails closed (503 binding.replay_store_unavailable).
DPOP="dpop:
  replay_capacity: 2000000"

# The token issuer (ES256 only, like HAProxy's jwt_verify(ES256, ...)).
ISSUERS="issuers:
  as:
    issuer: $AS_ISSUER
    audience: $AS_AUDIENCE
    algorithms: [ES256]
    jwks: {file: tokens/as-jwks.json}"

# An audit block: file sink into audit/$1 (rotated at 64 MiB, 4 files kept, so long runs do not
# fill the disk), or none.
audit_file() {
    printf 'audit:\n  sink: file\n  path: audit/%s\n  rotate_bytes: 67108864\n  retain: 4\n' "$1"
}
AUDIT_NONE="audit:
  sink: none"

# A portcullis config on stdout: $1 port, $2 admin port, $3 extra top-level blocks (audit,
# issuers, rate limits, ...), $4 policy file (default policies/bench.yaml). Paths are
# relative to $WORK, where the config is written.
portcullis_config() {
    cat <<EOF
listener:
  address: "127.0.0.1:$1"
  tls:
    certificate: certs/server.pem
    private_key: certs/server.key
    client_ca: [certs/ca.pem]
    crl: [certs/ca.crl]
    client_auth: required
    handshake_timeout: 5s
  limits:
    header_read_timeout: ${HEADER_READ_TIMEOUT:-10s}
    request_timeout: 30s
    idle_timeout: ${IDLE_TIMEOUT:-60s}
  server_names: [localhost]
admin:
  address: "127.0.0.1:$2"
upstreams:
  bank:
    url: http://127.0.0.1:$P_BANK
    connect_timeout: 1s
    response_timeout: 10s
forwarding:
  client_cert: rfc9440
fapi:
  interaction_id: echo_or_generate
$3
policies: [${4:-policies/bench.yaml}]
shutdown:
  drain_timeout: 1s
EOF
}

# The full-FAPI portcullis config on stdout: $1 port, $2 admin port, $3 audit file name.
fapi_config() {
    portcullis_config "$1" "$2" "$(audit_file "$3")
$ISSUERS
$DPOP
$RATE_LIMITS" policies/bench-fapi.yaml
}

# Checks the config $1, starts portcullis with it and waits until it is ready; $2 log name, $3
# admin port. Sets STARTED_PID. (Not in a pipeline: a subshell's pids would escape cleanup.)
start_portcullis() {
    local config=$1 name=$2 admin=$3
    "$BIN" check --config "$config" >/dev/null || die "portcullis check refuses $config"
    start_bg "$WORK/$name.log" "$BIN" run --config "$config"
    wait_200 "$STARTED_PID" "$WORK/$name.log" "http://127.0.0.1:$admin/readyz"
}

# --- haproxy ---------------------------------------------------------------------------------

# HAProxy's pass-through config on stdout, the counterpart of portcullis_config with the
# pass-through policy: frontend `mtls` on 127.0.0.1:$1 in front of backend `bank` (P_BANK).
# Mirrors portcullis as far as HAProxy can: mTLS required against the same CA and CRL, one
# route forwarded, the same forwarding headers set, the same timeouts (HEADER_READ_TIMEOUT,
# IDLE_TIMEOUT), keep-alive on both sides, no request log; HAPROXY_MAXCONN (default 4096).
# Writes CERTS/haproxy-server.pem and sets BIND_TLS (the TLS part of a `bind` line), which
# further frontends appended by the caller reuse.
haproxy_passthrough_config() {
    cat "$CERTS/server.pem" "$CERTS/server.key" >"$CERTS/haproxy-server.pem"
    BIND_TLS="ssl crt $CERTS/haproxy-server.pem ca-file $CERTS/ca.pem crl-file $CERTS/ca.crl verify required alpn h2,http/1.1"
    cat <<EOF
# Generated by benches/lib.sh (haproxy_passthrough_config). Mirrors the portcullis config as
# far as HAProxy can: mTLS required against the same CA and CRL, one route forwarded, the same
# forwarding headers set, the same timeouts, keep-alive on both sides, no request log.
global
    nbthread $(nproc)
    maxconn ${HAPROXY_MAXCONN:-4096}
    # portcullis's protocol policy (src/tls.rs): TLS 1.3 AEAD suites, TLS 1.2 ECDHE + AES-GCM,
    # in its order, so that both servers negotiate the same suite with the load generator.
    # (Left alone, HAProxy's server preference picks AES-256-GCM, rustls AES-128-GCM.)
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384
    log stdout format raw local0

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client ${IDLE_TIMEOUT:-60s}
    timeout http-request ${HEADER_READ_TIMEOUT:-10s}
    timeout http-keep-alive ${IDLE_TIMEOUT:-60s}
    timeout server 10s

frontend mtls
    bind 127.0.0.1:$1 $BIND_TLS
    default_backend bank
    acl host_ok req.hdr(host),field(1,:) -i -m str localhost
    acl route_accounts path $ROUTE
    http-request deny deny_status 421 unless host_ok
    http-request deny deny_status 404 unless route_accounts
    http-request deny deny_status 405 unless METH_GET
    # Vouched headers: client copies never survive (set-header replaces, del-header drops);
    # the client certificate comes from the TLS session.
    http-request del-header x-forwarded-client-cert
    http-request del-header forwarded
    http-request del-header x-real-ip
    http-request set-header client-cert :%[ssl_c_der,base64]:
    http-request set-header x-forwarded-for %[src]
    http-request set-header x-forwarded-proto https
    http-request set-header x-forwarded-host %[req.hdr(host)]
    # FAPI interaction id: echoed if a UUID, generated otherwise, returned on the response.
    http-request set-header x-fapi-interaction-id %[uuid] unless { req.hdr(x-fapi-interaction-id) -m reg -i ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\$ }
    http-request set-var(txn.iid) req.hdr(x-fapi-interaction-id)
    http-response set-header x-fapi-interaction-id %[var(txn.iid)]

backend bank
    server bank 127.0.0.1:$P_BANK
EOF
}

# --- the full-FAPI load ----------------------------------------------------------------------

# The full-FAPI loadgen scenario on stdout: $1 port, $2 load block (YAML, indented 2), $3 the
# routes block (default: the granted account, 200 expected). The client is TPP One with a
# DPoP-bound token (scope accounts, authorization_details granting acc-1) minted from the dev AS
# key; every request carries a fresh proof.
fapi_scenario() {
    local routes=${3:-"  - name: account
    path: $FAPI_PATH
    expect: [200]"}
    cat <<EOF
# Generated by benches/lib.sh (fapi_scenario).
name: fapi
target:
  address: 127.0.0.1:$1
  server_name: localhost
  ca: $CERTS/ca.pem
  timeout: 10s
clients:
  - name: tpp-one
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key
    token:
      signing_key: $TOK/as.key
      kid: as-1
      issuer: $AS_ISSUER
      audience: $AS_AUDIENCE
      client_id: tpp-one
      scopes: [$TOKEN_SCOPE, payments]
      claims:
        authorization_details:
          - {type: account_information, accounts: [$FAPI_ACCOUNT]}
      lifetime: ${FAPI_TOKEN_LIFETIME:-1h}
      binding: dpop
      dpop_key: $TOK/dpop.key
  - name: tpp-one-no-scope
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key
    token:
      signing_key: $TOK/as.key
      kid: as-1
      issuer: $AS_ISSUER
      audience: $AS_AUDIENCE
      client_id: tpp-one
      scopes: [payments]
      claims:
        authorization_details:
          - {type: account_information, accounts: [$FAPI_ACCOUNT]}
      lifetime: ${FAPI_TOKEN_LIFETIME:-1h}
      binding: dpop
      dpop_key: $TOK/dpop.key
    weight: 1
routes:
$routes
load:
$2
EOF
}

# The measured route sends as tpp-one only (the second client is for the refusal checks).
FAPI_ROUTE_LOAD="  - name: account
    path: $FAPI_PATH
    clients: [tpp-one]
    expect: [200]"

# The refusal checks of the full-FAPI route, run on port $1 before any measurement: a good
# request, no DPoP proof, a replayed proof, an account outside the grant and a token without
# the scope, on one connection. Every refusal must come with its reason (problem+json) and
# nothing else may happen. The report goes to $2 (JSON).
fapi_checks() {
    local port=$1 out=$2
    fapi_scenario "$port" "  connections: 1
  requests: 50" "$FAPI_ROUTE_LOAD
  - name: no-proof
    path: $FAPI_PATH
    clients: [tpp-one]
    dpop_proof: none
    expect: [200]
  - name: replayed-proof
    path: $FAPI_PATH
    clients: [tpp-one]
    dpop_proof: replay
    expect: [200]
  - name: account-outside-grant
    path: $ROUTE/$FAPI_OTHER_ACCOUNT
    clients: [tpp-one]
    expect: [200]
  - name: token-without-scope
    path: $FAPI_PATH
    clients: [tpp-one-no-scope]
    expect: [200]" >"$WORK/fapi-checks.yaml"
    # Refusals count as errors here (their reasons are kept that way): exit 1 is expected.
    run_fg "$BIN" loadgen --scenario "$WORK/fapi-checks.yaml" --json "$out" \
        >"$out.stdout" 2>"$out.stderr" || true
    [[ -s $out ]] || { cat "$out.stderr" >&2; die "the full-FAPI checks did not run"; }
    python3 "$ROOT/benches/py/lib.py" fapi-checks "$out" ||
        die "the full-FAPI route did not refuse as required (report: $out)"
}

# Converts a scenario report ($1) to the flag-mode report shape the compare script reads
# (requests, rps, p50_us ... statuses, errors = requests without an answer), in place; the
# original is kept as $1.scenario.json.
flatten_report() {
    python3 "$ROOT/benches/py/lib.py" flatten "$1"
}

# --- sampling --------------------------------------------------------------------------------

# CPU time the hypervisor gave to other guests ("steal", /proc/stat), summed over all cores,
# in milliseconds since boot; 0 where the kernel does not account it.
steal_ms() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%d", ($9 + 0) * 1000 / hz; exit }' /proc/stat 2>/dev/null || echo 0
}

# Samples the machine's CPU steal and a process's CPU time every second into $2 (TSV: unix
# time, steal ms since boot, the process's user+system ms) until the file $3 exists or the
# process is gone -- one awk per second, so the sampler itself costs next to nothing.
sample_cpu() {
    local pid=$1 out=$2 stop=$3 hz
    hz=$(getconf CLK_TCK)
    while kill -0 "$pid" 2>/dev/null && [[ ! -e $stop ]]; do
        awk -v hz="$hz" -v now="$EPOCHREALTIME" '
            FNR == NR && $1 == "cpu" { steal = $9 }
            FNR != NR { sub(/^.*\) /, ""); cpu = $12 + $13 }
            END { printf "%s\t%d\t%d\n", now, steal * 1000 / hz, cpu * 1000 / hz }' \
            /proc/stat "/proc/$pid/stat" >>"$out" 2>/dev/null || true
        sleep 1
    done
}

# Samples a process every $2 seconds into $3 (TSV: seconds since start, VmRSS KiB, VmHWM KiB,
# open fds, threads, the machine's CPU steal in ms since boot) until the file $4 exists or the
# process ends. Run it in the background.
sample_process() {
    local pid=$1 every=$2 out=$3 stop=$4 t0=$EPOCHREALTIME
    while kill -0 "$pid" 2>/dev/null && [[ ! -e $stop ]]; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" \
            "$(status_kib "$pid" VmRSS)" "$(status_kib "$pid" VmHWM)" "$(fd_count "$pid")" \
            "$(thread_count "$pid")" "$(steal_ms)" >>"$out"
        # Sleep in short steps, so that the stop file ends the sampler promptly.
        local i
        for ((i = 0; i < every * 10; i++)); do
            [[ -e $stop ]] && break
            sleep 0.1
        done
    done
}
