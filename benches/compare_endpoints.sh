#!/usr/bin/env bash
# The cost of an endpoint set: mTLS pass-through through one portcullis to an upstream of three
# endpoints (two choices, breakers, outlier detection, retry bookkeeping on every request)
# against the same through another portcullis to a single-endpoint upstream. Paired rounds, the
# order reversed every other round; the verdict is set ÷ single of req/s, the median and mean of
# the per-round ratios with a 95 % bootstrap interval. Target: ≥ 0.98. Each run also reports the
# proxy's CPU time per request (user + system from /proc, over the run's request count): on a
# shared machine throughput is noise, CPU per request much less so.
#
# The banks (BANKS): `one` (default) is one `portcullis mock-bank` process listening on
# 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same port); the single upstream is 127.0.0.1, the set is
# all three. The question is what the proxy's endpoint set costs, not how the kernel schedules
# three bank processes against two proxies and the load generator on a few cores: with three
# processes (`BANKS=three`, the old default) the set's run pays for a third bank process's
# scheduling and cache misses that the single run does not, which measured 0.888 where one
# process gave 0.935 on the same build.
#
# AA=1 gives the "set" side the single endpoint's config too (an A/A run): what the bench reads
# when nothing differs, and how far its rounds spread on this machine.
#
# Usage: bash benches/compare_endpoints.sh
# Environment: AA (0), CONNECTIONS (32), DURATION (5s), ROUNDS (30), WARMUP (1s), BANKS (one | three),
# KEEP_WORKDIR (0), BUILD (0: use the existing release binary), PORTCULLIS (another binary, e.g.
# a debug build, to show the script works; its numbers mean nothing), PROXY (the binary run as
# the two proxies, default the same: compare builds with the same banks and load generator),
# TMPDIR. The summary is printed and written as JSON to $OUT (default:
# target/compare_endpoints.json). Loopback only; runs unattended (30 rounds of 2 × (1 s + 5 s) ≈ 6 min).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-30}
BANKS=${BANKS:-one}
WARMUP=${WARMUP:-1s}

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
OUT=$(result_json compare_endpoints.json)
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
P_SINGLE=${P[3]} A_SINGLE=${P[4]} P_SET=${P[5]} A_SET=${P[6]}
case $BANKS in
one)
    B1=${P[0]}
    start_bg "$WORK/mock-bank.log" "$BIN" mock-bank --listen "127.0.0.1:$B1" \
        --listen "127.0.0.2:$B1" --listen "127.0.0.3:$B1"
    for h in 127.0.0.1 127.0.0.2 127.0.0.3; do
        wait_200 "$STARTED_PID" "$WORK/mock-bank.log" "http://$h:$B1$ROUTE"
    done
    P_BANK=$B1
    SET="http://127.0.0.1:$B1, http://127.0.0.2:$B1, http://127.0.0.3:$B1"
    ;;
three)
    B1=${P[0]} B2=${P[1]} B3=${P[2]}
    for b in "$B3" "$B2" "$B1"; do
        start_mock_bank "$b"
    done
    # start_mock_bank leaves P_BANK at the last one started: the single upstream is bank 1.
    SET="http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3"
    ;;
*) die "BANKS is one or three, not $BANKS" ;;
esac
portcullis_config "$P_SINGLE" "$A_SINGLE" "" >"$WORK/single.yaml"
if [[ ${AA:-0} == 1 ]]; then
    portcullis_config "$P_SET" "$A_SET" "" >"$WORK/set.yaml"
else
    portcullis_config "$P_SET" "$A_SET" "" |
        sed "s|^    url: http://127.0.0.1:$B1\$|    endpoints: [$SET]|" >"$WORK/set.yaml"
    grep -q "endpoints: \[" "$WORK/set.yaml" || die "the set config has no endpoints line"
fi
BANK_BIN=$BIN
BIN=${PROXY:-$BIN}
[[ -x $BIN ]] || die "no binary at $BIN"
start_portcullis "$WORK/single.yaml" single "$A_SINGLE"
PID_SINGLE=$STARTED_PID
start_portcullis "$WORK/set.yaml" set "$A_SET"
PID_SET=$STARTED_PID
BIN=$BANK_BIN

declare -A PORT=([single]=$P_SINGLE [set]=$P_SET)
declare -A PID=([single]=$PID_SINGLE [set]=$PID_SET)

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
        before=$(cpu_ticks "${PID[$who]}")
        drive "$who" "$DURATION" "$RAW/$who-$round.json"
        echo $(($(cpu_ticks "${PID[$who]}") - before)) >"$RAW/$who-$round.ticks"
    done
done
# The upstream connections each proxy's pools hold after the load (the load generator's are
# closed by now): a set's pools each grow to their own peak.
for who in single set; do
    if command -v ss >/dev/null; then
        ss -tnpH state established | grep -c "pid=${PID[$who]}," >"$RAW/$who.connections" || true
    fi
done

python3 - "$RAW" "$ROUNDS" "$OUT" <<'PY'
import json, random, statistics, sys

raw, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
HZ = 100  # USER_HZ: /proc/PID/stat counts CPU time in 1/100 s
def load(who, r):
    s = json.load(open(f"{raw}/{who}-{r}.json"))
    lat = s.get("latency", s)
    n = s.get("requests") or s.get("total", {}).get("requests") or 1
    ticks = int(open(f"{raw}/{who}-{r}.ticks").read())
    return {"rps": s["rps"], "p99_us": lat["p99_us"], "errors": s.get("errors", 0),
            "cpu_us_per_request": ticks * 1e6 / HZ / n}
runs = {w: [load(w, r) for r in range(1, rounds + 1)] for w in ["single", "set"]}
ratios = [b["rps"] / a["rps"] for a, b in zip(runs["single"], runs["set"])]
random.seed(1)
means = sorted(statistics.mean(random.choices(ratios, k=len(ratios))) for _ in range(2000))
lo, hi = means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]
med = {w: statistics.median(r["rps"] for r in rs) for w, rs in runs.items()}
p99 = {w: statistics.median(r["p99_us"] for r in rs) for w, rs in runs.items()}
errors = {w: sum(r["errors"] for r in rs) for w, rs in runs.items()}
cpu = {w: statistics.median(r["cpu_us_per_request"] for r in rs) for w, rs in runs.items()}
cpu_ratios = [b["cpu_us_per_request"] / a["cpu_us_per_request"]
              for a, b in zip(runs["single"], runs["set"])]
result = {"rounds": rounds, "median_rps": med, "median_p99_us": p99, "errors": errors,
          "paired_ratios": ratios, "median_ratio": statistics.median(ratios),
          "mean_ratio": statistics.mean(ratios), "interval_95": [lo, hi], "target": 0.98,
          "median_cpu_us_per_request": cpu, "cpu_ratios": cpu_ratios,
          "median_cpu_ratio": statistics.median(cpu_ratios)}
try:
    result["upstream_connections"] = {w: int(open(f"{raw}/{w}.connections").read())
                                      for w in ["single", "set"]}
except (OSError, ValueError):
    pass
json.dump(result, open(out, "w"), indent=2)
print(f"single endpoint {med['single']:>10.0f} req/s  p99 {p99['single']:>7.0f} µs  errors {errors['single']}")
print(f"three endpoints {med['set']:>10.0f} req/s  p99 {p99['set']:>7.0f} µs  errors {errors['set']}")
if "upstream_connections" in result:
    c = result["upstream_connections"]
    print(f"upstream connections held after the load: single {c['single']}, set {c['set']}")
print(f"proxy CPU per request: single {cpu['single']:.1f} µs, set {cpu['set']:.1f} µs, "
      f"set ÷ single median {result['median_cpu_ratio']:.3f}")
print(f"set ÷ single: median {result['median_ratio']:.3f}, mean {result['mean_ratio']:.3f} "
      f"(95 % {lo:.3f}-{hi:.3f}) over {rounds} rounds; target ≥ 0.98")
PY
