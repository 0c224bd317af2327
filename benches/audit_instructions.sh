#!/usr/bin/env bash
# What auditing costs the whole proxy, in CPU instructions per request: `perf stat -e
# instructions` on the portcullis process over one fixed `portcullis loadgen` run (mTLS
# pass-through to the mock bank, HTTP/1.1 keep-alive), once per audit mode:
#   off            audit.sink: none
#   inline         audit to a file, connection facts in every request record
#                  (audit.connection_records: false, the format before connection records)
#   by_reference   audit to a file, one connection record per connection per file (default)
# Instructions count the work done, whatever else runs on the machine; requests/s on a shared
# box is noise. Where the machine exposes no hardware counter (many VMs: perf says `<not
# supported>`), the CPU time of the process (`task-clock`) per request is used instead: noisier
# (it grows with cache and scheduler contention) but still per request, not per second. Prints
# the cost per request per mode, the audit's share over `off`, and the audit file's bytes per
# request.
#
#   benches/audit_instructions.sh            (BIN=target/release/portcullis by default)
#   ROUNDS=3 CONNECTIONS=50 DURATION=8s benches/audit_instructions.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-3}
# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
[[ -x $BIN ]] || die "no binary at $BIN (cargo build --release)"
bench_traps
require_tools curl python3 perf
bench_workdir audit-instr
write_policies
# One port for the bank, then a proxy and admin port per mode and round.
read -r -a P < <(free_ports $((1 + 6 * ROUNDS)); echo)
start_mock_bank "${P[0]}"
NEXT_PORT=1

audit_block() {
    case $1 in
        off) printf '%s\n' "$AUDIT_NONE" ;;
        inline) printf 'audit:\n  sink: file\n  path: audit/%s.log\n  connection_records: false\n' "$2" ;;
        by_reference) printf 'audit:\n  sink: file\n  path: audit/%s.log\n' "$2" ;;
    esac
}

run_mode() {
    local mode=$1 round=$2 p a pid out
    p=${P[NEXT_PORT]}
    a=${P[NEXT_PORT + 1]}
    NEXT_PORT=$((NEXT_PORT + 2))
    portcullis_config "$p" "$a" "$(audit_block "$mode" "$mode-$round")" >"$WORK/$mode.yaml"
    rm -f "$WORK/audit/$mode-$round.log"
    start_portcullis "$WORK/$mode.yaml" "$mode" "$a"
    pid=$STARTED_PID
    local lg=("$BIN" loadgen --addr "127.0.0.1:$p" --server-name localhost --path "$ROUTE"
        --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key"
        --connections "$CONNECTIONS" --quiet)
    "${lg[@]}" --duration 2s --json "$WORK/warm.json" >/dev/null 2>&1
    local before=0
    [[ -f $WORK/audit/$mode-$round.log ]] && before=$(stat -c %s "$WORK/audit/$mode-$round.log")
    out=$WORK/$mode-$round
    perf stat -x, -e instructions,task-clock -p "$pid" -o "$out.perf" &
    local perf_pid=$!
    sleep 0.2
    "${lg[@]}" --duration "$DURATION" --json "$out.json" >/dev/null 2>&1
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    sleep 0.3
    local after=0
    [[ -f $WORK/audit/$mode-$round.log ]] && after=$(stat -c %s "$WORK/audit/$mode-$round.log")
    stop_started "$pid"
    python3 - "$out.perf" "$out.json" "$mode" "$round" "$((after - before))" <<'EOF'
import json, sys
perf, report, mode, rnd, audit_bytes = sys.argv[1:]
lines = open(perf).read().splitlines()
def counter(name):
    for l in lines:
        f = l.split(",")
        if len(f) > 2 and f[2] == name:
            try:
                return float(f[0])
            except ValueError:
                return None
r = json.load(open(report))
n = r["total"]["requests"] if "total" in r else r["requests"]
instr, clock_ms = counter("instructions"), counter("task-clock")
unit, value = ("instructions", instr) if instr else ("cpu_ns", clock_ms * 1e6)
print(f"{mode}\t{rnd}\t{n}\t{unit}\t{value / n:.0f}\t{int(audit_bytes) / n:.1f}")
EOF
}

printf 'mode\tround\trequests\tunit\tper request\taudit bytes/request\n'
for round in $(seq "$ROUNDS"); do
    for mode in off inline by_reference; do
        run_mode "$mode" "$round"
    done
done | tee "$WORK/results.tsv"
python3 - "$WORK/results.tsv" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
per = {}
unit = rows[0][3]
for mode, _, n, u, ipr, b in rows:
    per.setdefault(mode, []).append(float(ipr))
med = {m: statistics.median(v) for m, v in per.items()}
for m in ("inline", "by_reference"):
    print(f"median {m}: {med[m]:.0f} {unit}/request, audit +{(med[m] / med['off'] - 1) * 100:.2f} % over off ({med['off']:.0f})")
EOF
