#!/usr/bin/env bash
# Behavioural detection on against off on the full FAPI route (mTLS, a DPoP-bound token with a
# fresh proof per request, scope, an object rule, a rate-limit class, the audit log to a file;
# policies/bench-fapi.yaml driven by the loadgen's FAPI scenario): one binary, two instances
# side by side against one mock bank, identical but for `detection:` (the shipped defaults, all
# four detectors on, quarantine on for enumeration). Rounds alternate the order (off, on /
# on, off) so a drift of the machine's speed within a round favours neither; the verdict is the
# median over rounds of the paired ratio on ÷ off for throughput. Target: ≥ 0.97.
#
# The load is what the bench's FAPI route answers 200 to: the detectors' cost on a request they
# do not count (the common case). FAPI_ROUTE_LOAD (lib.sh) may be set to a routes block that
# mixes in refusals, to measure the counted path too.
#
# Usage: BIN=target/release/portcullis bash benches/detection.sh
# Environment: CONNECTIONS (32), DURATION (10s), ROUNDS (5), WARMUP (2s), KEEP_WORKDIR (0),
# TMPDIR, OUT (detection.json). Loopback only; stops by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
OUT=${OUT:-detection.json}
BIN=${BIN:-$ROOT/target/release/portcullis}
[[ -x $BIN ]] || { echo "set BIN to a portcullis binary (cargo build --release)" >&2; exit 2; }

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
bench_traps
require_tools curl python3
bench_workdir detection
write_policies

read -r -a P < <(free_ports 5; echo)
P_BANK=${P[0]} P_OFF=${P[1]} A_OFF=${P[2]} P_ON=${P[3]} A_ON=${P[4]}
start_mock_bank "$P_BANK"

DETECTION='detection:
  enumeration: {action: quarantine}
  probing: {}
  credential_abuse: {}
  replay: {}'

fapi_config "$P_OFF" "$A_OFF" off.log >"$WORK/off.yaml"
{ fapi_config "$P_ON" "$A_ON" on.log; echo "$DETECTION"; } >"$WORK/on.yaml"
start_portcullis "$WORK/off.yaml" off "$A_OFF"
start_portcullis "$WORK/on.yaml" on "$A_ON"
declare -A PORT=([off]=$P_OFF [on]=$P_ON)

# One run against $1 (off|on) for $2, JSON report in $3.
drive() {
    local who=$1 duration=$2 out=$3 file=$WORK/$1-$2.yaml
    [[ -f $file ]] || fapi_scenario "${PORT[$1]}" "  protocol: http1
  mode: closed
  connections: $CONNECTIONS
  duration: $duration" "$FAPI_ROUTE_LOAD" >"$file"
    run_fg "$BIN" loadgen --scenario "$file" --json "$out" >"$out.stdout" 2>"$out.stderr" || true
    [[ -s $out ]] || { cat "$out.stderr" >&2; die "loadgen --scenario against $who failed"; }
}

RAW=$WORK/results
mkdir -p "$RAW"
for ((round = 1; round <= ROUNDS; round++)); do
    order=(off on)
    ((round % 2 == 0)) && order=(on off)
    for who in "${order[@]}"; do
        log "round $round/$ROUNDS: detection $who"
        drive "$who" "$WARMUP" "$RAW/warmup.json"
        drive "$who" "$DURATION" "$RAW/$who-$round.json"
    done
done

python3 - "$RAW" "$ROUNDS" "$OUT" <<'PY'
import json, statistics, sys
raw, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def flat(p):
    s = json.load(open(p)); lat = s.get("latency", s)
    return {"rps": s["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
            "errors": s.get("errors", 0)}
runs = {w: [flat(f"{raw}/{w}-{r}.json") for r in range(1, rounds + 1)] for w in ["off", "on"]}
bad = [f"{w} round {i}: {r['errors']} errors" for w, rs in runs.items()
       for i, r in enumerate(rs, 1) if r["errors"]]
ratios = [n["rps"] / o["rps"] for o, n in zip(runs["off"], runs["on"])]
med = {w: {k: statistics.median(r[k] for r in rs) for k in ["rps", "p50_us", "p99_us"]}
       for w, rs in runs.items()}
ratio = statistics.median(ratios)
print(f"fapi  off {med['off']['rps']:.0f} req/s  on {med['on']['rps']:.0f} req/s  "
      f"on/off {ratio:.3f} (target >= 0.97)  paired {['%.3f' % r for r in ratios]}")
json.dump({"median": med, "paired_ratios": ratios, "ratio_on_over_off": ratio,
           "target": 0.97, "problems": bad}, open(out, "w"), indent=2)
for b in bad:
    print("error:", b, file=sys.stderr)
sys.exit(1 if bad or ratio < 0.97 else 0)
PY
