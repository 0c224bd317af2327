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
# SCENARIO=token measures a second pair in front of the same upstream: every request also carries
# a certificate-bound access token (ES256 JWT from `portcullis dev-token`, RFC 9068 + RFC 8705
# `cnf.x5t#S256` bound to TPP One's certificate). HAProxy verifies it on every request with
# jwt_verify plus ACLs on the header and claims (alg, typ, kid, iss, aud, exp, nbf, iat, scope,
# cnf.x5t#S256 against the connection's certificate); portcullis runs the route with
# `auth: {profile: fapi2}` (signature verified once per token and cached; exp/nbf and the
# certificate binding checked on every request). Before measuring, both must answer 200 to the
# good token and 401 to no token, a token bound to TPP Two, an unbound token, a token for another
# audience and a token with a broken signature; with python3's `cryptography` package also to
# crafted tokens (expired beyond the 30 s skew, nbf/iat ahead, other issuer, typ, kid, alg).
# Results: target/compare_haproxy_token.json.
# What each side checks, and where they differ, is printed with the table and kept in the JSON.
#
# Knobs (environment):
#   SCENARIO=passthrough   passthrough (mTLS only), token (mTLS + access token) or both
#   CONNECTIONS=32   concurrent keep-alive connections of the load generator
#   DURATION=10s     length of each measured run
#   ROUNDS=3         rounds; each round measures every proxy once
#   WARMUP=2s        warm-up before every measured run (discarded)
#   AUDIT=0          1 adds a third contender: portcullis with its audit log written to a file
#   KEEP_WORKDIR=0   1 keeps the temporary directory (configs, certs, logs, raw results)
#   STATE=memory     redis adds two contenders to the passthrough scenario, both with a client
#                    rate-limit class on the route (a quota it never reaches): 'portcullis-limited'
#                    keeps the limiter in memory, 'portcullis-redis' has `state.backend: redis`
#                    (fleet quota on a private redis-server on a free loopback port, no
#                    persistence; installed from Debian's packages when missing); the ratio
#                    redis / memory is printed and kept in the JSON (ratio_redis_vs_memory)
#   STATE_LEASE=10   with STATE=redis: state.rate_limit_lease.max_tokens (1 = a Redis round
#                    trip per request)
# (AUDIT=1 and STATE=redis add their contenders to the passthrough scenario only.)
#
# Everything listens on 127.0.0.1 only, every load run stops by itself, and every process this
# script starts is stopped on exit (including Ctrl-C).
#
# Example: DURATION=3s ROUNDS=1 benches/compare_haproxy.sh
#          SCENARIO=both DURATION=3s ROUNDS=1 benches/compare_haproxy.sh
#          STATE=redis DURATION=8s ROUNDS=3 benches/compare_haproxy.sh
set -euo pipefail

SCENARIO=${SCENARIO:-passthrough}

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
AUDIT=${AUDIT:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
STATE=${STATE:-memory}
STATE_LEASE=${STATE_LEASE:-10}
ROUTE=/open-banking/v3.1/aisp/accounts

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/release/portcullis
RESULT_JSON=$TARGET_DIR/compare_haproxy.json
RESULT_JSON_TOKEN=$TARGET_DIR/compare_haproxy_token.json
# The access tokens' issuer and audience, and the scope HAProxy requires.
AS_ISSUER=https://as.bank.example
AS_AUDIENCE=https://api.bank.example
TOKEN_SCOPE=accounts

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case $SCENARIO in
    passthrough) SCENARIOS=(passthrough) ;;
    token) SCENARIOS=(token) ;;
    both) SCENARIOS=(passthrough token) ;;
    *) die "SCENARIO must be passthrough, token or both (got '$SCENARIO')" ;;
esac
want() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }
[[ $STATE == memory || $STATE == redis ]] || die "STATE must be memory or redis (got '$STATE')"
[[ $STATE_LEASE =~ ^[1-9][0-9]*$ ]] || die "STATE_LEASE must be a positive integer (got '$STATE_LEASE')"
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

# Runs the load generator against a port; the JSON report goes to OUT; further arguments go to
# the load generator (e.g. --header). It runs in the background so that Ctrl-C interrupts the
# wait at once.
loadgen() {
    local port=$1 conns=$2 duration=$3 out=$4
    shift 4
    "$BIN" loadgen --addr "127.0.0.1:$port" --server-name localhost --path "$ROUTE" \
        --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
        --connections "$conns" --duration "$duration" --json "$@" >"$out" 2>"$out.stderr" &
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

if [[ $STATE == redis ]] && ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server from Debian's packages"
    AS_ROOT=(env DEBIAN_FRONTEND=noninteractive)
    [[ $(id -u) -eq 0 ]] || AS_ROOT=(sudo DEBIAN_FRONTEND=noninteractive)
    "${AS_ROOT[@]}" apt-get install -y redis-server ||
        { "${AS_ROOT[@]}" apt-get update && "${AS_ROOT[@]}" apt-get install -y redis-server; }
    command -v redis-server >/dev/null 2>&1 || die "redis-server is still not installed"
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
import json, os, statistics, sys, textwrap

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
    scenario = e["BENCH_SCENARIO"]
    setup = {
        "scenario": scenario,
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

    token = target = None
    if scenario == "token":
        with open(e["BENCH_TOKEN_INFO"]) as f:
            token = json.load(f)
        setup["token"] = token
        setup["portcullis"]["audit"] = "sink none, like HAProxy without a request log"
        tp = ratios["portcullis"]["throughput"]
        target = {"throughput_ratio": 2.0, "met": tp is not None and tp >= 2.0}

    result = {"setup": setup, "runs": runs, "median": med, "ratio_vs_haproxy": ratios,
              "valid": not problems, "problems": problems}
    if target:
        result["target"] = target
    if "portcullis-audit" in contenders:
        result["audit_log_bytes"] = int(e["BENCH_AUDIT_BYTES"])
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    s, h, p = setup, setup["haproxy"], setup["portcullis"]
    print()
    if token:
        print("token scenario -- portcullis vs HAProxy: mTLS + certificate-bound access token on every")
        print("request, keep-alive, pass-through to the same upstream")
    else:
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
    if token:
        def para(head, text):
            print(textwrap.fill(text, 100, initial_indent=f"  {head:<12}",
                                subsequent_indent=" " * 14))
        def items(xs):
            for x in xs:
                print(textwrap.fill(x, 100, initial_indent=" " * 14 + "- ",
                                    subsequent_indent=" " * 16))
        para("token", token["presented"])
        para("checks", "haproxy, on EVERY request (no verified-token cache):")
        items(token["haproxy_checks"])
        para("", f"portcullis, {token['portcullis_route']}:")
        items(token["portcullis_checks"])
        para("NOT EQUAL", "where the two differ:")
        items(token["asymmetries"])
        para("verified", "before measuring, on TPP One's connection: answer haproxy / "
                         "portcullis (* = recorded, not required):")
        for what, r in token["checks_before_measuring"].items():
            def cell(x):
                return f"{x['got']}{'' if x['required'] is not None else '*'}"
            print(f"                {cell(r['haproxy']):>4} / {cell(r['portcullis']):<4}  {what}")
        tc = token["portcullis_token_cache"]
        para("cache", f"portcullis over the token scenario's warm-ups and runs: "
                      f"{tc['signature_verifications']} signature verification(s), "
                      f"{tc['cache_hits']} cache hits ({tc['note']})")
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
    if token:
        print(f"  token scenario target (issue): portcullis throughput >= "
              f"{target['throughput_ratio']} x HAProxy's: {'met' if target['met'] else 'NOT met'} in this run")
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
# portcullis with audit (+ admin), haproxy token frontend, portcullis with tokens (+ admin),
# portcullis with a rate limit in memory (+ admin) and on Redis (+ admin), redis-server.
read -r P_BANK P_HA P_HA_PROBE P_PC P_PC_ADMIN P_PCA P_PCA_ADMIN P_HAT P_PCT P_PCT_ADMIN \
    P_PCL P_PCL_ADMIN P_PCR P_PCR_ADMIN P_REDIS < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(15):
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

# --- access tokens (token scenario) ----------------------------------------------------------

if want token; then
    TOK=$WORK/tokens
    "$BIN" dev-token keygen --out "$TOK" >/dev/null
    # $1 audience, then more `dev-token access` arguments. 24 h: valid for the whole run.
    mint() {
        local aud=$1
        shift
        "$BIN" dev-token access --key "$TOK/as.key" --kid as-1 --issuer "$AS_ISSUER" \
            --audience "$aud" --ttl 24h "$@"
    }
    # The one the load generator sends: bound to TPP One, whose certificate it presents.
    TOKEN_GOOD=$(mint "$AS_AUDIENCE" --scope "accounts payments" --cert "$CERTS/tpp1.pem")
    # Tokens that must be refused on TPP One's connection.
    TOKEN_TPP2=$(mint "$AS_AUDIENCE" --scope "accounts payments" --cert "$CERTS/tpp2.pem")
    TOKEN_UNBOUND=$(mint "$AS_AUDIENCE" --scope "accounts payments")
    TOKEN_OTHER_AUD=$(mint https://other.bank.example --scope "accounts payments" --cert "$CERTS/tpp1.pem")
    # Without the scope HAProxy requires (portcullis does not check scopes yet: issue #5).
    TOKEN_NO_SCOPE=$(mint "$AS_AUDIENCE" --scope "payments" --cert "$CERTS/tpp1.pem")
    # The good token with one signature character changed (well inside: no padding bits).
    sig=${TOKEN_GOOD##*.}
    c=${sig:20:1}
    if [[ $c == A ]]; then c=B; else c=A; fi
    TOKEN_BAD_SIG=${TOKEN_GOOD%.*}.${sig:0:20}$c${sig:21}
    # HAProxy's jwt_verify takes a PEM public key: build the P-256 SubjectPublicKeyInfo from the
    # JWK's x and y (a fixed DER prefix, then 04 || x || y).
    python3 - "$TOK/as-jwks.json" "$TOK/as-pub.pem" <<'EOF'
import base64, json, sys
keys = [k for k in json.load(open(sys.argv[1]))["keys"] if k.get("kid") == "as-1"]
assert len(keys) == 1, "no single key as-1 in the JWKS"
k = keys[0]
assert (k["kty"], k["crv"]) == ("EC", "P-256"), k
b = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
x, y = b(k["x"]), b(k["y"])
assert len(x) == len(y) == 32
der = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + x + y
b64 = base64.b64encode(der).decode()
with open(sys.argv[2], "w") as f:
    f.write("-----BEGIN PUBLIC KEY-----\n")
    f.write("".join(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64)))
    f.write("-----END PUBLIC KEY-----\n")
EOF
    if command -v openssl >/dev/null; then
        # Cross-check: the PEM is the public half of the AS signing key.
        [[ $(openssl pkey -in "$TOK/as.key" -pubout) == "$(cat "$TOK/as-pub.pem")" ]] ||
            die "$TOK/as-pub.pem is not the public key of $TOK/as.key"
    fi

    # The checks before measuring, all on TPP One's connection: the answer each proxy must give
    # (* = recorded only: a documented difference between the two), what, the token.
    {
        printf '200\t200\tgood token (bound to TPP One)\t%s\n' "$TOKEN_GOOD"
        printf '401\t401\tno token\t\n'
        printf '401\t401\ttoken bound to TPP Two\t%s\n' "$TOKEN_TPP2"
        printf '401\t401\tunbound token (no cnf)\t%s\n' "$TOKEN_UNBOUND"
        printf '401\t401\ttoken for another audience\t%s\n' "$TOKEN_OTHER_AUD"
        printf '401\t401\ttoken with a broken signature\t%s\n' "$TOKEN_BAD_SIG"
        # portcullis does not check scopes yet (issue #5).
        printf '401\t*\ttoken without the %s scope\t%s\n' "'$TOKEN_SCOPE'" "$TOKEN_NO_SCOPE"
    } >"$TOK/cases.tsv"
    # Claims `dev-token` cannot produce (expired, not yet valid, other issuer, typ, kid, alg),
    # signed with the same AS key, when python3 has the `cryptography` package.
    if python3 -c 'import cryptography' 2>/dev/null; then
        python3 - "$TOK/as.key" "$CERTS/tpp1.pem" "$AS_ISSUER" "$AS_AUDIENCE" >>"$TOK/cases.tsv" <<'EOF'
import base64, hashlib, json, sys, time
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

key_path, cert_path, iss, aud = sys.argv[1:5]
key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
der = x509.load_pem_x509_certificate(open(cert_path, "rb").read()).public_bytes(
    serialization.Encoding.DER)
now = int(time.time())

def token(header=None, **claims):
    h = {"alg": "ES256", "typ": "at+jwt", "kid": "as-1", **(header or {})}
    c = {"iss": iss, "aud": aud, "exp": now + 86400, "nbf": now, "iat": now,
         "scope": "accounts payments", "client_id": "tpp-one", "sub": "psu-1",
         "jti": f"crafted-{now}", "cnf": {"x5t#S256": b64(hashlib.sha256(der).digest())},
         **claims}
    c = {k: v for k, v in c.items() if v is not None}
    si = (b64(json.dumps(h).encode()) + "." + b64(json.dumps(c).encode())).encode()
    r, s = utils.decode_dss_signature(key.sign(si, ec.ECDSA(hashes.SHA256())))
    return si.decode() + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

for want_ha, want_pc, what, t in [
    ("200", "200", "typ application/at+jwt", token({"typ": "application/at+jwt"})),
    ("401", "401", "expired 31 s ago (beyond the 30 s skew)", token(exp=now - 31)),
    ("200", "200", "expired 10 s ago (within the 30 s skew)", token(exp=now - 10)),
    ("401", "401", "no exp", token(exp=None)),
    ("401", "401", "nbf 60 s ahead", token(nbf=now + 60)),
    ("401", "401", "iat 60 s ahead", token(iat=now + 60)),
    ("401", "401", "another issuer", token(iss="https://other-as.bank.example")),
    ("401", "401", "typ JWT", token({"typ": "JWT"})),
    ("401", "401", "kid as-2", token({"kid": "as-2"})),
    ("401", "401", "alg ES384 in the header (ES256 signature)", token({"alg": "ES384"})),
    ("*", "*", "aud an array holding the audience", token(aud=[aud, "https://x.example"])),
    ("*", "*", "a jku header", token({"jku": "https://evil.example/jwks"})),
    ("*", "*", "nbf an object", token(nbf={"a": 1})),
]:
    print(f"{want_ha}\t{want_pc}\t{what}\t{t}")
EOF
    else
        log "python3 has no 'cryptography': skipping the crafted-claim checks (expired, nbf, iss, typ, kid, alg)"
    fi
fi

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
# The token scenario: the same route, requiring a FAPI 2.0 sender-constrained access token.
cat >"$WORK/policies/bench-token.yaml" <<EOF
# The one route the token scenario drives: a certificate-bound (or DPoP-bound) token required.
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    auth: {profile: fapi2}
EOF

# STATE=redis: the same route with a client rate-limit class (a quota it never reaches).
cat >"$WORK/policies/bench-limited.yaml" <<EOF
# The one route the STATE=redis contenders drive: one rate-limit check per request.
group: bench
upstream: bank
routes:
  - id: aisp.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    rate_limit: bench
EOF

# $1 port, $2 admin port, $3 audit (and issuers) block, $4 policy file (default bench.yaml)
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
policies: [${4:-policies/bench.yaml}]
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
if want token; then
    # ES256 only, like HAProxy's jwt_verify(ES256, ...); skew and everything else as defaulted.
    portcullis_config "$P_PCT" "$P_PCT_ADMIN" "audit:
  sink: none
issuers:
  as:
    issuer: $AS_ISSUER
    audience: $AS_AUDIENCE
    algorithms: [ES256]
    jwks: {file: tokens/as-jwks.json}" policies/bench-token.yaml >"$WORK/portcullis-token.yaml"
    "$BIN" check --config "$WORK/portcullis-token.yaml" >/dev/null
fi

if [[ $STATE == redis ]] && want passthrough; then
    LIMITS="audit:
  sink: none
rate_limits:
  classes:
    bench: {rate: 1000000000, per: 1s, burst: 1000000}"
    portcullis_config "$P_PCL" "$P_PCL_ADMIN" "$LIMITS" policies/bench-limited.yaml \
        >"$WORK/portcullis-limited.yaml"
    portcullis_config "$P_PCR" "$P_PCR_ADMIN" "$LIMITS
state:
  backend: redis
  redis:
    url: redis://127.0.0.1:$P_REDIS/0
  rate_limit_lease:
    max_tokens: $STATE_LEASE" policies/bench-limited.yaml >"$WORK/portcullis-redis.yaml"
    "$BIN" check --config "$WORK/portcullis-limited.yaml" >/dev/null
    "$BIN" check --config "$WORK/portcullis-redis.yaml" >/dev/null
fi

CURL_MTLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key")

start_bg "$WORK/portcullis.log" "$BIN" run --config "$WORK/portcullis.yaml"
PID_PC=$STARTED_PID
wait_200 "$PID_PC" "$WORK/portcullis.log" "http://127.0.0.1:$P_PC_ADMIN/readyz"

# The audited instance is always started once: a short probe through it records the TLS
# version and cipher the load generator negotiates. Without AUDIT=1 it is stopped right after.
start_bg "$WORK/portcullis-audit.log" "$BIN" run --config "$WORK/portcullis-audit.yaml"
PID_PCA=$STARTED_PID
wait_200 "$PID_PCA" "$WORK/portcullis-audit.log" "http://127.0.0.1:$P_PCA_ADMIN/readyz"

if [[ $STATE == redis ]] && want passthrough; then
    mkdir -p "$WORK/redis"
    start_bg "$WORK/redis.log" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$WORK/redis"
    PID_REDIS=$STARTED_PID
    start_bg "$WORK/portcullis-limited.log" "$BIN" run --config "$WORK/portcullis-limited.yaml"
    PID_PCL=$STARTED_PID
    wait_200 "$PID_PCL" "$WORK/portcullis-limited.log" "http://127.0.0.1:$P_PCL_ADMIN/readyz"
    start_bg "$WORK/portcullis-redis.log" "$BIN" run --config "$WORK/portcullis-redis.yaml"
    PID_PCR=$STARTED_PID
    wait_200 "$PID_PCR" "$WORK/portcullis-redis.log" "http://127.0.0.1:$P_PCR_ADMIN/readyz"
    kill -0 "$PID_REDIS" 2>/dev/null || { cat "$WORK/redis.log" >&2; die "redis-server exited"; }
fi

if want token; then
    start_bg "$WORK/portcullis-token.log" "$BIN" run --config "$WORK/portcullis-token.yaml"
    PID_PCT=$STARTED_PID
    wait_200 "$PID_PCT" "$WORK/portcullis-token.log" "http://127.0.0.1:$P_PCT_ADMIN/readyz"
fi

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
if want token; then
    # The token frontend: benches/haproxy-token.cfg.tmpl with its placeholders filled in.
    python3 - "$ROOT/benches/haproxy-token.cfg.tmpl" >>"$WORK/haproxy.cfg" \
        BIND="127.0.0.1:$P_HAT $BIND_TLS" ROUTE="$ROUTE" AS_PUB="$TOK/as-pub.pem" KID=as-1 \
        ISSUER="$AS_ISSUER" AUDIENCE="$AS_AUDIENCE" SKEW=30 SCOPE="$TOKEN_SCOPE" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    text = text.replace(f"@@{k}@@", v)
left = set(re.findall(r"@@[A-Z_]+@@", text))
if left:
    sys.exit(f"unfilled placeholders in {sys.argv[1]}: {sorted(left)}")
sys.stdout.write("\n" + text)
EOF
fi
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

# The passthrough portcullis is not needed for a token-only run (it was started for the checks).
if ! want passthrough; then
    stop_pid "$PID_PC"
    forget_pid "$PID_PC"
fi
if [[ $AUDIT == 1 ]] && want passthrough; then
    PASSTHROUGH_CONTENDERS=(haproxy portcullis portcullis-audit)
else
    PASSTHROUGH_CONTENDERS=(haproxy portcullis)
    stop_pid "$PID_PCA"
    forget_pid "$PID_PCA"
fi
if [[ $STATE == redis ]] && want passthrough; then
    PASSTHROUGH_CONTENDERS+=(portcullis-limited portcullis-redis)
fi

# --- token scenario: checks before measuring ---------------------------------------------------

# One proxy's token checks, from $TOK/cases.tsv; every answer is recorded in $TOK/checks.tsv.
token_checks() {
    local name=$1 port=$2
    local url="https://localhost:$port$ROUTE"
    local res=(--resolve "localhost:$port:127.0.0.1")
    local good=(-H "authorization: Bearer $TOKEN_GOOD")
    # The token frontends terminate mTLS like the others.
    check_status 000 "$name (token), no client certificate" "${res[@]}" --cacert "$CERTS/ca.pem" \
        "${good[@]}" "$url"
    check_status 000 "$name (token), revoked certificate" "${res[@]}" --cacert "$CERTS/ca.pem" \
        --cert "$CERTS/revoked.pem" --key "$CERTS/revoked.key" "${good[@]}" "$url"
    local want_ha want_pc what token want got hdr n=0 noted=""
    while IFS=$'\t' read -r want_ha want_pc what token; do
        if [[ $name == haproxy ]]; then want=$want_ha; else want=$want_pc; fi
        hdr=()
        [[ -n $token ]] && hdr=(-H "authorization: Bearer $token")
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${res[@]}" "${CURL_MTLS[@]}" \
            "${hdr[@]}" "$url" 2>/dev/null || true)
        got=${got:-none}
        if [[ $want == '*' ]]; then
            noted+="; $got for $what"
        elif [[ $got != "$want" ]]; then
            die "$name (token), TPP One's connection, $what: expected $want, got '$got'"
        else
            n=$((n + 1))
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$what" "$want" "$got" >>"$TOK/checks.tsv"
    done <"$TOK/cases.tsv"
    log "$name (token) on 127.0.0.1:$port: no certificate and a revoked one refused;" \
        "$n token cases answered as required (200 only for valid tokens bound to TPP One)$noted"
}
if want token; then
    : >"$TOK/checks.tsv"
    token_checks haproxy "$P_HAT"
    token_checks portcullis "$P_PCT"
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

# Measures one scenario: alternating rounds over CONTENDERS (PORT, PID_OF by contender name),
# raw results in $1; further arguments go to every load generator run.
measure() {
    local raw=$1 round c before
    shift
    mkdir -p "$raw"
    for ((round = 1; round <= ROUNDS; round++)); do
        for c in "${CONTENDERS[@]}"; do
            loadgen "${PORT[$c]}" "$CONNECTIONS" "$WARMUP" "$raw/warmup-$round-$c.json" "$@"
            before=$(cpu_ticks "${PID_OF[$c]}")
            loadgen "${PORT[$c]}" "$CONNECTIONS" "$DURATION" "$raw/run-$round-$c.json" "$@"
            echo $(($(cpu_ticks "${PID_OF[$c]}") - before)) >"$raw/run-$round-$c.cpu"
            log "$SCENARIO_NOW round $round $c: $(python3 "$WORK/report.py" line "$raw/run-$round-$c.json")"
        done
    done
}

# Redis calls the STATE=redis contender made for rate limits (leases), from its metrics.
state_calls() {
    curl -s --max-time 5 "http://127.0.0.1:$P_PCR_ADMIN/metrics" | awk '
        $1 == "portcullis_state_commands_total{feature=\"rate_limit\"}" { n = $2 }
        END { print (n == "" ? "unknown" : n) }'
}

# portcullis's verified-token cache counters: "hits verifications".
token_counters() {
    curl -s --max-time 5 "http://127.0.0.1:$P_PCT_ADMIN/metrics" | awk '
        $1 == "portcullis_token_cache_hits_total" { h = $2 }
        $1 == "portcullis_token_verifications_total" { v = $2 }
        END { print (h == "" ? "unknown" : h), (v == "" ? "unknown" : v) }'
}

declare -A PORT PID_OF
if want passthrough; then
    SCENARIO_NOW=passthrough
    CONTENDERS=("${PASSTHROUGH_CONTENDERS[@]}")
    PORT=([haproxy]=$P_HA [portcullis]=$P_PC [portcullis-audit]=$P_PCA)
    PID_OF=([haproxy]=$PID_HA [portcullis]=$PID_PC [portcullis-audit]=$PID_PCA)
    if [[ $STATE == redis ]]; then
        PORT+=([portcullis-limited]=$P_PCL [portcullis-redis]=$P_PCR)
        PID_OF+=([portcullis-limited]=$PID_PCL [portcullis-redis]=$PID_PCR)
        REDIS_CALLS0=$(state_calls)
    fi
    log "measuring passthrough: $ROUNDS round(s) of ${CONTENDERS[*]}, $CONNECTIONS connections, $DURATION each after a $WARMUP warm-up"
    measure "$RAW/passthrough"
    if [[ $STATE == redis ]]; then REDIS_CALLS1=$(state_calls); fi
fi
AUDIT_BYTES=0
[[ $AUDIT == 1 && -f $WORK/audit/audit.log ]] && AUDIT_BYTES=$(stat -c %s "$WORK/audit/audit.log")
if want token; then
    SCENARIO_NOW=token
    CONTENDERS=(haproxy portcullis)
    PORT=([haproxy]=$P_HAT [portcullis]=$P_PCT)
    PID_OF=([haproxy]=$PID_HA [portcullis]=$PID_PCT)
    log "measuring token: $ROUNDS round(s) of ${CONTENDERS[*]}, $CONNECTIONS connections, $DURATION each after a $WARMUP warm-up"
    read -r HITS0 VERIF0 < <(token_counters)
    measure "$RAW/token" --header "authorization: Bearer $TOKEN_GOOD"
    read -r HITS1 VERIF1 < <(token_counters)
fi

# --- report ----------------------------------------------------------------------------------

mkdir -p "$TARGET_DIR"
export BENCH_ROUNDS=$ROUNDS BENCH_CORES=$NPROC
KERNEL=$(uname -r)
CLK_TCK=$(getconf CLK_TCK)
export BENCH_CPU=$CPU_MODEL BENCH_KERNEL=$KERNEL BENCH_CONNECTIONS=$CONNECTIONS
export BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP BENCH_ROUTE=$ROUTE BENCH_BANK=127.0.0.1:$P_BANK
export BENCH_HA_VERSION=$HA_VERSION BENCH_HA_OPENSSL=$HA_OPENSSL BENCH_TLS_HA=${TLS_HA:-unknown}
export BENCH_CLK_TCK=$CLK_TCK
export BENCH_PC_REV=$PC_REV BENCH_TLS_PC=${TLS_PC:-unknown} BENCH_AUDIT_BYTES=$AUDIT_BYTES

if want passthrough; then
    BENCH_SCENARIO=passthrough BENCH_CONTENDERS="${PASSTHROUGH_CONTENDERS[*]}" \
        python3 "$WORK/report.py" final "$RAW/passthrough" "$RESULT_JSON"
    if [[ $STATE == redis ]]; then
        python3 - "$RESULT_JSON" "$REDIS_CALLS0" "$REDIS_CALLS1" "$STATE_LEASE" <<'EOF'
import json, sys
path, c0, c1, lease = sys.argv[1:5]
r = json.load(open(path))
m = r["median"]
def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None
mem, red = m["portcullis-limited"], m["portcullis-redis"]
reqs = sum(x["requests"] for x in r["runs"] if x["proxy"] == "portcullis-redis")
calls = (float(c1) - float(c0)) if "unknown" not in (c0, c1) else None
r["ratio_redis_vs_memory"] = {
    "throughput": ratio(red["rps"], mem["rps"]),
    "p50": ratio(red["p50_us"], mem["p50_us"]),
    "p99": ratio(red["p99_us"], mem["p99_us"]),
    "cpu_per_request": ratio(red["proxy_cpu_us_per_request"], mem["proxy_cpu_us_per_request"]),
    "lease_max_tokens": int(lease),
    "redis_rate_limit_calls_in_measured_runs_and_warmups": calls,
    "measured_requests": reqs,
}
json.dump(r, open(path, "w"), indent=2)
q = r["ratio_redis_vs_memory"]
print(f"  state on Redis / in memory (rate-limited route, lease {lease}): throughput {q['throughput']}"
      f"   p50 {q['p50']}   p99 {q['p99']}   CPU per request {q['cpu_per_request']}")
print(f"  Redis rate-limit calls during the runs (warm-ups included): {calls}, "
      f"for {reqs} measured requests")
EOF
    fi
fi

if want token; then
    # What each side checks, for the report: HAProxy's own config lines, portcullis's route, and
    # the differences between the two.
    python3 - "$WORK/haproxy.cfg" "$TOK/checks.tsv" "$TOK/info.json" <<EOF
import json, sys
cfg, checks, out = sys.argv[1:4]
lines, inside = [], False
for l in open(cfg):
    if "-- access token, BEGIN" in l:
        inside = True
    elif "-- access token, END" in l:
        inside = False
    elif inside and l.strip() and not l.lstrip().startswith("#"):
        lines.append(l.strip())
pre = {}
for l in open(checks):
    proxy, what, want, got = l.rstrip("\n").split("\t")
    pre.setdefault(what, {})[proxy] = {"required": None if want == "*" else int(want),
                                       "got": int(got) if got.isdigit() else got}
scope_pc = str(pre["token without the '$TOKEN_SCOPE' scope"]["portcullis"]["got"])
def num(s):
    return int(s) if s.isdigit() else None
h0, v0, h1, v1 = (num(x) for x in "$HITS0 $VERIF0 $HITS1 $VERIF1".split())
info = {
    "presented": "Authorization: Bearer <ES256 JWT, typ at+jwt, kid as-1, iss $AS_ISSUER, "
                 "aud $AS_AUDIENCE, scope 'accounts payments', cnf.x5t#S256 = TPP One's "
                 "certificate>, the same token on every request of every connection",
    "haproxy_checks": [
        "Authorization: Bearer token present (http_auth_bearer)",
        "header: alg == ES256, typ at+jwt, kid == as-1 (jwt_header_query)",
        "signature: jwt_verify(ES256, AS public key PEM) == 1, on every request (no cache)",
        "claims: iss, aud (string) equal; exp required, exp/nbf/iat against date with 30 s skew",
        "scope contains '$TOKEN_SCOPE'",
        "cnf.x5t#S256 == ssl_c_der,digest(sha256),ub64enc of this connection's certificate",
        "upstream: Authorization/DPoP removed; x-portcullis-client-id/subject/scope/token-jti "
        "set from the claims (as portcullis does)",
    ],
    "haproxy_config_lines": lines,
    "portcullis_route": "auth: {profile: fapi2}, issuer 'as' (jwks file, algorithms [ES256], "
                        "defaults otherwise: typ at+jwt required, 30 s skew)",
    "portcullis_checks": [
        "exactly one Authorization header, Bearer or DPoP scheme, token68; no access_token "
        "in the query; at most 8192 bytes",
        "verified-token cache lookup by SHA-256(issuer, token); on a miss only: JWS parse, "
        "alg ES256, no jwk/jku/x5c/x5u/crit header, typ at+jwt, key by kid from the JWKS, "
        "ES256 signature, iss, aud (string or array), exp required, claim types, iat not in "
        "the future",
        "every request, cache hit or not: exp/nbf against now with 30 s skew; token must be "
        "bound (fapi2); cnf.x5t#S256 == base64url SHA-256 of this connection's verified "
        "certificate (computed once per connection)",
        "scope: NOT checked (issue #5); answered " + scope_pc + " to a token without '$TOKEN_SCOPE'",
        "upstream: Authorization/DPoP removed; x-portcullis-client-id/subject/scope/token-jti "
        "set from the claims",
    ],
    "asymmetries": [
        "signature: HAProxy verifies ES256 on every request; portcullis once per token, then "
        "serves the cached verdict (the design under test; the issue allows caching)",
        ("scope: HAProxy requires '$TOKEN_SCOPE' (one regex on the claim); portcullis does not "
         "check scopes yet (issue #5) -- a little more work for HAProxy")
        if scope_pc == "200" else
        "scope: both refuse a token without '$TOKEN_SCOPE' (portcullis answered " + scope_pc + ")",
        "portcullis also refuses what this HAProxy config lets through: two Authorization "
        "headers, access_token in the query, key-carrying (jwk/jku/x5c/x5u) or crit JOSE "
        "headers, tokens over 8 KiB, claims of the wrong JSON type (e.g. an object nbf, a "
        "numeric sub)",
        "aud: HAProxy accepts only a string equal to the audience, portcullis also an array "
        "containing it (no effect on this token)",
        "keys: HAProxy has one fixed PEM key and requires kid as-1; portcullis picks the key "
        "by kid from the JWKS (file here; could be a URL with refresh)",
        "binding: both compare cnf.x5t#S256 with the live connection's certificate; HAProxy "
        "hashes the certificate on every request, portcullis once per connection",
    ],
    "checks_before_measuring": pre,
    "portcullis_token_cache": {
        "window": "the token scenario's warm-ups and measured runs",
        "cache_hits": (h1 - h0) if None not in (h0, h1) else "unknown",
        "signature_verifications": (v1 - v0) if None not in (v0, v1) else "unknown",
        "note": "the token was verified once already by the checks before measuring",
    },
}
json.dump(info, open(out, "w"), indent=2)
EOF
    BENCH_SCENARIO=token BENCH_CONTENDERS="haproxy portcullis" BENCH_TOKEN_INFO=$TOK/info.json \
        python3 "$WORK/report.py" final "$RAW/token" "$RESULT_JSON_TOKEN"
fi

if want passthrough && want token; then
    python3 - "$RESULT_JSON" "$RESULT_JSON_TOKEN" <<'EOF'
import json, sys
print("summary (portcullis / haproxy, medians):")
for label, path in zip(("passthrough", "token"), sys.argv[1:]):
    r = json.load(open(path))
    q = r["ratio_vs_haproxy"]["portcullis"]
    m = r["median"]
    print(f"  {label:<12} throughput {q['throughput']}  ({m['portcullis']['rps']:.0f} vs "
          f"{m['haproxy']['rps']:.0f} req/s)   p50 {q['p50']}   p99 {q['p99']}   "
          f"CPU per request {q['cpu_per_request']}" + ("" if r["valid"] else "   (NOT VALID)"))
EOF
fi
