#!/usr/bin/env bash
# The cost of an endpoint set: mTLS pass-through through one portcullis to an upstream of three
# endpoints (three `portcullis mock-bank` processes: two choices, breakers, outlier detection,
# retry bookkeeping on every request) against the same through another portcullis to a
# single-endpoint upstream (one of the three banks). Paired rounds, the order reversed every
# other round; the verdict is set ÷ single of req/s, the median and mean of the per-round ratios
# with a 95 % bootstrap interval. Target: ≥ 0.98.
#
# Usage: bash benches/compare_endpoints.sh
# Environment: CONNECTIONS (32), DURATION (5s), ROUNDS (10), WARMUP (1s), KEEP_WORKDIR (0),
# BUILD (0: use the existing release binary), PORTCULLIS (another binary, e.g. a debug build, to
# show the script works; its numbers mean nothing), TMPDIR. The summary is printed and written as
# JSON to $OUT (default: compare_endpoints.json in the current directory). Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-1s}
OUT=${OUT:-compare_endpoints.json}

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
if [[ -n ${PORTCULLIS:-} ]]; then
    BIN=$PORTCULLIS
    [[ -x $BIN ]] || die "no binary at $BIN"
else
    ensure_binary
fi
bench_traps
require_tools curl python3
bench_workdir endpoints
write_policies

read -r -a P < <(free_ports 7; echo)
B1=${P[0]} B2=${P[1]} B3=${P[2]}
P_SINGLE=${P[3]} A_SINGLE=${P[4]} P_SET=${P[5]} A_SET=${P[6]}
for b in "$B3" "$B2" "$B1"; do
    start_mock_bank "$b"
done
# start_mock_bank leaves P_BANK at the last one started: the single upstream is bank 1.
portcullis_config "$P_SINGLE" "$A_SINGLE" "" >"$WORK/single.yaml"
portcullis_config "$P_SET" "$A_SET" "" |
    sed "s|^    url: http://127.0.0.1:$B1\$|    endpoints: [http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3]|" \
        >"$WORK/set.yaml"
grep -q "endpoints: \[" "$WORK/set.yaml" || die "the set config has no endpoints line"
start_portcullis "$WORK/single.yaml" single "$A_SINGLE"
start_portcullis "$WORK/set.yaml" set "$A_SET"

declare -A PORT=([single]=$P_SINGLE [set]=$P_SET)

# One run against $1 (single|set) for $2, JSON report in $3.
drive() {
    run_fg "$BIN" loadgen --addr "127.0.0.1:${PORT[$1]}" --server-name localhost --path "$ROUTE" \
        --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
        --connections "$CONNECTIONS" --duration "$2" --json \
        >"$3" 2>"$3.stderr" || { cat "$3.stderr" >&2; die "loadgen against $1 failed"; }
}

RAW=$WORK/results
for ((round = 1; round <= ROUNDS; round++)); do
    order=(single set)
    ((round % 2 == 0)) && order=(set single)
    for who in "${order[@]}"; do
        log "round $round/$ROUNDS: $who"
        drive "$who" "$WARMUP" "$RAW/warmup.json"
        drive "$who" "$DURATION" "$RAW/$who-$round.json"
    done
done

python3 - "$RAW" "$ROUNDS" "$OUT" <<'PY'
import json, random, statistics, sys

raw, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(who, r):
    s = json.load(open(f"{raw}/{who}-{r}.json"))
    lat = s.get("latency", s)
    return {"rps": s["rps"], "p99_us": lat["p99_us"], "errors": s.get("errors", 0)}
runs = {w: [load(w, r) for r in range(1, rounds + 1)] for w in ["single", "set"]}
ratios = [b["rps"] / a["rps"] for a, b in zip(runs["single"], runs["set"])]
random.seed(1)
means = sorted(statistics.mean(random.choices(ratios, k=len(ratios))) for _ in range(2000))
lo, hi = means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]
med = {w: statistics.median(r["rps"] for r in rs) for w, rs in runs.items()}
p99 = {w: statistics.median(r["p99_us"] for r in rs) for w, rs in runs.items()}
errors = {w: sum(r["errors"] for r in rs) for w, rs in runs.items()}
result = {"rounds": rounds, "median_rps": med, "median_p99_us": p99, "errors": errors,
          "paired_ratios": ratios, "median_ratio": statistics.median(ratios),
          "mean_ratio": statistics.mean(ratios), "interval_95": [lo, hi], "target": 0.98}
json.dump(result, open(out, "w"), indent=2)
print(f"single endpoint {med['single']:>10.0f} req/s  p99 {p99['single']:>7.0f} µs  errors {errors['single']}")
print(f"three endpoints {med['set']:>10.0f} req/s  p99 {p99['set']:>7.0f} µs  errors {errors['set']}")
print(f"set ÷ single: median {result['median_ratio']:.3f}, mean {result['mean_ratio']:.3f} "
      f"(95 % {lo:.3f}-{hi:.3f}) over {rounds} rounds; target ≥ 0.98")
PY
