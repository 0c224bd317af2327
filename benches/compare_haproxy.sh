#!/usr/bin/env bash
# Side-by-side load comparison: portcullis against HAProxy from Debian's packages.
#
# Both terminate mTLS (the same dev server certificate, client CA and CRL, client certificate
# required) with keep-alive on both sides and pass through to the same upstream (one
# `portcullis mock-bank`). The same load generator (`portcullis loadgen`, closed loop,
# HTTP/1.1 keep-alive, TPP One's client certificate) drives each in turn, alternating
# haproxy, portcullis, haproxy, portcullis, ... in one run, each run preceded by a warm-up.
# It prints requests/s, p50 and p99 per run, the medians per proxy and the ratios
# portcullis / haproxy, and writes everything as JSON to target/compare_haproxy.json.
#
# Knobs (environment):
#   CONNECTIONS=32   concurrent keep-alive connections of the load generator
#   DURATION=10s     length of each measured run
#   ROUNDS=3         rounds; each round measures every proxy once
#   WARMUP=2s        warm-up before every measured run (discarded)
#   AUDIT=0          1 adds a third contender: portcullis with its audit log written to a file
#   KEEP_WORKDIR=0   1 keeps the temporary directory (configs, certs, logs, raw results)
#
# Everything listens on 127.0.0.1 only, every load run stops by itself, and every process this
# script starts is stopped on exit (including Ctrl-C).
#
# Example: DURATION=3s ROUNDS=1 benches/compare_haproxy.sh
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
AUDIT=${AUDIT:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
ROUTE=/open-banking/v3.1/aisp/accounts

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/release/portcullis
RESULT_JSON=$TARGET_DIR/compare_haproxy.json

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"
command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"

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

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        # Kept when asked, or after a failure (its logs say why); not after Ctrl-C or SIGTERM.
        if [[ $KEEP_WORKDIR == 1 || ($rc -ne 0 && $rc -ne 130 && $rc -ne 143) ]]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap 'printf "error: line %s: %s exited %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# Runs the load generator against a port; the JSON report goes to OUT. It runs in the
# background so that Ctrl-C interrupts the wait at once.
loadgen() {
    local port=$1 conns=$2 duration=$3 out=$4
    "$BIN" loadgen --addr "127.0.0.1:$port" --server-name localhost --path "$ROUTE" \
        --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
        --connections "$conns" --duration "$duration" --json >"$out" 2>"$out.stderr" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid" || { cat "$out.stderr" >&2; die "loadgen against 127.0.0.1:$port failed"; }
    forget_pid "$pid"
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() {
    local f
    read -r -a f <"/proc/$1/stat"
    echo $((f[13] + f[14]))
}

# --- prerequisites ---------------------------------------------------------------------------

# /usr/sbin is not on every user's PATH.
find_haproxy() { command -v haproxy 2>/dev/null || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; }; }
if ! HAPROXY=$(find_haproxy); then
    log "installing haproxy from Debian's packages"
    AS_ROOT=(env DEBIAN_FRONTEND=noninteractive)
    [[ $(id -u) -eq 0 ]] || AS_ROOT=(sudo DEBIAN_FRONTEND=noninteractive)
    "${AS_ROOT[@]}" apt-get install -y haproxy ||
        { "${AS_ROOT[@]}" apt-get update && "${AS_ROOT[@]}" apt-get install -y haproxy; }
    HAPROXY=$(find_haproxy) || die "haproxy is still not installed"
fi

log "building portcullis (cargo build --release)"
(cd "$ROOT" && cargo build --release)
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-vs-haproxy.XXXXXX")
CERTS=$WORK/certs
RAW=$WORK/results
mkdir -p "$RAW" "$WORK/policies" "$WORK/audit"
"$BIN" dev-certs --out "$CERTS" >/dev/null

# The JSON arithmetic and the table, in python3 (no jq needed).
cat >"$WORK/report.py" <<'EOF'
import json, os, statistics, sys

def line(path):
    r = json.load(open(path))
    bad = {k: v for k, v in r["statuses"].items() if k != "200"}
    extra = f", statuses {r['statuses']}, {r['errors']} errors" if bad or r["errors"] else ""
    print(f"{r['rps']:.0f} req/s, p50 {r['p50_us']} us, p99 {r['p99_us']} us{extra}")

def final(raw, out):
    e = os.environ
    contenders = e["BENCH_CONTENDERS"].split()
    rounds = int(e["BENCH_ROUNDS"])
    cores = int(e["BENCH_CORES"])
    setup = {
        "machine": {"cores": cores, "cpu": e["BENCH_CPU"], "kernel": e["BENCH_KERNEL"]},
        "connections": int(e["BENCH_CONNECTIONS"]),
        "duration": e["BENCH_DURATION"],
        "warmup": e["BENCH_WARMUP"],
        "rounds": rounds,
        "order": "alternating: " + ", ".join(contenders) + " in every round",
        "route": "GET " + e["BENCH_ROUTE"],
        "load_generator": "portcullis loadgen: closed loop, HTTP/1.1 keep-alive, rustls client, "
                          "TPP One's client certificate; the same for every proxy",
        "upstream": f"one portcullis mock-bank on {e['BENCH_BANK']} (plain HTTP/1.1), shared",
        "shared_cores": "load generator, proxy and upstream run on the same cores",
        "haproxy": {
            "version": e["BENCH_HA_VERSION"],
            "openssl": e["BENCH_HA_OPENSSL"],
            "nbthread": cores,
            "negotiated": e["BENCH_TLS_HA"],
            "request_log": "none",
            "keep_alive": "option http-keep-alive, http-reuse always",
        },
        "portcullis": {
            "revision": e["BENCH_PC_REV"],
            "threads": f"tokio default: one worker per core ({cores})",
            "tls": "rustls with aws-lc-rs",
            "negotiated": e["BENCH_TLS_PC"],
            "audit": "sink none for 'portcullis', like HAProxy without a request log"
                     + ("; sink file for 'portcullis-audit'" if "portcullis-audit" in contenders else ""),
        },
    }

    runs = []
    for r in range(1, rounds + 1):
        for c in contenders:
            with open(os.path.join(raw, f"run-{r}-{c}.json")) as f:
                rep = json.load(f)
            with open(os.path.join(raw, f"run-{r}-{c}.cpu")) as f:
                cpu_s = int(f.read()) / int(e["BENCH_CLK_TCK"])
            rep["proxy_cpu_seconds"] = round(cpu_s, 2)
            rep["proxy_cpu_us_per_request"] = (
                round(cpu_s * 1e6 / rep["requests"], 1) if rep["requests"] else None)
            runs.append({"round": r, "proxy": c, **rep})

    problems = []
    for x in runs:
        other = {k: v for k, v in x["statuses"].items() if k != "200"}
        if x["errors"] or other or not x["requests"]:
            problems.append(f"round {x['round']} {x['proxy']}: {x['requests']} requests, "
                            f"statuses {x['statuses']}, {x['errors']} errors")

    med = {}
    for c in contenders:
        mine = [x for x in runs if x["proxy"] == c]
        med[c] = {}
        for k in ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_request"):
            vals = [x[k] for x in mine if x[k] is not None]
            med[c][k] = statistics.median(vals) if vals else None

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    ratios = {
        c: {
            "throughput": ratio(med[c]["rps"], med["haproxy"]["rps"]),
            "p50": ratio(med[c]["p50_us"], med["haproxy"]["p50_us"]),
            "p99": ratio(med[c]["p99_us"], med["haproxy"]["p99_us"]),
            "cpu_per_request": ratio(med[c]["proxy_cpu_us_per_request"],
                                     med["haproxy"]["proxy_cpu_us_per_request"]),
        }
        for c in contenders if c != "haproxy"
    }

    result = {"setup": setup, "runs": runs, "median": med, "ratio_vs_haproxy": ratios,
              "valid": not problems, "problems": problems}
    if "portcullis-audit" in contenders:
        result["audit_log_bytes"] = int(e["BENCH_AUDIT_BYTES"])
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    s, h, p = setup, setup["haproxy"], setup["portcullis"]
    print()
    print("portcullis vs HAProxy: mTLS termination, keep-alive, pass-through to the same upstream")
    print(f"  machine     {cores} cores ({s['machine']['cpu']}), Linux {s['machine']['kernel']};")
    print(f"              load generator, proxy and upstream all share these cores, nothing pinned")
    print(f"  load        portcullis loadgen for both: closed loop, HTTP/1.1 keep-alive, rustls client,")
    print(f"              {s['connections']} connections, {s['duration']} per run after a {s['warmup']} warm-up,")
    print(f"              {rounds} round(s), {s['order']}")
    print(f"  route       {s['route']} -> shared mock bank (~600-byte JSON)")
    print(f"  haproxy     {h['version']}, {h['openssl']}")
    print(f"              nbthread {h['nbthread']}, no request log, {h['keep_alive']}")
    print(f"              negotiated with the load generator: {h['negotiated']}")
    print(f"  portcullis  {p['revision']}, {p['threads']}, {p['tls']}")
    print(f"              negotiated with the load generator: {p['negotiated']}")
    print(f"  work        both: client certificate required + CRL, one route allowed, client-cert")
    print(f"              (RFC 9440), x-forwarded-*, x-fapi-interaction-id set on the way up")
    print(f"  audit       {p['audit']}")
    print()
    w = max(len(c) for c in contenders)
    print(f"  {'round':<6}  {'proxy':<{w}}  {'req/s':>9}  {'p50 us':>8}  {'p99 us':>8}  "
          f"{'p99.9 us':>8}  {'errors':>6}  {'proxy CPU us/req':>16}")
    for x in runs:
        print(f"  {x['round']:<6}  {x['proxy']:<{w}}  {x['rps']:>9.0f}  {x['p50_us']:>8}  "
              f"{x['p99_us']:>8}  {x['p999_us']:>8}  {x['errors']:>6}  "
              f"{str(x['proxy_cpu_us_per_request']):>16}")
    print()
    for c in contenders:
        m = med[c]
        print(f"  {'median':<6}  {c:<{w}}  {m['rps']:>9.0f}  {m['p50_us']:>8.0f}  {m['p99_us']:>8.0f}  "
              f"{'':>8}  {'':>6}  {str(m['proxy_cpu_us_per_request']):>16}")
    print()
    for c, r in ratios.items():
        print(f"  {c} / haproxy:  throughput {r['throughput']}   p50 {r['p50']}   "
              f"p99 {r['p99']}   CPU per request {r['cpu_per_request']}")
    print("  (throughput >= 1.0 and p99 <= 1.0 mean portcullis is no worse)")
    print("  (proxy CPU us/req: the proxy process's user+system CPU time during the measured run /")
    print("   requests; the load generator and the upstream share the same cores)")
    if "portcullis-audit" in contenders:
        print(f"  audit log written by portcullis-audit: {result['audit_log_bytes']} bytes")
    if problems:
        print()
        print("  WARNING: runs with errors or non-200 answers; these numbers are not comparable:")
        for x in problems:
            print(f"    {x}")
    print()
    print(f"  results: {out}")

if __name__ == "__main__":
    {"line": line, "final": final}[sys.argv[1]](*sys.argv[2:])
EOF

# Free loopback ports, all distinct: upstream, haproxy, haproxy probe, portcullis (+ admin),
# portcullis with audit (+ admin).
read -r P_BANK P_HA P_HA_PROBE P_PC P_PC_ADMIN P_PCA P_PCA_ADMIN < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(7):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# --- the shared upstream ---------------------------------------------------------------------

start_bg "$WORK/mock-bank.log" "$BIN" mock-bank --listen "127.0.0.1:$P_BANK"
PID_BANK=$STARTED_PID
wait_200 "$PID_BANK" "$WORK/mock-bank.log" "http://127.0.0.1:$P_BANK$ROUTE"

# --- portcullis ------------------------------------------------------------------------------

cat >"$WORK/policies/bench.yaml" <<EOF
# The one route the comparison drives.
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
EOF

# $1 port, $2 admin port, $3 audit block
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
    header_read_timeout: 10s
    request_timeout: 30s
    idle_timeout: 60s
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
policies: [policies/bench.yaml]
shutdown:
  drain_timeout: 1s
EOF
}
portcullis_config "$P_PC" "$P_PC_ADMIN" "audit:
  sink: none" >"$WORK/portcullis.yaml"
portcullis_config "$P_PCA" "$P_PCA_ADMIN" "audit:
  sink: file
  path: audit/audit.log" >"$WORK/portcullis-audit.yaml"
"$BIN" check --config "$WORK/portcullis.yaml" >/dev/null
"$BIN" check --config "$WORK/portcullis-audit.yaml" >/dev/null

CURL_MTLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key")

start_bg "$WORK/portcullis.log" "$BIN" run --config "$WORK/portcullis.yaml"
PID_PC=$STARTED_PID
wait_200 "$PID_PC" "$WORK/portcullis.log" "http://127.0.0.1:$P_PC_ADMIN/readyz"

# The audited instance is always started once: a short probe through it records the TLS
# version and cipher the load generator negotiates. Without AUDIT=1 it is stopped right after.
start_bg "$WORK/portcullis-audit.log" "$BIN" run --config "$WORK/portcullis-audit.yaml"
PID_PCA=$STARTED_PID
wait_200 "$PID_PCA" "$WORK/portcullis-audit.log" "http://127.0.0.1:$P_PCA_ADMIN/readyz"

# --- haproxy ---------------------------------------------------------------------------------

NPROC=$(nproc)
cat "$CERTS/server.pem" "$CERTS/server.key" >"$CERTS/haproxy-server.pem"
BIND_TLS="ssl crt $CERTS/haproxy-server.pem ca-file $CERTS/ca.pem crl-file $CERTS/ca.crl verify required alpn h2,http/1.1"
cat >"$WORK/haproxy.cfg" <<EOF
# Generated by benches/compare_haproxy.sh. Mirrors the portcullis config above as far as
# HAProxy can: mTLS required against the same CA and CRL, one route forwarded, the same
# forwarding headers set, the same timeouts, keep-alive on both sides, no request log.
global
    nbthread $NPROC
    maxconn 4096
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
    timeout client 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout server 10s

frontend mtls
    bind 127.0.0.1:$P_HA $BIND_TLS
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

# Same TLS settings, but logs the negotiated TLS version and cipher; used only for the probe.
frontend probe
    bind 127.0.0.1:$P_HA_PROBE $BIND_TLS
    log global
    log-format "probe tls=%sslv cipher=%sslc alpn=%[ssl_fc_alpn] status=%ST"
    default_backend bank

backend bank
    server bank 127.0.0.1:$P_BANK
EOF
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejects $WORK/haproxy.cfg"
start_bg "$WORK/haproxy.log" "$HAPROXY" -db -f "$WORK/haproxy.cfg"
PID_HA=$STARTED_PID
wait_200 "$PID_HA" "$WORK/haproxy.log" "${CURL_MTLS[@]}" "https://localhost:$P_HA$ROUTE" \
    --resolve "localhost:$P_HA:127.0.0.1"

# --- checks before measuring -----------------------------------------------------------------

check_status() {
    local want=$1 what=$2
    shift 2
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null || true)
    [[ $got == "$want" ]] || die "$what: expected $want, got '${got:-no answer}'"
}
for name_port in "haproxy:$P_HA" "portcullis:$P_PC"; do
    name=${name_port%%:*} port=${name_port##*:}
    url="https://localhost:$port$ROUTE"
    res=(--resolve "localhost:$port:127.0.0.1")
    check_status 200 "$name, TPP One" "${res[@]}" "${CURL_MTLS[@]}" "$url"
    # Both must really be doing mTLS with the CRL: no certificate and a revoked one fail.
    check_status 000 "$name, no client certificate" "${res[@]}" --cacert "$CERTS/ca.pem" "$url"
    check_status 000 "$name, revoked certificate" "${res[@]}" --cacert "$CERTS/ca.pem" \
        --cert "$CERTS/revoked.pem" --key "$CERTS/revoked.key" "$url"
    log "$name on 127.0.0.1:$port: 200 for TPP One; no certificate and a revoked one refused"
done

# What the load generator negotiates with each (one connection, one second).
loadgen "$P_HA_PROBE" 1 1s "$RAW/probe-haproxy.json"
loadgen "$P_PCA" 1 1s "$RAW/probe-portcullis.json"
sleep 0.5 # the haproxy log line and the audit writer's batch
TLS_HA=$(grep -m1 '^probe ' "$WORK/haproxy.log" | sed 's/^probe //; s/ status=.*//' || true)
TLS_PC=$(python3 - "$WORK/audit/audit.log" <<'EOF'
import json, sys
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("kind") == "request":
            print(f"tls={r['tls_version']} cipher={r['cipher']} http={r['http_version']}")
            break
except OSError:
    pass
EOF
)
log "haproxy negotiated:    ${TLS_HA:-unknown}"
log "portcullis negotiated: ${TLS_PC:-unknown}"

CONTENDERS=(haproxy portcullis)
declare -A PORT=([haproxy]=$P_HA [portcullis]=$P_PC [portcullis-audit]=$P_PCA)
declare -A PID_OF=([haproxy]=$PID_HA [portcullis]=$PID_PC [portcullis-audit]=$PID_PCA)
if [[ $AUDIT == 1 ]]; then
    CONTENDERS+=(portcullis-audit)
else
    stop_pid "$PID_PCA"
    forget_pid "$PID_PCA"
fi

# --- measure ---------------------------------------------------------------------------------

# (No `| head`: with pipefail, SIGPIPE in the writer would end the script.)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo)
CPU_MODEL=${CPU_MODEL%%$'\n'*}
HA_VV=$("$HAPROXY" -vv)
HA_VERSION=$(sed -n '1s/ - https:.*//p' <<<"$HA_VV")
HA_OPENSSL=$(sed -n 's/^Running on OpenSSL version : //p' <<<"$HA_VV")
PC_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $PC_REV != unknown ]] && ! (cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null); then
    PC_REV="$PC_REV+dirty"
fi

log "measuring: $ROUNDS round(s) of ${CONTENDERS[*]}, $CONNECTIONS connections, $DURATION each after a $WARMUP warm-up"
for ((round = 1; round <= ROUNDS; round++)); do
    for c in "${CONTENDERS[@]}"; do
        loadgen "${PORT[$c]}" "$CONNECTIONS" "$WARMUP" "$RAW/warmup-$round-$c.json"
        before=$(cpu_ticks "${PID_OF[$c]}")
        loadgen "${PORT[$c]}" "$CONNECTIONS" "$DURATION" "$RAW/run-$round-$c.json"
        echo $(($(cpu_ticks "${PID_OF[$c]}") - before)) >"$RAW/run-$round-$c.cpu"
        log "round $round $c: $(python3 "$WORK/report.py" line "$RAW/run-$round-$c.json")"
    done
done
AUDIT_BYTES=0
[[ $AUDIT == 1 && -f $WORK/audit/audit.log ]] && AUDIT_BYTES=$(stat -c %s "$WORK/audit/audit.log")

# --- report ----------------------------------------------------------------------------------

mkdir -p "$TARGET_DIR"
export BENCH_CONTENDERS="${CONTENDERS[*]}" BENCH_ROUNDS=$ROUNDS BENCH_CORES=$NPROC
KERNEL=$(uname -r)
CLK_TCK=$(getconf CLK_TCK)
export BENCH_CPU=$CPU_MODEL BENCH_KERNEL=$KERNEL BENCH_CONNECTIONS=$CONNECTIONS
export BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP BENCH_ROUTE=$ROUTE BENCH_BANK=127.0.0.1:$P_BANK
export BENCH_HA_VERSION=$HA_VERSION BENCH_HA_OPENSSL=$HA_OPENSSL BENCH_TLS_HA=${TLS_HA:-unknown}
export BENCH_CLK_TCK=$CLK_TCK
export BENCH_PC_REV=$PC_REV BENCH_TLS_PC=${TLS_PC:-unknown} BENCH_AUDIT_BYTES=$AUDIT_BYTES
python3 "$WORK/report.py" final "$RAW" "$RESULT_JSON"
