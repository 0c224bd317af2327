#!/usr/bin/env bash
# Long runs of the full FAPI pipeline: a soak and a saturation run.
#
# portcullis runs the full-FAPI config of benches/compare_haproxy.sh SCENARIO=fapi (mTLS, a
# DPoP-bound token with a fresh proof per request, scope, an object rule, a client rate-limit
# class, the audit log to a file -- rotated at 64 MiB, 4 kept, so the disk stays bounded) in
# front of the mock bank. Before any load, the route must refuse a missing proof, a replayed
# proof, an account outside the grant and a token without the scope (benches/lib.sh
# fapi_checks). The load is `portcullis loadgen --scenario` (fresh proofs, one DPoP-bound token
# per client, re-minted every three quarters of FAPI_TOKEN_LIFETIME).
#
# MODE=soak (default): measures capacity (closed loop, CONNECTIONS connections, CAPACITY_DURATION
#   after a warm-up), then runs open loop (latency from the intended send time) at SOAK_FRACTION
#   of it for SOAK_DURATION, sampling the proxy's RSS, open descriptors and threads every
#   SAMPLE_EVERY seconds (default 30). -> target/soak.json
# MODE=saturation: closed loop at full speed for DURATION (default 5m), sampling every
#   SAMPLE_EVERY seconds (default 10). -> target/saturation.json
#
# Pass (exit 0) when all of:
#   - errors: zero -- every request is valid, so any answer but 200, any transport error and
#     (open loop) any request not answered within the target timeout (10 s) of its intended
#     send time is unintended. The open loop may hold that timeout's worth of requests (rate x
#     10 s) queued or under way; one due beyond that is not sent and an error as well. A
#     request that waits in the queue is late, not lost: its latency counts from the intended
#     time, so every stall shows in the percentiles and in the timeline;
#   - RSS flat: the samples after the first SETTLE % of the run (the warm-up: the upstream
#     pool, the allocator and the DPoP replay cache settle there -- the replay cache keeps
#     proof jtis in generations of a sixteenth of its capacity and drops one whole once all of
#     its entries are past their window (dpop.max_age, 60 s, plus the clock skew), so it grows
#     for about one window and then holds that window plus at most one generation) all lie
#     within max(FLAT_PCT % of their median, FLAT_MIB MiB) of that median;
#   - no descriptor growth: the largest descriptor count after the warm-up is at most the
#     largest during it plus FD_SLACK.
# Exit 1 otherwise (the JSON says which check failed), 2 for bad knobs.
# Reported beside the checks, not judged: the machine's CPU steal (/proc/stat) over the run and
# in the worst sampling interval -- on a shared VM the hypervisor can take a large share of the
# cores for minutes, the capacity measured at the start then no longer holds, and the open loop
# falls behind for reasons outside the proxy -- and the timeline: per second of the run, the
# requests due, errors, the slowest answer, the backlog (requests queued or under way), the
# steal and the proxy's CPU, with the seconds in which more than 1,000 requests were
# outstanding (the open loop's default bound, which runs 1-11 were judged by).
#
# Knobs (environment):
#   MODE=soak             soak | saturation
#   SOAK_DURATION=30m     soak: length of the open-loop run
#   SOAK_FRACTION=0.7     soak: open-loop rate as a fraction of the measured capacity
#   CAPACITY_DURATION=10s soak: the capacity run (after WARMUP)
#   DURATION=5m           saturation: length of the closed-loop run
#   CONNECTIONS=32        load-generator connections (both modes)
#   WARMUP=5s             warm-up of every load run (not measured)
#   SAMPLE_EVERY=         seconds between samples (default 30 for soak, 10 for saturation)
#   SETTLE=50 FLAT_PCT=10 FLAT_MIB=8 FD_SLACK=8   the pass criteria above (SETTLE: percent of
#                         the samples counted as warm-up)
#   FAPI_TOKEN_LIFETIME=10m   token lifetime (re-minted at three quarters of it)
#   BUILD=1               0 skips `cargo build --release`
#   CARGO_TARGET_DIR=target   where the binary is (release/portcullis) and the results go
#   KEEP_WORKDIR=0        1 keeps the temporary directory (configs, logs, audit, raw reports)
#   TMPDIR=/tmp           where the temporary directory is made
#
# Results: target/soak.json or target/saturation.json (in CARGO_TARGET_DIR) with the run as an
# HTML page beside it (soak.html, saturation.html), the report on stdout, progress on stderr (a
# line a minute during each load run); the checks and the report are benches/py/soak.py.
#
# Time: soak ~ WARMUP + CAPACITY_DURATION + WARMUP + SOAK_DURATION (~31 minutes by default);
#       saturation ~ WARMUP + DURATION (~5 minutes). Loopback only; every run stops by itself;
#       everything started is stopped on exit.
#
# Example: SOAK_DURATION=2m SAMPLE_EVERY=10 benches/soak.sh
#          MODE=saturation DURATION=1m benches/soak.sh
set -euo pipefail

MODE=${MODE:-soak}
SOAK_DURATION=${SOAK_DURATION:-30m}
SOAK_FRACTION=${SOAK_FRACTION:-0.7}
CAPACITY_DURATION=${CAPACITY_DURATION:-10s}
DURATION=${DURATION:-5m}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-5s}
SETTLE=${SETTLE:-50}
FLAT_PCT=${FLAT_PCT:-10}
FLAT_MIB=${FLAT_MIB:-8}
FD_SLACK=${FD_SLACK:-8}
export FAPI_TOKEN_LIFETIME=${FAPI_TOKEN_LIFETIME:-10m}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_traps

usage() { printf 'error: %s\n' "$*" >&2; exit 2; }
case $MODE in
    soak) SAMPLE_EVERY=${SAMPLE_EVERY:-30} RUN_DURATION=$SOAK_DURATION RESULT_JSON=$TARGET_DIR/soak.json ;;
    saturation) SAMPLE_EVERY=${SAMPLE_EVERY:-10} RUN_DURATION=$DURATION RESULT_JSON=$TARGET_DIR/saturation.json ;;
    *) usage "MODE must be soak or saturation (got '$MODE')" ;;
esac
for v in CONNECTIONS SAMPLE_EVERY FLAT_PCT FLAT_MIB; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || usage "$v must be a positive integer (got '${!v}')"
done
[[ $FD_SLACK =~ ^[0-9]+$ ]] || usage "FD_SLACK must be a whole number (got '$FD_SLACK')"
[[ $SETTLE =~ ^[0-9]+$ && $SETTLE -le 90 ]] || usage "SETTLE must be a percentage from 0 to 90 (got '$SETTLE')"
[[ $SOAK_FRACTION =~ ^0?\.[0-9]+$|^1(\.0*)?$ ]] || usage "SOAK_FRACTION must be in (0, 1] (got '$SOAK_FRACTION')"
for v in RUN_DURATION CAPACITY_DURATION WARMUP FAPI_TOKEN_LIFETIME; do
    [[ ${!v} =~ ^[0-9]+(ms|s|m|h)$ ]] || usage "$v must be a duration such as 30s, 5m or 1h (got '${!v}')"
done
require_tools python3 curl

ensure_binary
bench_workdir "$MODE"
write_policies
read -r P_BANK P_PCF P_PCF_ADMIN < <(free_ports 3)
start_mock_bank "$P_BANK"
fapi_config "$P_PCF" "$P_PCF_ADMIN" fapi.log >"$WORK/portcullis-fapi.yaml"
start_portcullis "$WORK/portcullis-fapi.yaml" portcullis-fapi "$P_PCF_ADMIN"
PID_PCF=$STARTED_PID
RAW=$WORK/results

log "$MODE: refusal checks on the full-FAPI route (loadgen, one connection)"
fapi_checks "$P_PCF" "$RAW/fapi-checks.json"

# Prints the newest line of loadgen's progress ($1, its standard error) once a minute, named $2:
# elapsed seconds, requests, errors, the rate over the last second and the p99 so far.
report_progress() {
    local file=$1 name=$2 line
    while sleep 60; do
        line=$(tail -n 1 "$file" 2>/dev/null) || true
        [[ -n $line ]] && log "$name: ${line#loadgen }"
    done
}

# One loadgen scenario run: $1 name, $2 load block; the report in $RAW/$1.json and, as a page
# with plots, $RAW/$1.html. The exit status (1 on errors) is left to the checks below, which
# read the report. loadgen writes a progress line a second to $RAW/$1.stderr (--progress: it is
# not a terminal); a line a minute of it is printed here.
run_load() {
    fapi_scenario "$P_PCF" "$2" "$FAPI_ROUTE_LOAD" >"$WORK/$1.yaml"
    : >"$RAW/$1.stderr"
    report_progress "$RAW/$1.stderr" "$1" &
    local reporter=$!
    PIDS+=("$reporter")
    run_fg "$BIN" loadgen --scenario "$WORK/$1.yaml" --json "$RAW/$1.json" --html "$RAW/$1.html" \
        --progress >"$RAW/$1.stdout" 2>"$RAW/$1.stderr" || true
    kill "$reporter" 2>/dev/null || true
    wait "$reporter" 2>/dev/null || true
    forget_pid "$reporter"
    [[ -s $RAW/$1.json ]] || { cat "$RAW/$1.stderr" >&2; die "loadgen ($1) did not finish"; }
}

CAPACITY=""
if [[ $MODE == soak ]]; then
    log "soak: capacity, closed loop, $CONNECTIONS connections, $CAPACITY_DURATION after $WARMUP"
    run_load capacity "  mode: closed
  connections: $CONNECTIONS
  duration: $CAPACITY_DURATION
  warmup: $WARMUP"
    # The capacity (answers 200 per second), the capacity run's errors, the open-loop rate
    # (SOAK_FRACTION of the capacity) and its max_outstanding (10 s of that rate, at least 1000).
    OPEN_LOOP=$(python3 "$ROOT/benches/py/soak.py" open-loop "$RAW/capacity.json" "$SOAK_FRACTION")
    read -r CAPACITY CAPACITY_ERRORS RATE MAX_OUTSTANDING <<<"$OPEN_LOOP"
    [[ $CAPACITY_ERRORS == 0 ]] || die "the capacity run had errors (report: $RAW/capacity.json)"
    log "soak: capacity $CAPACITY req/s; open loop at $RATE req/s for $SOAK_DURATION, sampling every $SAMPLE_EVERY s"
    LOAD="  mode: open
  rate: $RATE
  max_outstanding: $MAX_OUTSTANDING
  connections: $CONNECTIONS
  duration: $SOAK_DURATION
  warmup: $WARMUP"
else
    log "saturation: closed loop, $CONNECTIONS connections, $DURATION after $WARMUP, sampling every $SAMPLE_EVERY s"
    LOAD="  mode: closed
  connections: $CONNECTIONS
  duration: $DURATION
  warmup: $WARMUP"
fi

# The run, with the sampler beside it.
SAMPLES=$WORK/samples.tsv
: >"$SAMPLES"
sample_process "$PID_PCF" "$SAMPLE_EVERY" "$SAMPLES" "$WORK/sampler.stop" &
PID_SAMPLER=$!
PIDS+=("$PID_SAMPLER")
CPU_SAMPLES=$WORK/cpu.tsv
: >"$CPU_SAMPLES"
sample_cpu "$PID_PCF" "$CPU_SAMPLES" "$WORK/sampler.stop" &
PID_CPU_SAMPLER=$!
PIDS+=("$PID_CPU_SAMPLER")
run_load "$MODE" "$LOAD"
touch "$WORK/sampler.stop"
wait "$PID_SAMPLER" "$PID_CPU_SAMPLER" || true
forget_pid "$PID_SAMPLER"
forget_pid "$PID_CPU_SAMPLER"
kill -0 "$PID_PCF" 2>/dev/null || { tail -20 "$WORK/portcullis-fapi.log" >&2; die "portcullis exited during the run"; }
# One last sample after the load.
printf 'end\t%s\t%s\t%s\t%s\t%s\n' "$(status_kib "$PID_PCF" VmRSS)" "$(status_kib "$PID_PCF" VmHWM)" \
    "$(fd_count "$PID_PCF")" "$(thread_count "$PID_PCF")" "$(steal_ms)" >>"$SAMPLES"
AUDIT_BYTES=$(cat "$WORK"/audit/fapi.log* 2>/dev/null | wc -c)
AUDIT_FILES=$(find "$WORK/audit" -name 'fapi.log*' | wc -l)

mkdir -p "$TARGET_DIR"
# The run as a page with plots (latency and throughput over time, the distribution).
cp "$RAW/$MODE.html" "${RESULT_JSON%.json}.html" 2>/dev/null || true
rc=0
python3 "$ROOT/benches/py/soak.py" report "$RAW/$MODE.json" "$SAMPLES" "$CPU_SAMPLES" \
    "$RAW/fapi-checks.json" "$RESULT_JSON" --mode "$MODE" --revision "$(revision)" --cores "$(nproc)" \
    --connections "$CONNECTIONS" --duration "$RUN_DURATION" --warmup "$WARMUP" \
    --capacity "$CAPACITY" --fraction "$SOAK_FRACTION" --token-lifetime "$FAPI_TOKEN_LIFETIME" \
    --every "$SAMPLE_EVERY" --settle "$SETTLE" --flat-pct "$FLAT_PCT" --flat-mib "$FLAT_MIB" \
    --fd-slack "$FD_SLACK" --audit-bytes "$AUDIT_BYTES" --audit-files "$AUDIT_FILES" || rc=$?
exit "$rc"
