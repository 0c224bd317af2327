"""Summarizes benches/compare_builds.sh: reads RAW/{old,new}-{path}-{round}.json (loadgen
reports, flag mode or scenario), prints per path the median throughput and latency of each
build and the median over rounds of the paired ratio new / old, and writes them as JSON.

Usage: compare_builds.py RAW ROUNDS OLD_BIN NEW_BIN OUT_JSON
Exits 1 when a run had errors (a build that refuses or fails requests is not measured)."""

import json
import statistics
import sys


def flat(path):
    s = json.load(open(path))
    lat = s.get("latency", s)
    errors = s.get("errors", 0)
    return {"rps": s["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
            "errors": errors, "statuses": s.get("statuses", {})}


def main(raw, rounds, old_bin, new_bin, out):
    rounds = int(rounds)
    result = {"old": old_bin, "new": new_bin, "rounds": rounds, "paths": {}}
    bad = []
    print(f"{'path':<12} {'old req/s':>10} {'new req/s':>10} {'new/old':>8} "
          f"{'old p50/p99 ms':>16} {'new p50/p99 ms':>16}")
    for path in ["passthrough", "token", "fapi"]:
        runs = {b: [flat(f"{raw}/{b}-{path}-{r}.json") for r in range(1, rounds + 1)]
                for b in ["old", "new"]}
        for b, rs in runs.items():
            for i, r in enumerate(rs, 1):
                if r["errors"]:
                    bad.append(f"{b} {path} round {i}: {r['errors']} errors {r['statuses']}")
        ratios = [n["rps"] / o["rps"] for o, n in zip(runs["old"], runs["new"])]
        med = {b: {k: statistics.median(r[k] for r in rs) for k in ["rps", "p50_us", "p99_us"]}
               for b, rs in runs.items()}
        ratio = statistics.median(ratios)
        result["paths"][path] = {"median": med, "paired_ratios": ratios,
                                 "ratio_new_over_old": ratio}
        o, n = med["old"], med["new"]
        print(f"{path:<12} {o['rps']:>10.0f} {n['rps']:>10.0f} {ratio:>8.3f} "
              f"{o['p50_us'] / 1000:>7.2f}/{o['p99_us'] / 1000:<8.2f} "
              f"{n['p50_us'] / 1000:>7.2f}/{n['p99_us'] / 1000:<8.2f}")
    result["problems"] = bad
    json.dump(result, open(out, "w"), indent=2)
    for b in bad:
        print("error:", b, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(*sys.argv[1:])
