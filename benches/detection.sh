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
# Unattended: ROUNDS=20 (or more) runs to the end by itself; a round whose load generator
# fails is tried once more, then left out and listed under `problems` (the verdict is then
# not a pass). It prints the paired ratios' median, mean and a 95 % confidence interval of the
# mean (Student's t over the rounds) and a 95 % interval of the median (the order statistics a
# binomial distribution puts around it), so the spread says how far the verdict can be trusted.
#
# With PERF=1 (and `perf` allowed to read the processes: kernel.perf_event_paranoid <= 2 for
# one's own processes), each measured run also counts the proxy's CPU instructions
# (`perf stat -e instructions -p PID`) and the report adds instructions per request on and off:
# a cost measure that the machine's other load does not blur the way it blurs throughput.
#
# Usage: BIN=target/release/portcullis bash benches/detection.sh
# Environment: CONNECTIONS (32), DURATION (10s), ROUNDS (5), WARMUP (2s), PERF (0),
# KEEP_WORKDIR (0), TMPDIR, OUT (target/detection.json). Loopback only; stops by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
PERF=${PERF:-0}

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
OUT=$(result_json detection.json)
[[ -x $BIN ]] || { echo "set BIN to a portcullis binary (cargo build --release)" >&2; exit 2; }
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
PID_OFF=$STARTED_PID
start_portcullis "$WORK/on.yaml" on "$A_ON"
PID_ON=$STARTED_PID
declare -A PORT=([off]=$P_OFF [on]=$P_ON) PID=([off]=$PID_OFF [on]=$PID_ON)
if [[ $PERF == 1 ]]; then
    require_tools perf
    # perf exits 0 with `<not supported>` where there are no hardware counters (many VMs).
    probe=$(perf stat -x, -e instructions -p "$PID_OFF" -- sleep 0.2 2>&1 >/dev/null || true)
    grep -Eq '^[0-9]+,' <<<"$probe" \
        || die "perf cannot count the proxy's instructions here: ${probe//$'\n'/ } (no hardware counters, or kernel.perf_event_paranoid)"
fi

# One run against $1 (off|on) for $2, JSON report in $3; with PERF=1 and $4, the proxy's
# instruction count during the run in $4. Returns non-zero when the load generator failed.
drive() {
    local who=$1 duration=$2 out=$3 counts=${4:-} file=$WORK/$1-$2.yaml perf_pid=""
    [[ -f $file ]] || fapi_scenario "${PORT[$1]}" "  protocol: http1
  mode: closed
  connections: $CONNECTIONS
  duration: $duration" "$FAPI_ROUTE_LOAD" >"$file"
    rm -f "$out"
    if [[ $PERF == 1 && -n $counts ]]; then
        perf stat -x, -e instructions -p "${PID[$who]}" -o "$counts" &
        perf_pid=$!
        PIDS+=("$perf_pid")
    fi
    run_fg "$BIN" loadgen --scenario "$file" --json "$out" >"$out.stdout" 2>"$out.stderr" || true
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        forget_pid "$perf_pid"
    fi
    [[ -s $out ]] || { cat "$out.stderr" >&2; log "loadgen --scenario against $who failed"; return 1; }
}

RAW=$WORK/results
mkdir -p "$RAW"
started=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    order=(off on)
    ((round % 2 == 0)) && order=(on off)
    for who in "${order[@]}"; do
        eta=""
        ((round > 1)) && eta=" (about $(((SECONDS - started) * (ROUNDS - round + 1) / (round - 1)))s left)"
        log "round $round/$ROUNDS: detection $who$eta"
        drive "$who" "$WARMUP" "$RAW/warmup.json" || true
        # Unattended: one more try, then the round is left out (and reported).
        drive "$who" "$DURATION" "$RAW/$who-$round.json" "$RAW/$who-$round.perf" \
            || drive "$who" "$DURATION" "$RAW/$who-$round.json" "$RAW/$who-$round.perf" \
            || log "round $round: detection $who left out"
    done
done

python3 - "$RAW" "$ROUNDS" "$OUT" "$PERF" <<'PY'
import json, math, os, statistics, sys
raw, rounds, out, perf = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
def flat(p):
    if not os.path.exists(p):
        return None
    s = json.load(open(p)); lat = s.get("latency", s)
    return {"rps": s["rps"], "requests": s["requests"], "p50_us": lat["p50_us"],
            "p99_us": lat["p99_us"], "errors": s.get("errors", 0)}
def instructions(p):
    # perf -x, lines: value,unit,event,...; "<not counted>" when it could not count.
    try:
        for line in open(p):
            f = line.strip().split(",")
            if len(f) > 2 and f[2].startswith("instructions") and f[0].isdigit():
                return int(f[0])
    except OSError:
        pass
    return None
# Student's t, two-sided 95 %, by degrees of freedom (beyond 30: the normal's 1.96 is close).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
def mean_ci(xs):
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    t = T95[len(xs) - 2] if len(xs) - 2 < len(T95) else 1.96
    h = t * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, (m - h, m + h)
def median_ci(xs):
    # The order statistics (j, k) around the median with P(j <= B < k) >= 0.95, B ~ Bin(n, 1/2).
    n = len(xs)
    s = sorted(xs)
    pmf = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    best = None
    for j in range(0, n // 2 + 1):
        k = n - j
        if sum(pmf[j:k]) >= 0.95:
            best = (j, k)
    if best is None or best[0] == 0 and n < 6:
        return None
    j, k = best
    return (s[j], s[k - 1]) if j < k else None
runs = {w: [flat(f"{raw}/{w}-{r}.json") for r in range(1, rounds + 1)] for w in ["off", "on"]}
bad = [f"{w} round {i}: {r['errors']} errors" for w, rs in runs.items()
       for i, r in enumerate(rs, 1) if r and r["errors"]]
bad += [f"{w} round {i}: left out (the load generator failed twice)"
        for w, rs in runs.items() for i, r in enumerate(rs, 1) if r is None]
pairs = [(o, n) for o, n in zip(runs["off"], runs["on"]) if o and n]
if not pairs:
    print("error: no round completed", file=sys.stderr)
    sys.exit(1)
ratios = [n["rps"] / o["rps"] for o, n in pairs]
med = {w: {k: statistics.median(r[k] for r in rs if r) for k in ["rps", "p50_us", "p99_us"]}
       for w, rs in runs.items()}
ratio = statistics.median(ratios)
mean, ci = mean_ci(ratios)
mci = median_ci(ratios)
fmt = lambda c: f"[{c[0]:.3f}, {c[1]:.3f}]" if c else "(too few rounds)"
print(f"fapi  off {med['off']['rps']:.0f} req/s  on {med['on']['rps']:.0f} req/s  "
      f"({len(pairs)} paired rounds)")
print(f"on/off throughput: median {ratio:.3f} (95 % interval {fmt(mci)}), mean {mean:.3f} "
      f"(95 % CI {fmt(ci)}); target >= 0.97")
print(f"paired {['%.3f' % r for r in ratios]}")
result = {"median": med, "paired_ratios": ratios, "ratio_on_over_off": ratio,
          "ratio_median_ci95": mci, "ratio_mean": mean, "ratio_mean_ci95": ci,
          "rounds_paired": len(pairs), "target": 0.97, "problems": bad}
if perf:
    ipr = {}
    for w in ["off", "on"]:
        per = []
        for i, r in enumerate(runs[w], 1):
            n = instructions(f"{raw}/{w}-{i}.perf")
            # The count covers the whole run, warm-up of the load generator included; the
            # report's requests are the measured ones: a small overestimate, the same on and off.
            if r and n:
                per.append(n / max(r["requests"], 1))
        ipr[w] = per
    if ipr["off"] and ipr["on"]:
        off_m, on_m = statistics.median(ipr["off"]), statistics.median(ipr["on"])
        print(f"instructions per request (proxy, median over rounds): off {off_m:,.0f}  "
              f"on {on_m:,.0f}  on/off {on_m / off_m:.3f}")
        result["instructions_per_request"] = {"off": ipr["off"], "on": ipr["on"],
                                              "median_off": off_m, "median_on": on_m,
                                              "on_over_off": on_m / off_m}
    else:
        bad.append("perf counted no instructions")
json.dump(result, open(out, "w"), indent=2)
for b in bad:
    print("error:", b, file=sys.stderr)
sys.exit(1 if bad or ratio < 0.97 else 0)
PY
