#!/usr/bin/env bash
# Memory targets: <= 64 MiB RSS with 1,000 idle keep-alive connections, and
# <= 256 MiB after 1M distinct rate-limit keys -- measured end to end on a release build.
#
# Part 1, idle connections: portcullis runs the full config (mTLS required + CRL, the
# pass-through route and the full-FAPI route with issuer, DPoP replay cache, rate-limit class,
# audit log to a file). python3's ssl module opens IDLE_CONNECTIONS mTLS connections with TPP
# One's certificate (loopback), sends one GET on each (keep-alive), reads the answer and then
# holds every connection idle for IDLE_HOLD. The proxy's VmRSS/VmHWM (/proc/PID/status), open
# descriptors and portcullis_connections_active are read before, once all are connected, and at
# the end of the hold. Then, in the same run, the same clients against HAProxy's pass-through
# frontend (benches/lib.sh haproxy_passthrough_config, as benches/compare_haproxy.sh runs it:
# mTLS required + CRL, the same timeouts, in front of the same mock bank), measured the same
# way, and the KiB per connection of the two compared (target: portcullis <= HAProxy).
#
# Part 2, rate-limit keys: a second portcullis whose route takes an optional client
# certificate and a bearer token, with a rate-limit class. Without a certificate the class keys
# on the verified token's client_id (src/pipeline/ratelimit.rs: certificate thumbprint, else
# token client_id, else peer IP), so KEYS distinct keys need KEYS distinct tokens: DRIVERS
# python3 processes each mint their share of EdDSA access tokens (client_id of 43 characters,
# the length of a certificate thumbprint: the keys are as long as real ones) and pipeline them
# over one TLS connection each, BATCH requests at a time. The token cache is off
# (tokens.cache_entries: 0) and the audit sink is none, so that neither holds per-request
# memory; the DPoP replay cache is unused (bearer tokens). The class allows one request per
# KEY_REFILL per client (burst 1): before the feed, two requests with one token prove that it
# really keys on client_id (the second is refused with 429); every one of the KEYS requests
# must then be answered 200. Maintenance (every MAINTENANCE: governor's retain_recent +
# shrink_to_fit) drops a key once its theoretical arrival time is one replenish period in the
# past, i.e. 2 x KEY_REFILL after its one request (governor 0.10: drop_below = now - t); so
# while the feed is shorter than that, all KEYS keys are held at its end (checked). RSS is read
# before the feed, every 5 s during it, right after it, and every 5 s until every key is
# droppable and one more maintenance pass has run.
#
# Not measured here: the pre-authentication limit per peer IP (one loopback address: one key;
# 1M source addresses would need 1M TLS handshakes). src/state/ratelimit.rs has an in-process
# harness for the limiter alone (`cargo test --release --lib ratelimit::tests::one_million_keys
# -- --ignored --nocapture`).
#
# Knobs (environment):
#   PART=all              idle | keys | all
#   IDLE_CONNECTIONS=1000 connections held idle
#   IDLE_HOLD=30s         how long they are held (seconds, `s` optional); the instance's
#                         idle_timeout and header_read_timeout (HAProxy's timeout client,
#                         http-keep-alive and http-request) are set above it
#   IDLE_HAPROXY=1        0 skips HAProxy (installed from Debian's packages when missing)
#   KEYS=1000000          distinct rate-limit keys
#   DRIVERS=2             python3 processes feeding keys (one TLS connection each)
#   BATCH=200             pipelined requests per write
#   KEY_REFILL=150s       one request per client per KEY_REFILL; 2 x it must exceed the feed
#   MAINTENANCE=10s       rate_limits.maintenance_interval of the keys instance
#   KEYS_TIMEOUT=1200     seconds the feed may take before it is stopped (a failure)
#   BUILD=1               0 skips `cargo build --release`
#   CARGO_TARGET_DIR=target   where the binary is (release/portcullis) and the results go
#   KEEP_WORKDIR=0        1 keeps the temporary directory
#   TMPDIR=/tmp           where the temporary directory is made
# Needs python3 with the `cryptography` package for part 2 (python3-cryptography).
#
# Time: part 1 ~ 2 x (IDLE_HOLD + 10 s); part 2 ~ feed (KEYS / request rate: about 3 minutes for 1M
# keys at ~5,500 req/s on the 2-core VM) + 2 x KEY_REFILL + MAINTENANCE: about 9 minutes.
# Results: target/memory.json (in CARGO_TARGET_DIR), the report on stdout, progress on stderr.
# The clients are benches/py/idle_client.py and benches/py/key_feeder.py; the JSON and the
# report are benches/py/memory.py. Loopback only; everything started is stopped on exit.
#
# Example: PART=idle IDLE_HOLD=3 benches/memory.sh
#          PART=keys KEYS=20000 KEY_REFILL=20s MAINTENANCE=5s benches/memory.sh
set -euo pipefail

PART=${PART:-all}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}
IDLE_HOLD=${IDLE_HOLD:-30s}
KEYS=${KEYS:-1000000}
DRIVERS=${DRIVERS:-2}
BATCH=${BATCH:-200}
MAINTENANCE=${MAINTENANCE:-10s}
KEY_REFILL=${KEY_REFILL:-150s}
KEYS_TIMEOUT=${KEYS_TIMEOUT:-1200}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
IDLE_HAPROXY=${IDLE_HAPROXY:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_traps
RESULT_JSON=$TARGET_DIR/memory.json

case $PART in idle | keys | all) ;; *) die "PART must be idle, keys or all (got '$PART')" ;; esac
want_part() { [[ $PART == all || $PART == "$1" ]]; }
secs() { local v=${1%s}; [[ $v =~ ^[0-9]+$ ]] || die "$2 must be whole seconds (got '$1')"; echo "$v"; }
IDLE_HOLD_S=$(secs "$IDLE_HOLD" IDLE_HOLD)
MAINTENANCE_S=$(secs "$MAINTENANCE" MAINTENANCE)
KEY_REFILL_S=$(secs "$KEY_REFILL" KEY_REFILL)
for v in IDLE_CONNECTIONS KEYS DRIVERS BATCH KEYS_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
require_tools python3 curl
if want_part keys && ! python3 -c 'import cryptography' 2>/dev/null; then
    die "part 2 needs python3's cryptography package (apt-get install python3-cryptography)"
fi
[[ $IDLE_HAPROXY == 0 || $IDLE_HAPROXY == 1 ]] || die "IDLE_HAPROXY must be 0 or 1 (got '$IDLE_HAPROXY')"
if want_part idle && [[ $IDLE_HAPROXY == 1 ]]; then
    # /usr/sbin is not on every user's PATH.
    find_haproxy() { command -v haproxy 2>/dev/null || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; }; }
    if ! HAPROXY=$(find_haproxy); then
        apt_install haproxy
        HAPROXY=$(find_haproxy) || die "haproxy is still not installed"
    fi
    HA_VERSION=$("$HAPROXY" -v | sed -n '1s/ - https:.*//p')
fi
if want_part idle && (($(ulimit -n) < IDLE_CONNECTIONS + 100)); then
    ulimit -n $((IDLE_CONNECTIONS + 200)) 2>/dev/null ||
        die "open-file limit $(ulimit -n) is below IDLE_CONNECTIONS + 100"
fi

ensure_binary
bench_workdir memory
write_policies
read -r P_BANK P_FULL P_FULL_ADMIN P_KEYS P_KEYS_ADMIN P_HA < <(free_ports 6)
start_mock_bank "$P_BANK"
PC_REV=$(revision)

# Reads "VmRSS VmHWM fds" of a process, in KiB/KiB/count.
proc_line() { echo "$(status_kib "$1" VmRSS) $(status_kib "$1" VmHWM) $(fd_count "$1")"; }
active_connections() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '$1 == "portcullis_connections_active" { print $2 }'
}

# --- part 1: idle keep-alive connections -----------------------------------------------------

IDLE_JSON=$WORK/results/idle.json
IDLE_HA_JSON=$WORK/results/idle-haproxy.json

# Holds IDLE_CONNECTIONS idle connections to one proxy and writes the figures to a JSON file:
# $1 name (log prefix and file names), $2 its pid, $3 its TLS port, $4 its admin port (empty:
# none, so no connections_active), $5 the JSON file.
idle_measure() {
    local name=$1 pid=$2 port=$3 admin=$4 out=$5
    local rss0 hwm0 fd0 rss1 hwm1 fd1 rss2 hwm2 fd2 active1=n/a active2=n/a t0 open_s statuses closed
    # One request first, so that the baseline includes a warm upstream pool (and audit writer).
    curl -s -o /dev/null --resolve "localhost:$port:127.0.0.1" "${CURL_MTLS[@]}" \
        "https://localhost:$port$ROUTE"
    sleep 1
    read -r rss0 hwm0 fd0 < <(proc_line "$pid")
    log "idle $name: baseline VmRSS ${rss0} KiB, VmHWM ${hwm0} KiB, ${fd0} fds; opening $IDLE_CONNECTIONS connections"

    # The client opens the connections, one GET on each, writes their answers to .ready,
    # holds them until .stop exists and writes how many the proxy closed to .stop.result.
    t0=$EPOCHREALTIME
    rm -f "$WORK/idle-$name.ready" "$WORK/idle-$name.stop" "$WORK/idle-$name.stop.result"
    start_bg "$WORK/idle-client-$name.log" python3 "$ROOT/benches/py/idle_client.py" "$port" \
        "$IDLE_CONNECTIONS" "$CERTS" "$ROUTE" "$WORK/idle-$name.ready" "$WORK/idle-$name.stop" \
        $((IDLE_HOLD_S + 300))
    local client=$STARTED_PID
    while [[ ! -s $WORK/idle-$name.ready ]]; do
        kill -0 "$client" 2>/dev/null || { cat "$WORK/idle-client-$name.log" >&2; die "the idle-connection client ($name) failed"; }
        sleep 0.2
    done
    open_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    statuses=$(cat "$WORK/idle-$name.ready")
    sleep 1
    read -r rss1 hwm1 fd1 < <(proc_line "$pid")
    [[ -n $admin ]] && active1=$(active_connections "$admin")
    log "idle $name: $IDLE_CONNECTIONS connected in ${open_s} s (answers $statuses); VmRSS ${rss1} KiB, ${fd1} fds, ${active1} active; holding ${IDLE_HOLD_S} s"
    sleep "$IDLE_HOLD_S"
    read -r rss2 hwm2 fd2 < <(proc_line "$pid")
    [[ -n $admin ]] && active2=$(active_connections "$admin")
    touch "$WORK/idle-$name.stop"
    wait "$client" || die "the idle-connection client ($name) failed (log: $WORK/idle-client-$name.log)"
    forget_pid "$client"
    closed=$(cat "$WORK/idle-$name.stop.result")
    log "idle $name: after ${IDLE_HOLD_S} s VmRSS ${rss2} KiB, VmHWM ${hwm2} KiB, ${fd2} fds, ${active2} active; $closed closed by the proxy"
    python3 "$ROOT/benches/py/memory.py" idle-json "$out" --connections "$IDLE_CONNECTIONS" \
        --answers "$statuses" --open-seconds "$open_s" --hold-seconds "$IDLE_HOLD_S" \
        --closed "$closed" --baseline "$rss0" "$hwm0" "$fd0" \
        --connected "$rss1" "$hwm1" "$fd1" "$active1" --after-hold "$rss2" "$hwm2" "$fd2" "$active2"
}

if want_part idle; then
    # Both routes in one policy file (the full config's routes).
    cat "$WORK/policies/bench.yaml" >"$WORK/policies/full.yaml"
    sed -n '/^  - id: aisp.accounts.get/,$p' "$WORK/policies/bench-fapi.yaml" >>"$WORK/policies/full.yaml"
    # Both timeouts above the hold: hyper's header_read_timeout also closes a keep-alive
    # connection that waits that long for its next request (see README, Performance). HAProxy
    # gets the same two (timeout http-request, http-keep-alive and client).
    export IDLE_TIMEOUT=$((IDLE_HOLD_S + 120))s HEADER_READ_TIMEOUT=$((IDLE_HOLD_S + 60))s
    portcullis_config "$P_FULL" "$P_FULL_ADMIN" "$(audit_file full.log)
$ISSUERS
$RATE_LIMITS" policies/full.yaml >"$WORK/full.yaml"
    start_portcullis "$WORK/full.yaml" full "$P_FULL_ADMIN"
    PID_FULL=$STARTED_PID
    idle_measure portcullis "$PID_FULL" "$P_FULL" "$P_FULL_ADMIN" "$IDLE_JSON"
    stop_started "$PID_FULL"

    if [[ $IDLE_HAPROXY == 1 ]]; then
        # The same clients against HAProxy's pass-through (benches/lib.sh, as in
        # benches/compare_haproxy.sh), in the same run, after portcullis has stopped.
        HAPROXY_MAXCONN=$((IDLE_CONNECTIONS + 100)) haproxy_passthrough_config "$P_HA" >"$WORK/haproxy.cfg"
        "$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejects $WORK/haproxy.cfg"
        start_bg "$WORK/haproxy.log" "$HAPROXY" -db -f "$WORK/haproxy.cfg"
        PID_HA=$STARTED_PID
        wait_200 "$PID_HA" "$WORK/haproxy.log" "${CURL_MTLS[@]}" "https://localhost:$P_HA$ROUTE" \
            --resolve "localhost:$P_HA:127.0.0.1"
        idle_measure haproxy "$PID_HA" "$P_HA" "" "$IDLE_HA_JSON"
        stop_started "$PID_HA"
    fi
    unset IDLE_TIMEOUT HEADER_READ_TIMEOUT
fi

# --- part 2: 1M distinct rate-limit keys ----------------------------------------------------

KEYS_JSON=$WORK/results/keys.json
if want_part keys; then
    # The route: optional client certificate, a bearer token, the `keys` class keyed on the
    # token's client_id. Burst 1, refilled after KEY_REFILL: a second request with the same
    # token is refused, a key may be dropped 2 x KEY_REFILL after its request.
    cat >"$WORK/policies/keys.yaml" <<EOF
group: keys
upstream: bank
routes:
  - id: keys.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    client_cert: optional
    auth: {profile: bearer}
    rate_limit: keys
EOF
    python3 "$ROOT/benches/py/memory.py" keygen "$WORK/keys"
    portcullis_config "$P_KEYS" "$P_KEYS_ADMIN" "$AUDIT_NONE
issuers:
  as:
    issuer: $AS_ISSUER
    audience: $AS_AUDIENCE
    algorithms: [EdDSA]
    jwks: {file: keys/jwks.json}
tokens:
  cache_entries: 0
rate_limits:
  classes:
    keys: {rate: 1, per: ${KEY_REFILL_S}s, burst: 1}
  maintenance_interval: ${MAINTENANCE_S}s" policies/keys.yaml |
        sed 's/client_auth: required/client_auth: optional/' >"$WORK/keys.yaml"
    start_portcullis "$WORK/keys.yaml" keys "$P_KEYS_ADMIN"
    PID_KEYS=$STARTED_PID

    # One key feeder: FIRST COUNT BATCH DEADLINE_S [SAME] -> one JSON line on stdout (statuses,
    # reasons of the refusals, seconds).
    feed() {
        python3 "$ROOT/benches/py/key_feeder.py" "$P_KEYS" "$CERTS" "$WORK/keys" "$AS_ISSUER" "$AS_AUDIENCE" \
            "$ROUTE" "$@"
    }
    # The keying check: two requests with one token at once (burst 1): 200 then 429.
    CHECK=$(feed 0 2 2 30 1)
    python3 "$ROOT/benches/py/memory.py" keying-check "$CHECK" ||
        die "keying check: two requests with one token should answer 200 then 429 rate_limit.client (got $CHECK)"
    log "keys: the class keys on the token's client_id (one token twice at once: $CHECK)"
    # Warm-up: a few distinct keys (held in the baseline: 2,000 of them), then the baseline.
    feed 1 2000 "$BATCH" 60 >/dev/null
    sleep 1
    read -r KRSS0 KHWM0 _ < <(proc_line "$PID_KEYS")
    log "keys: baseline VmRSS ${KRSS0} KiB, VmHWM ${KHWM0} KiB; feeding $KEYS distinct keys over $DRIVERS connection(s)"

    # The feed: DRIVERS processes, distinct id ranges (from 10^6 on, away from the warm-up's).
    per=$(((KEYS + DRIVERS - 1) / DRIVERS))
    FEED_PIDS=()
    T0=$EPOCHREALTIME
    for ((d = 0; d < DRIVERS; d++)); do
        first=$((1000000 + d * per))
        n=$((d == DRIVERS - 1 ? KEYS - d * per : per))
        start_bg "$WORK/feed-$d.json" python3 "$ROOT/benches/py/key_feeder.py" "$P_KEYS" "$CERTS" "$WORK/keys" \
            "$AS_ISSUER" "$AS_AUDIENCE" "$ROUTE" "$first" "$n" "$BATCH" "$KEYS_TIMEOUT"
        FEED_PIDS+=("$STARTED_PID")
    done
    # RSS while feeding, every 5 s.
    : >"$WORK/keys-rss.tsv"
    while :; do
        running=0
        for p in "${FEED_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
        ((running)) || break
        printf '%s\t%s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')" \
            "$(status_kib "$PID_KEYS" VmRSS)" >>"$WORK/keys-rss.tsv"
        sleep 5
    done
    for p in "${FEED_PIDS[@]}"; do
        wait "$p" || { cat "$WORK"/feed-*.json >&2; die "a key feeder failed"; }
        forget_pid "$p"
    done
    FEED_S=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    read -r KRSS1 KHWM1 _ < <(proc_line "$PID_KEYS")
    log "keys: $KEYS keys fed (done within ${FEED_S} s); VmRSS ${KRSS1} KiB, VmHWM ${KHWM1} KiB"
    # After maintenance: every 5 s until the last key is droppable (2 x KEY_REFILL after its
    # request) and one more maintenance pass has run (the drops show when retain_recent runs).
    WAIT_S=$((2 * KEY_REFILL_S + MAINTENANCE_S + 5))
    log "keys: waiting ${WAIT_S} s for every key to be idle and maintenance to drop it"
    : >"$WORK/keys-after.tsv"
    T1=$EPOCHREALTIME
    for ((i = 0; i < (WAIT_S + 4) / 5; i++)); do
        sleep 5
        printf '%s\t%s\n' "$(awk -v a="$T1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')" \
            "$(status_kib "$PID_KEYS" VmRSS)" >>"$WORK/keys-after.tsv"
    done
    read -r KRSS2 KHWM2 _ < <(proc_line "$PID_KEYS")
    KRSSANON2=$(status_kib "$PID_KEYS" RssAnon)
    log "keys: after maintenance VmRSS ${KRSS2} KiB (RssAnon ${KRSSANON2} KiB)"
    python3 "$ROOT/benches/py/memory.py" keys-json "$KEYS_JSON" "$WORK" "$DRIVERS" --keys "$KEYS" \
        --keying-check "$CHECK" --baseline "$KRSS0" "$KHWM0" --after-feed "$KRSS1" "$KHWM1" \
        --after-maintenance "$KRSS2" "$KHWM2" "$KRSSANON2" "$WAIT_S" \
        --key-refill-s "$KEY_REFILL_S" --maintenance-s "$MAINTENANCE_S"
    stop_started "$PID_KEYS"
fi

# --- report ----------------------------------------------------------------------------------

mkdir -p "$TARGET_DIR"
python3 "$ROOT/benches/py/memory.py" report "$RESULT_JSON" "$IDLE_JSON" "$KEYS_JSON" "$PC_REV" "$(nproc)" \
    --haproxy "$IDLE_HA_JSON" --haproxy-version "${HA_VERSION:-}"
