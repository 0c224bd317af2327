#!/usr/bin/env bash
# Side-by-side load comparison: portcullis against HAProxy from Debian's packages, and the
# latency portcullis adds over calling the upstream directly.
#
# Every proxy terminates mTLS (the same dev server certificate, client CA and CRL, client
# certificate required) with keep-alive on both sides and passes through to the same upstream
# (one `portcullis mock-bank`). The same load generator (`portcullis loadgen`, closed loop,
# HTTP/1.1 keep-alive, TPP One's client certificate) drives each in turn, alternating
# contender 1, 2, ..., 1, 2, ... in one run, each run preceded by a warm-up. It prints
# requests/s, p50 and p99 per run, the medians per contender and the ratios, and writes
# everything as JSON to target/compare_haproxy*.json. Raw per-run reports stay in the work
# directory (KEEP_WORKDIR=1).
#
# Scenarios (SCENARIO=...):
#   passthrough  mTLS only: haproxy vs portcullis. Target: >= 1.05 x throughput, p99 no worse.
#                -> target/compare_haproxy.json
#   token        mTLS + client rate limit + certificate-bound access token with a required
#                scope, on every request: HAProxy (benches/haproxy-token.cfg.tmpl: a stick
#                table keyed by the client certificate, jwt_verify plus ACLs on alg, typ, kid,
#                iss, aud, exp, nbf, iat, scope and cnf.x5t#S256 against the connection's
#                certificate) vs portcullis (`auth: {profile: fapi2}`, `scopes`, `rate_limit`;
#                the token's signature verified once and cached, time claims and the binding
#                checked every request). Both must answer 200 to the good token, 401 to no
#                token, a token bound to TPP Two, an unbound token, one for another audience, a
#                broken signature and (with python3's `cryptography`) crafted claims, and 403
#                to a token without the scope, before anything is measured.
#                Target: >= 3.0 x HAProxy. -> target/compare_haproxy_token.json
#   fapi         portcullis's full FAPI pipeline ('portcullis-fapi': mTLS, a DPoP-bound token
#                with a fresh DPoP proof per request, scope, an object rule tying the account
#                in the path to the token's authorization_details, a client rate-limit class,
#                the audit log to a file; driven by `portcullis loadgen --scenario`) against
#                HAProxy's JWT pipeline ('haproxy-token', the token frontend above) and
#                portcullis pass-through ('portcullis'), alternating in one run. Before
#                measuring, the fapi route must refuse a missing proof (401), a replayed proof
#                (401), an account outside the grant (403) and a token without the scope (403).
#                Prints fapi/haproxy-token and fapi/portcullis-passthrough.
#                Target: fapi >= 1.0 x haproxy-token. -> target/compare_haproxy_fapi.json
#   latency      the latency portcullis adds: the closed-loop maximum of portcullis
#                pass-through and of its token pipeline, then open loop (loadgen `mode: open`,
#                latency from the intended send time) at LATENCY_FRACTION of each maximum
#                against (a) portcullis and (b) the mock bank directly over plain HTTP; the
#                added p99 is (a) - (b), so it includes TLS termination. For reference, the
#                pass-through pipeline also measures (c) HAProxy's mTLS pass-through at the
#                same rate: what a mature proxy adds on the same machine in the same run.
#                Target: added p99 <= 1 ms at half the maximum. -> target/latency.json
#   both         passthrough + token
#   all          passthrough + token + fapi + latency
#
# Drivers and upstreams: a verdict can depend on who drives the load and what sits upstream,
# so both can be chosen, and each (scenario, driver, upstream) is one row of the final table.
#   DRIVER=loadgen   loadgen | oha | both. `oha` (a third-party load generator; installed with
#                    `cargo install oha --locked` when missing) drives the passthrough and token
#                    scenarios: OHA_CONNECTIONS connections, HTTP/1.1 keep-alive, TPP One's
#                    client certificate, `-w` (requests under way at the deadline are awaited,
#                    not counted as errors). `both` alternates the drivers inside every round.
#                    fapi (a fresh DPoP proof per request) and latency (open loop) need loadgen:
#                    with DRIVER=both they run with loadgen only, DRIVER=oha refuses them.
#   UPSTREAM=mock    mock | nginx | both. `nginx`: an nginx on a free loopback port (Debian's
#                    package, installed when missing; a config generated in the work
#                    directory, run in the foreground as the current user, no system service)
#                    answering the bench routes with the mock bank's own JSON bodies, byte for
#                    byte, from memory (`return 200`). `both` runs the whole script once per
#                    upstream (mock, then nginx) and prints the rows of both.
#
# Knobs (environment):
#   SCENARIO=passthrough   see above
#   DRIVER=loadgen   see above
#   UPSTREAM=mock    see above
#   CONNECTIONS=32   concurrent keep-alive connections of `portcullis loadgen` (every contender,
#                    closed and open loop)
#   OHA_CONNECTIONS=50   concurrent keep-alive connections of oha (`-c`; oha's own default)
#   DURATION=10s     length of each measured run
#   ROUNDS=3         rounds; each round measures every contender once
#   WARMUP=2s        warm-up before every measured run (discarded)
#   LATENCY_FRACTION=0.5   SCENARIO=latency: the open-loop rate as a fraction of the maximum
#   AUDIT=0          1 adds a contender to the passthrough scenario: portcullis with its audit
#                    log written to a file
#   STATE=memory     redis adds two contenders to the passthrough scenario, both with a client
#                    rate-limit class on the route (a quota it never reaches): 'portcullis-limited'
#                    keeps the limiter in memory, 'portcullis-redis' has `state.backend: redis`
#                    (fleet quota on a private redis-server on a free loopback port, no
#                    persistence; installed from Debian's packages when missing); the ratio
#                    redis / memory is printed and kept in the JSON (ratio_redis_vs_memory)
#   STATE_LEASE=10   with STATE=redis: state.rate_limit_lease.max_tokens (1 = a Redis round
#                    trip per request)
#   BUILD=1          0 skips `cargo build --release` (the binary must exist)
#   CARGO_TARGET_DIR=target   where the binary is (release/portcullis) and the results go
#   KEEP_WORKDIR=0   1 keeps the temporary directory (configs, certs, logs, raw results)
#   TMPDIR=/tmp      where the temporary directory is made
#
# Results: target/compare_haproxy.json (passthrough), compare_haproxy_token.json,
# compare_haproxy_fapi.json and latency.json, in CARGO_TARGET_DIR, for loadgen against the mock
# bank; any other driver or upstream adds -DRIVER-UPSTREAM to the name
# (compare_haproxy-oha-nginx.json, compare_haproxy_token-loadgen-nginx.json); the tables on stdout,
# progress on stderr. The Python steps: benches/py/compare_setup.py (before measuring) and
# benches/compare_report.py (the JSON arithmetic and the tables).
#
# Everything listens on 127.0.0.1 only, every load run stops by itself, and every process this
# script starts is stopped on exit (including Ctrl-C).
#
# Time: setup ~10 s, then per measured run WARMUP + DURATION (12 s by default):
#   passthrough 2 x ROUNDS runs (+1 per AUDIT/STATE contender), token 2 x ROUNDS,
#   fapi 3 x ROUNDS, latency 7 x ROUNDS. Defaults: SCENARIO=all ~ 8 minutes.
#
# Example: DURATION=3s ROUNDS=1 benches/compare_haproxy.sh
#          DRIVER=both UPSTREAM=both ROUNDS=2 DURATION=3s WARMUP=1s benches/compare_haproxy.sh
#          SCENARIO=all DURATION=3s ROUNDS=1 WARMUP=1s benches/compare_haproxy.sh
#          STATE=redis DURATION=8s ROUNDS=3 benches/compare_haproxy.sh
set -euo pipefail

SCENARIO=${SCENARIO:-passthrough}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
LATENCY_FRACTION=${LATENCY_FRACTION:-0.5}
AUDIT=${AUDIT:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
STATE=${STATE:-memory}
STATE_LEASE=${STATE_LEASE:-10}
DRIVER=${DRIVER:-loadgen}
UPSTREAM=${UPSTREAM:-mock}
OHA_CONNECTIONS=${OHA_CONNECTIONS:-50}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_traps
REPORT=(python3 "$ROOT/benches/compare_report.py")

case $SCENARIO in
    passthrough | token | fapi | latency) SCENARIOS=("$SCENARIO") ;;
    both) SCENARIOS=(passthrough token) ;;
    all) SCENARIOS=(passthrough token fapi latency) ;;
    *) die "SCENARIO must be passthrough, token, fapi, latency, both or all (got '$SCENARIO')" ;;
esac
want() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]]; }
# Every scenario runs HAProxy (latency: as the reference); these also need the token pipeline.
need_token() { want token || want fapi || want latency; }
[[ $STATE == memory || $STATE == redis ]] || die "STATE must be memory or redis (got '$STATE')"
[[ $STATE_LEASE =~ ^[1-9][0-9]*$ ]] || die "STATE_LEASE must be a positive integer (got '$STATE_LEASE')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"
[[ $LATENCY_FRACTION =~ ^0?\.[0-9]+$|^1(\.0*)?$ ]] || die "LATENCY_FRACTION must be in (0, 1] (got '$LATENCY_FRACTION')"
[[ $OHA_CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "OHA_CONNECTIONS must be a positive integer (got '$OHA_CONNECTIONS')"
case $DRIVER in
    loadgen | oha) DRIVERS=("$DRIVER") ;;
    both) DRIVERS=(loadgen oha) ;;
    *) die "DRIVER must be loadgen, oha or both (got '$DRIVER')" ;;
esac
case $UPSTREAM in mock | nginx | both) ;; *) die "UPSTREAM must be mock, nginx or both (got '$UPSTREAM')" ;; esac
if [[ $DRIVER == oha ]] && { want fapi || want latency; }; then
    die "SCENARIO=fapi and latency need portcullis loadgen (DPoP proofs per request, open loop): use DRIVER=loadgen or both"
fi
require_tools python3 curl

# The result file of scenario $1 (compare_haproxy, compare_haproxy_token, ...) for driver $2 and
# upstream $3: the historical name for loadgen against the mock bank, suffixed otherwise.
result_json() {
    if [[ $2 == loadgen && $3 == mock ]]; then echo "$TARGET_DIR/$1.json"; else echo "$TARGET_DIR/$1-$2-$3.json"; fi
}

# UPSTREAM=both: the whole bench once per upstream, then the rows of both.
if [[ $UPSTREAM == both ]]; then
    for u in mock nginx; do
        log "=== upstream $u ==="
        # The second run finds the binary built.
        UPSTREAM=$u "${BASH_SOURCE[0]}"
        export BUILD=0
    done
    rows=()
    for u in mock nginx; do
        for d in "${DRIVERS[@]}"; do
            for name in compare_haproxy compare_haproxy_token compare_haproxy_fapi; do
                f=$(result_json "$name" "$d" "$u")
                case $name in
                    compare_haproxy) want passthrough || continue ;;
                    compare_haproxy_token) want token || continue ;;
                    compare_haproxy_fapi) { want fapi && [[ $d == loadgen ]]; } || continue ;;
                esac
                rows+=("$f")
            done
        done
    done
    python3 "$ROOT/benches/compare_report.py" rows "${rows[@]}"
    exit 0
fi

# --- prerequisites ---------------------------------------------------------------------------

# /usr/sbin is not on every user's PATH.
find_haproxy() { command -v haproxy 2>/dev/null || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; }; }
find_nginx() { command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }
# cargo install puts it in ~/.cargo/bin, which is not on every PATH.
find_oha() {
    command -v oha 2>/dev/null ||
        { [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/oha ]] && echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha"; }
}
if ! HAPROXY=$(find_haproxy); then
    apt_install haproxy
    HAPROXY=$(find_haproxy) || die "haproxy is still not installed"
fi
if [[ $UPSTREAM == nginx ]] && ! NGINX=$(find_nginx); then
    apt_install nginx
    NGINX=$(find_nginx) || die "nginx is still not installed"
fi
if [[ " ${DRIVERS[*]} " == *" oha "* ]] && ! OHA=$(find_oha); then
    log "installing oha (cargo install oha --locked; a few minutes)"
    # Its own target directory: nothing of it mixes with portcullis's build.
    CARGO_TARGET_DIR=$TARGET_DIR/oha-install cargo install oha --locked
    OHA=$(find_oha) || die "oha is still not installed (cargo install oha --locked)"
fi
if [[ $STATE == redis ]] && ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || die "redis-server is still not installed"
fi

ensure_binary
bench_workdir vs-haproxy
RAW=$WORK/results
write_policies

# Free loopback ports, all distinct: upstream, haproxy, haproxy probe, portcullis (+ admin),
# portcullis with audit (+ admin), haproxy token frontend, portcullis with tokens (+ admin),
# portcullis with a rate limit in memory (+ admin) and on Redis (+ admin), redis-server,
# portcullis full FAPI (+ admin), nginx.
read -r P_BANK P_HA P_HA_PROBE P_PC P_PC_ADMIN P_PCA P_PCA_ADMIN P_HAT P_PCT P_PCT_ADMIN \
    P_PCL P_PCL_ADMIN P_PCR P_PCR_ADMIN P_REDIS P_PCF P_PCF_ADMIN P_NGINX < <(free_ports 18)

# --- the shared upstream ---------------------------------------------------------------------

# The mock bank always runs: with UPSTREAM=nginx it provides the bodies nginx serves.
start_mock_bank "$P_BANK"
UPSTREAM_DESC="one portcullis mock-bank on 127.0.0.1:$P_BANK (plain HTTP/1.1), shared"
if [[ $UPSTREAM == nginx ]]; then
    mkdir -p "$WORK/nginx"
    # The mock bank's answers, byte for byte; nginx's `return` takes them from its config.
    for path in "$ROUTE" "$FAPI_PATH"; do
        curl -sf --max-time 5 "http://127.0.0.1:$P_BANK$path" >"$WORK/nginx/body" ||
            die "the mock bank did not answer $path"
        # Inside a single-quoted nginx string, ' and \ end or escape it and $ names a variable.
        if grep -q "['\\\$]" "$WORK/nginx/body"; then
            die "the mock bank's body for $path cannot be inlined in nginx.conf"
        fi
        printf "        location = %s { return 200 '%s'; }\n" "$path" "$(cat "$WORK/nginx/body")"
    done >"$WORK/nginx/locations.conf"
    # In the foreground, everything in the work directory, keep-alive like the mock bank (no
    # request cap), no access log. Not a system service: no root needed. (Started as root,
    # nginx would run its workers as nobody, who cannot enter the work directory; they read
    # nothing from it, but `user root` keeps them where the master is.)
    cat >"$WORK/nginx/nginx.conf" <<EOF
# Generated by benches/compare_haproxy.sh: the bench's upstream, answering the bench routes
# with the mock bank's JSON from memory.
daemon off;
master_process on;
worker_processes $(nproc);
$([[ $(id -u) -eq 0 ]] && echo "user root;")
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    server_tokens off;
    default_type application/json;
    server {
        listen 127.0.0.1:$P_NGINX;
$(cat "$WORK/nginx/locations.conf")
        location / { return 404; }
    }
}
EOF
    NGINX_CMD=("$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
    "${NGINX_CMD[@]}" -t -q || die "nginx rejects $WORK/nginx/nginx.conf"
    start_bg "$WORK/nginx.log" "${NGINX_CMD[@]}"
    PID_NGINX=$STARTED_PID
    wait_200 "$PID_NGINX" "$WORK/nginx.log" "http://127.0.0.1:$P_NGINX$ROUTE"
    # Everything below reaches the upstream by P_BANK.
    P_MOCK=$P_BANK
    P_BANK=$P_NGINX
    UPSTREAM_DESC="$("$NGINX" -v 2>&1 | sed 's|^nginx version: ||') on 127.0.0.1:$P_NGINX ($(nproc) workers, keep-alive, no access log) answering the mock bank's JSON from memory, shared"
    log "upstream: nginx on 127.0.0.1:$P_NGINX with the mock bank's bodies (mock bank on $P_MOCK not used from here)"
fi

# --- access tokens (token, fapi and latency scenarios) ---------------------------------------

if need_token; then
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
    # Without the scope both require.
    TOKEN_NO_SCOPE=$(mint "$AS_AUDIENCE" --scope "payments" --cert "$CERTS/tpp1.pem")
    # The good token with one signature character changed (well inside: no padding bits).
    sig=${TOKEN_GOOD##*.}
    c=${sig:20:1}
    if [[ $c == A ]]; then c=B; else c=A; fi
    TOKEN_BAD_SIG=${TOKEN_GOOD%.*}.${sig:0:20}$c${sig:21}
    # HAProxy's jwt_verify takes a PEM public key: build the P-256 SubjectPublicKeyInfo from the
    # JWK's x and y (a fixed DER prefix, then 04 || x || y).
    python3 "$ROOT/benches/py/compare_setup.py" jwk-pem "$TOK/as-jwks.json" "$TOK/as-pub.pem"
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
        printf '403\t403\ttoken without the %s scope\t%s\n' "'$TOKEN_SCOPE'" "$TOKEN_NO_SCOPE"
    } >"$TOK/cases.tsv"
fi

# --- portcullis ------------------------------------------------------------------------------

# The pass-through instance is always started (checks, probe, fapi and latency baselines); the
# audited one once for the probe of the negotiated TLS parameters (stopped unless AUDIT=1).
portcullis_config "$P_PC" "$P_PC_ADMIN" "$AUDIT_NONE" >"$WORK/portcullis.yaml"
start_portcullis "$WORK/portcullis.yaml" portcullis "$P_PC_ADMIN"
PID_PC=$STARTED_PID
portcullis_config "$P_PCA" "$P_PCA_ADMIN" "$(audit_file audit.log)" >"$WORK/portcullis-audit.yaml"
start_portcullis "$WORK/portcullis-audit.yaml" portcullis-audit "$P_PCA_ADMIN"
PID_PCA=$STARTED_PID

if need_token; then
    # ES256 only, like HAProxy's jwt_verify(ES256, ...); skew and everything else as defaulted.
    portcullis_config "$P_PCT" "$P_PCT_ADMIN" "$AUDIT_NONE
$ISSUERS
$RATE_LIMITS" policies/bench-token.yaml >"$WORK/portcullis-token.yaml"
    start_portcullis "$WORK/portcullis-token.yaml" portcullis-token "$P_PCT_ADMIN"
    PID_PCT=$STARTED_PID
fi

if want fapi; then
    fapi_config "$P_PCF" "$P_PCF_ADMIN" fapi.log >"$WORK/portcullis-fapi.yaml"
    start_portcullis "$WORK/portcullis-fapi.yaml" portcullis-fapi "$P_PCF_ADMIN"
    PID_PCF=$STARTED_PID
fi

if [[ $STATE == redis ]] && want passthrough; then
    mkdir -p "$WORK/redis"
    start_bg "$WORK/redis.log" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$WORK/redis"
    PID_REDIS=$STARTED_PID
    portcullis_config "$P_PCL" "$P_PCL_ADMIN" "$AUDIT_NONE
$RATE_LIMITS" policies/bench-limited.yaml >"$WORK/portcullis-limited.yaml"
    start_portcullis "$WORK/portcullis-limited.yaml" portcullis-limited "$P_PCL_ADMIN"
    PID_PCL=$STARTED_PID
    portcullis_config "$P_PCR" "$P_PCR_ADMIN" "$AUDIT_NONE
$RATE_LIMITS
state:
  backend: redis
  redis:
    url: redis://127.0.0.1:$P_REDIS/0
  rate_limit_lease:
    max_tokens: $STATE_LEASE" policies/bench-limited.yaml >"$WORK/portcullis-redis.yaml"
    start_portcullis "$WORK/portcullis-redis.yaml" portcullis-redis "$P_PCR_ADMIN"
    PID_PCR=$STARTED_PID
    kill -0 "$PID_REDIS" 2>/dev/null || { cat "$WORK/redis.log" >&2; die "redis-server exited"; }
fi

# --- haproxy ---------------------------------------------------------------------------------

NPROC=$(nproc)
haproxy_passthrough_config "$P_HA" >"$WORK/haproxy.cfg"
cat >>"$WORK/haproxy.cfg" <<EOF

# Same TLS settings, but logs the negotiated TLS version and cipher; used only for the probe.
frontend probe
    bind 127.0.0.1:$P_HA_PROBE $BIND_TLS
    log global
    log-format "probe tls=%sslv cipher=%sslc alpn=%[ssl_fc_alpn] status=%ST"
    default_backend bank
EOF
if want token || want fapi; then
    # The token frontend: benches/haproxy-token.cfg.tmpl with its placeholders filled in.
    python3 "$ROOT/benches/py/compare_setup.py" fill-template "$ROOT/benches/haproxy-token.cfg.tmpl" \
        BIND="127.0.0.1:$P_HAT $BIND_TLS" ROUTE="$ROUTE" AS_PUB="$TOK/as-pub.pem" KID=as-1 \
        ISSUER="$AS_ISSUER" AUDIENCE="$AS_AUDIENCE" SKEW=30 SCOPE="$TOKEN_SCOPE" \
        RATE=1000000 >>"$WORK/haproxy.cfg"
fi
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejects $WORK/haproxy.cfg"
start_bg "$WORK/haproxy.log" "$HAPROXY" -db -f "$WORK/haproxy.cfg"
PID_HA=$STARTED_PID
wait_200 "$PID_HA" "$WORK/haproxy.log" "${CURL_MTLS[@]}" "https://localhost:$P_HA$ROUTE" \
    --resolve "localhost:$P_HA:127.0.0.1"

# --- load runs -------------------------------------------------------------------------------

# The CPU time (ms) of this shell's reaped children so far, in CHILD_MS: bash's `times`,
# second line. (Not in $(...): a subshell has children of its own.) The load generator is the
# only child reaped during a run, so the difference around a run is its CPU time.
children_cpu_ms() {
    local f=$WORK/times.txt
    times >"$f"
    CHILD_MS=$(awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] }
                   printf "%d\n", n * 1000 }' "$f")
}

# Runs the load generator in flag mode against a port; the JSON report goes to OUT (its own CPU
# time in ms to OUT.lgcpu); further arguments go to the load generator (e.g. --header).
loadgen() {
    local port=$1 conns=$2 duration=$3 out=$4 c0
    shift 4
    children_cpu_ms
    c0=$CHILD_MS
    run_fg "$BIN" loadgen --addr "127.0.0.1:$port" --server-name localhost --path "$ROUTE" \
        --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
        --connections "$conns" --duration "$duration" --json "$@" >"$out" 2>"$out.stderr" ||
        { cat "$out.stderr" >&2; die "loadgen against 127.0.0.1:$port failed"; }
    children_cpu_ms
    echo $((CHILD_MS - c0)) >"$out.lgcpu"
}

# Runs a loadgen scenario file; the JSON report goes to OUT (exit status 1, a missed
# threshold, is left to the caller: the report has the errors).
loadgen_scenario() {
    local file=$1 out=$2 c0
    children_cpu_ms
    c0=$CHILD_MS
    run_fg "$BIN" loadgen --scenario "$file" --json "$out" >"$out.stdout" 2>"$out.stderr" || true
    [[ -s $out ]] || { cat "$out.stderr" >&2; die "loadgen --scenario $file failed"; }
    children_cpu_ms
    echo $((CHILD_MS - c0)) >"$out.lgcpu"
}

# Runs oha against a port (https://localhost:PORT$ROUTE, TPP One's certificate, HTTP/1.1
# keep-alive, OHA_CONNECTIONS connections, `-w`: requests under way at the deadline are awaited
# rather than counted as errors) for $2; the report, in the flag-mode shape the report script
# reads, goes to $3 (oha's own JSON to $3.oha, its CPU time in ms to $3.lgcpu); further
# arguments go to oha (e.g. -H).
oha_run() {
    local port=$1 duration=$2 out=$3 c0
    shift 3
    children_cpu_ms
    c0=$CHILD_MS
    run_fg "$OHA" --no-tui --output-format json -o "$out.oha" -z "$duration" -w \
        -c "$OHA_CONNECTIONS" --http-version 1.1 \
        --cacert "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
        --connect-to "localhost:$port:127.0.0.1:$port" "$@" "https://localhost:$port$ROUTE" \
        >"$out.stdout" 2>"$out.stderr" || { cat "$out.stderr" >&2; die "oha against 127.0.0.1:$port failed"; }
    children_cpu_ms
    echo $((CHILD_MS - c0)) >"$out.lgcpu"
    python3 "$ROOT/benches/compare_report.py" oha-flatten "$out.oha" "$out"
}

# The full-FAPI closed-loop load against portcullis-fapi for $1 (a duration).
fapi_run() {
    local duration=$1 out=$2 file=$WORK/fapi-closed-$1.yaml
    [[ -f $file ]] || fapi_scenario "$P_PCF" "  protocol: http1
  mode: closed
  connections: $CONNECTIONS
  duration: $duration" "$FAPI_ROUTE_LOAD" >"$file"
    loadgen_scenario "$file" "$out"
    flatten_report "$out"
}

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
TLS_PC=$(python3 "$ROOT/benches/py/compare_setup.py" negotiated-tls "$WORK/audit/audit.log")
log "haproxy negotiated:    ${TLS_HA:-unknown}"
log "portcullis negotiated: ${TLS_PC:-unknown}"

if [[ $AUDIT == 1 ]] && want passthrough; then
    PASSTHROUGH_CONTENDERS=(haproxy portcullis portcullis-audit)
else
    PASSTHROUGH_CONTENDERS=(haproxy portcullis)
    stop_started "$PID_PCA"
fi
if [[ $STATE == redis ]] && want passthrough; then
    PASSTHROUGH_CONTENDERS+=(portcullis-limited portcullis-redis)
fi

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
            curl -s -i --max-time 5 "${res[@]}" "${CURL_MTLS[@]}" "${hdr[@]}" "$url" 2>&1 | head -20 >&2 || true
            die "$name (token), TPP One's connection, $what: expected $want, got '$got' (answer above)"
        else
            n=$((n + 1))
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$what" "$want" "$got" >>"$TOK/checks.tsv"
    done <"$TOK/cases.tsv"
    log "$name (token) on 127.0.0.1:$port: no certificate and a revoked one refused;" \
        "$n token cases answered as required (200 only for valid tokens bound to TPP One," \
        "403 without the scope)$noted"
}
if want token || want fapi; then
    # Claims `dev-token` cannot produce (expired, not yet valid, other issuer, typ, kid, alg),
    # signed with the same AS key, when python3 has the `cryptography` package. Minted here,
    # right before the checks: some sit seconds from a time limit ("expired 10 s ago, within
    # the 30 s skew"), and on a loaded machine starting the proxies took longer than that.
    if python3 -c 'import cryptography' 2>/dev/null; then
        python3 "$ROOT/benches/py/compare_setup.py" crafted-tokens "$TOK/as.key" "$CERTS/tpp1.pem" \
            "$AS_ISSUER" "$AS_AUDIENCE" >>"$TOK/cases.tsv"
    else
        log "python3 has no 'cryptography': skipping the crafted-claim checks (expired, nbf, iss, typ, kid, alg)"
    fi
    : >"$TOK/checks.tsv"
    token_checks haproxy "$P_HAT"
    token_checks portcullis "$P_PCT"
fi
if want fapi; then
    log "portcullis-fapi on 127.0.0.1:$P_PCF: refusal checks (loadgen, one connection)"
    fapi_checks "$P_PCF" "$RAW/fapi-checks.json"
    # And the audit log has a record with the client rate-limit class applied.
    sleep 1.2 # the audit writer's batch
    python3 "$ROOT/benches/py/compare_setup.py" audit-rate-limited "$WORK/audit/fapi.log" ||
        die "portcullis-fapi's audit log has no rate-limited, allowed request"
fi
# portcullis's token pipeline ran the token checks for fapi; measuring fapi needs only
# HAProxy's, so it is stopped unless the token or latency scenario measures it.
if want fapi && ! want token && ! want latency; then stop_started "$PID_PCT"; fi

# --- measure ---------------------------------------------------------------------------------

# (No `| head`: with pipefail, SIGPIPE in the writer would end the script.)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo)
CPU_MODEL=${CPU_MODEL%%$'\n'*}
HA_VV=$("$HAPROXY" -vv)
HA_VERSION=$(sed -n '1s/ - https:.*//p' <<<"$HA_VV")
HA_OPENSSL=$(sed -n 's/^Running on OpenSSL version : //p' <<<"$HA_VV")
PC_REV=$(revision)

# One measured run (or warm-up) by driver $1 of contender $2 for $3, report in $4: flag mode
# (with the good token for the contenders in SENDS_TOKEN), or the full-FAPI scenario for
# portcullis-fapi (loadgen only).
drive() {
    local driver=$1 c=$2 duration=$3 out=$4 extra=()
    if [[ $c == portcullis-fapi ]]; then
        fapi_run "$duration" "$out"
        return
    fi
    if [[ $driver == oha ]]; then
        [[ ${SENDS_TOKEN[$c]:-0} == 1 ]] && extra=(-H "authorization: Bearer $TOKEN_GOOD")
        oha_run "${PORT[$c]}" "$duration" "$out" "${extra[@]}"
        return
    fi
    [[ ${SENDS_TOKEN[$c]:-0} == 1 ]] && extra=(--header "authorization: Bearer $TOKEN_GOOD")
    loadgen "${PORT[$c]}" "$CONNECTIONS" "$duration" "$out" "${extra[@]}"
}

# The items of an array in reverse order, on one line.
reversed() {
    local i out=()
    for ((i = $#; i >= 1; i--)); do out+=("${!i}"); done
    echo "${out[*]}"
}

# Measures one scenario: alternating rounds over MEASURE_DRIVERS and CONTENDERS (PORT, PID_OF
# by contender name), raw results in $1/DRIVER. Even rounds run the drivers and the contenders
# in reverse order, so that no contender always runs first or always right after another (a
# drift of the machine's speed within a round then does not favour one side of a comparison);
# a driver's contenders always run back to back, which is what the paired ratios pair.
measure() {
    local raw=$1 round c d before writer steal order drivers
    for d in "${MEASURE_DRIVERS[@]}"; do mkdir -p "$raw/$d"; done
    for ((round = 1; round <= ROUNDS; round++)); do
        drivers=("${MEASURE_DRIVERS[@]}")
        order=("${CONTENDERS[@]}")
        if ((round % 2 == 0)); then
            read -r -a drivers <<<"$(reversed "${MEASURE_DRIVERS[@]}")"
            read -r -a order <<<"$(reversed "${CONTENDERS[@]}")"
        fi
        for d in "${drivers[@]}"; do
            for c in "${order[@]}"; do
                drive "$d" "$c" "$WARMUP" "$raw/$d/warmup-$round-$c.json"
                before=$(cpu_ticks "${PID_OF[$c]}")
                writer=$(audit_writer_ticks "${PID_OF[$c]}")
                steal=$(steal_ticks)
                drive "$d" "$c" "$DURATION" "$raw/$d/run-$round-$c.json"
                echo $(($(cpu_ticks "${PID_OF[$c]}") - before)) >"$raw/$d/run-$round-$c.cpu"
                echo $(($(audit_writer_ticks "${PID_OF[$c]}") - writer)) >"$raw/$d/run-$round-$c.writer"
                echo $(($(steal_ticks) - steal)) >"$raw/$d/run-$round-$c.steal"
                log "$SCENARIO_NOW round $round $d $c: $("${REPORT[@]}" line "$raw/$d/run-$round-$c.json")"
            done
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

# The connections of the drivers measuring, for the progress lines.
conns_desc() {
    local d out=()
    for d in "${MEASURE_DRIVERS[@]}"; do
        if [[ $d == oha ]]; then out+=("oha $OHA_CONNECTIONS connections"); else out+=("loadgen $CONNECTIONS connections"); fi
    done
    local IFS=,
    echo "${out[*]}"
}

declare -A PORT PID_OF SENDS_TOKEN
PORT=([haproxy]=$P_HA [portcullis]=$P_PC [portcullis-audit]=$P_PCA [haproxy-token]=$P_HAT
    [portcullis-token]=$P_PCT [portcullis-limited]=$P_PCL [portcullis-redis]=$P_PCR)
PID_OF=([haproxy]=$PID_HA [portcullis]=$PID_PC [portcullis-audit]=$PID_PCA
    [haproxy-token]=$PID_HA [portcullis-token]=${PID_PCT:-} [portcullis-limited]=${PID_PCL:-}
    [portcullis-redis]=${PID_PCR:-} [portcullis-fapi]=${PID_PCF:-})
SENDS_TOKEN=([haproxy-token]=1 [portcullis-token]=1)

if want passthrough; then
    SCENARIO_NOW=passthrough
    CONTENDERS=("${PASSTHROUGH_CONTENDERS[@]}")
    [[ $STATE == redis ]] && REDIS_CALLS0=$(state_calls)
    MEASURE_DRIVERS=("${DRIVERS[@]}")
    log "measuring passthrough: $ROUNDS round(s) of ${CONTENDERS[*]} by ${MEASURE_DRIVERS[*]} ($(conns_desc)), $DURATION each after a $WARMUP warm-up"
    measure "$RAW/passthrough"
    [[ $STATE == redis ]] && REDIS_CALLS1=$(state_calls)
fi
# The current audit file (the earlier ones were rotated at 64 MiB and all but 4 deleted): its
# size and lines give the bytes per record.
AUDIT_BYTES=0 AUDIT_LINES=0
if [[ $AUDIT == 1 && -f $WORK/audit/audit.log ]]; then
    AUDIT_BYTES=$(stat -c %s "$WORK/audit/audit.log")
    AUDIT_LINES=$(wc -l <"$WORK/audit/audit.log")
fi
if want token; then
    SCENARIO_NOW=token
    # Named haproxy/portcullis in this scenario's report (as before).
    CONTENDERS=(haproxy portcullis)
    PORT[haproxy]=$P_HAT PORT[portcullis]=$P_PCT
    PID_OF[portcullis]=$PID_PCT
    SENDS_TOKEN[haproxy]=1 SENDS_TOKEN[portcullis]=1
    MEASURE_DRIVERS=("${DRIVERS[@]}")
    log "measuring token: $ROUNDS round(s) of ${CONTENDERS[*]} by ${MEASURE_DRIVERS[*]} ($(conns_desc)), $DURATION each after a $WARMUP warm-up"
    read -r HITS0 VERIF0 < <(token_counters)
    measure "$RAW/token"
    read -r HITS1 VERIF1 < <(token_counters)
    PORT[haproxy]=$P_HA PORT[portcullis]=$P_PC PID_OF[portcullis]=$PID_PC
    SENDS_TOKEN[haproxy]=0 SENDS_TOKEN[portcullis]=0
fi
if want fapi; then
    SCENARIO_NOW=fapi
    CONTENDERS=(haproxy-token portcullis portcullis-fapi)
    # A fresh DPoP proof per request: loadgen only.
    MEASURE_DRIVERS=(loadgen)
    log "measuring fapi: $ROUNDS round(s) of ${CONTENDERS[*]} by loadgen, $CONNECTIONS connections, $DURATION each after a $WARMUP warm-up"
    measure "$RAW/fapi"
fi
if want latency; then
    SCENARIO_NOW=latency
    LAT=$RAW/latency
    mkdir -p "$LAT"
    PIPELINES=(passthrough token)
    declare -A LAT_CONTENDER=([passthrough]=portcullis [token]=portcullis-token)
    declare -A LAT_PORT=([passthrough]=$P_PC [token]=$P_PCT)
    # 1. The closed-loop maximum of each pipeline (alternating, each run after a warm-up).
    log "measuring latency (1/2): closed-loop maximum of ${PIPELINES[*]}, $ROUNDS round(s), $CONNECTIONS connections"
    for ((round = 1; round <= ROUNDS; round++)); do
        for pl in "${PIPELINES[@]}"; do
            c=${LAT_CONTENDER[$pl]}
            drive loadgen "$c" "$WARMUP" "$LAT/max-warmup-$round-$pl.json"
            drive loadgen "$c" "$DURATION" "$LAT/max-$round-$pl.json"
            log "latency round $round $pl maximum: $("${REPORT[@]}" line "$LAT/max-$round-$pl.json")"
        done
    done
    # 2. Open loop at LATENCY_FRACTION of each maximum: (a) portcullis, (b) the mock bank
    # directly, (c) pass-through only: HAProxy's pass-through at portcullis's rate (reference).
    declare -A LAT_SIDES=([passthrough]="proxy direct haproxy" [token]="proxy direct")
    # $1 pipeline, $2 proxy|direct|haproxy, $3 rate; the scenario on stdout.
    open_scenario() {
        local target client token="" port=${LAT_PORT[$1]}
        [[ $2 == haproxy ]] && port=$P_HA
        if [[ $2 == direct ]]; then
            target="  address: 127.0.0.1:$P_BANK
  plaintext: true"
            client="  - name: direct"
        else
            target="  address: 127.0.0.1:$port
  server_name: localhost
  ca: $CERTS/ca.pem"
            client="  - name: tpp-one
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key"
            if [[ $1 == token ]]; then
                # A certificate-bound token like TOKEN_GOOD, minted by the load generator.
                token="
    token:
      signing_key: $TOK/as.key
      kid: as-1
      issuer: $AS_ISSUER
      audience: $AS_AUDIENCE
      client_id: tpp-one
      scopes: [accounts, payments]
      lifetime: 1h
      binding: cert"
            fi
        fi
        cat <<YAML
name: latency-$1-$2
target:
$target
  timeout: 10s
clients:
$client$token
routes:
  - name: accounts
    path: $ROUTE
    expect: [200]
load:
  mode: open
  rate: $3
  connections: $CONNECTIONS
  duration: $DURATION
  warmup: $WARMUP
YAML
    }
    for pl in "${PIPELINES[@]}"; do
        rate=$("${REPORT[@]}" open-rate "$LAT" "$pl" "$ROUNDS" "$LATENCY_FRACTION")
        for side in ${LAT_SIDES[$pl]}; do
            open_scenario "$pl" "$side" "$rate" >"$WORK/latency-$pl-$side.yaml"
        done
        log "latency: $pl open loop at $rate req/s ($LATENCY_FRACTION of the median maximum)"
    done
    log "measuring latency (2/2): open loop, $ROUNDS round(s) of portcullis / mock bank direct (/ haproxy for pass-through) per pipeline"
    for ((round = 1; round <= ROUNDS; round++)); do
        for pl in "${PIPELINES[@]}"; do
            for side in ${LAT_SIDES[$pl]}; do
                out=$LAT/open-$round-$pl-$side.json
                loadgen_scenario "$WORK/latency-$pl-$side.yaml" "$out"
                log "latency round $round $pl $side: $("${REPORT[@]}" line "$out")"
            done
        done
    done
fi

# --- report ----------------------------------------------------------------------------------

mkdir -p "$TARGET_DIR"
export BENCH_ROUNDS=$ROUNDS BENCH_CORES=$NPROC
export BENCH_CPU=$CPU_MODEL BENCH_KERNEL=$(uname -r) BENCH_CONNECTIONS=$CONNECTIONS
export BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP BENCH_ROUTE=$ROUTE BENCH_BANK=127.0.0.1:$P_BANK
export BENCH_HA_VERSION=$HA_VERSION BENCH_HA_OPENSSL=$HA_OPENSSL BENCH_TLS_HA=${TLS_HA:-unknown}
export BENCH_CLK_TCK=$(getconf CLK_TCK)
export BENCH_PC_REV=$PC_REV BENCH_TLS_PC=${TLS_PC:-unknown} BENCH_AUDIT_BYTES=$AUDIT_BYTES BENCH_AUDIT_LINES=$AUDIT_LINES

export BENCH_UPSTREAM=$UPSTREAM BENCH_UPSTREAM_DESC=$UPSTREAM_DESC BENCH_OHA_CONNECTIONS=$OHA_CONNECTIONS
ROWS=()
for d in "${DRIVERS[@]}"; do
    export BENCH_DRIVER=$d
    if want passthrough; then
        out=$(result_json compare_haproxy "$d" "$UPSTREAM")
        BENCH_SCENARIO=passthrough BENCH_CONTENDERS="${PASSTHROUGH_CONTENDERS[*]}" \
            "${REPORT[@]}" final "$RAW/passthrough/$d" "$out"
        if [[ $STATE == redis ]]; then
            "${REPORT[@]}" redis-ratio "$out" "$REDIS_CALLS0" "$REDIS_CALLS1" "$STATE_LEASE"
        fi
        ROWS+=("$out")
    fi

    if want token; then
        # What each side checks, for the report: HAProxy's own config lines, portcullis's route,
        # and the differences between the two.
        "${REPORT[@]}" token-info "$WORK/haproxy.cfg" "$TOK/checks.tsv" "$TOK/info.json" \
            "$AS_ISSUER" "$AS_AUDIENCE" "$TOKEN_SCOPE" "$HITS0" "$VERIF0" "$HITS1" "$VERIF1"
        out=$(result_json compare_haproxy_token "$d" "$UPSTREAM")
        BENCH_SCENARIO=token BENCH_CONTENDERS="haproxy portcullis" BENCH_TOKEN_INFO=$TOK/info.json \
            "${REPORT[@]}" final "$RAW/token/$d" "$out"
        ROWS+=("$out")
    fi

    if want fapi && [[ $d == loadgen ]]; then
        out=$(result_json compare_haproxy_fapi "$d" "$UPSTREAM")
        BENCH_SCENARIO=fapi BENCH_CONTENDERS="haproxy-token portcullis portcullis-fapi" \
            BENCH_BASELINE=haproxy-token BENCH_FAPI_CHECKS=$RAW/fapi-checks.json \
            BENCH_FAPI_PATH=$FAPI_PATH "${REPORT[@]}" final "$RAW/fapi/$d" "$out"
        ROWS+=("$out")
    fi
done
export BENCH_DRIVER=loadgen
RESULT_JSON=$(result_json compare_haproxy loadgen "$UPSTREAM")
RESULT_JSON_TOKEN=$(result_json compare_haproxy_token loadgen "$UPSTREAM")
RESULT_JSON_FAPI=$(result_json compare_haproxy_fapi loadgen "$UPSTREAM")
RESULT_JSON_LATENCY=$(result_json latency loadgen "$UPSTREAM")

if want latency; then
    BENCH_PIPELINES="passthrough token" BENCH_LATENCY_FRACTION=$LATENCY_FRACTION \
        "${REPORT[@]}" latency "$RAW/latency" "$RESULT_JSON_LATENCY"
fi

if ((${#SCENARIOS[@]} > 1)) && [[ " ${DRIVERS[*]} " == *" loadgen "* ]]; then
    "${REPORT[@]}" summary "$RESULT_JSON" "$RESULT_JSON_TOKEN" "$RESULT_JSON_FAPI" "$RESULT_JSON_LATENCY" \
        "${SCENARIOS[@]}"
fi
# One row per (scenario, driver, upstream) measured in this run.
if ((${#ROWS[@]} > 0)); then
    "${REPORT[@]}" rows "${ROWS[@]}"
fi
