"""The checks and the report of benches/soak.sh (python3, standard library only).

  soak.py open-loop CAPACITY_REPORT FRACTION
      reads the capacity run's loadgen report and prints, on one line: the capacity (answers
      200 per second, to 0.1), the run's errors, the open-loop rate (FRACTION of the capacity,
      at least 1) and max_outstanding for it (10 s of that rate, at least 1000).
  soak.py report REPORT SAMPLES CPU_SAMPLES CHECKS OUT --mode soak|saturation ... (see --help)
      judges the run: REPORT is the loadgen scenario report, SAMPLES the proxy's samples
      (benches/lib.sh sample_process: TSV seconds, VmRSS KiB, VmHWM KiB, fds, threads, steal
      ms; a last line "end" after the load), CPU_SAMPLES the per-second CPU samples
      (benches/lib.sh sample_cpu: TSV unix time, steal ms, proxy CPU ms) and CHECKS the
      refusal checks' report. Writes everything to OUT (target/soak.json or
      target/saturation.json), prints the report; exit 0 if the run passed, 1 if not.
"""
import argparse
import bisect
import json
import math
import statistics
import sys


def num(s):
    """A number as the shell has it: an int if it is one, else a float."""
    try:
        return int(s)
    except ValueError:
        return float(s)


def open_loop(a):
    r = json.load(open(a.capacity_report))
    capacity = round(r["ok_rps"], 1)
    rate = max(1.0, round(capacity * num(a.fraction), 1))
    print(capacity, r["errors"], rate, max(1000, math.ceil(rate * 10)))


def report(a):
    report_p, samples_p, cpu_p, checks_p, out = a.report, a.samples, a.cpu_samples, a.checks, a.out
    r = json.load(open(report_p))
    rows = [l.rstrip("\n").split("\t") for l in open(samples_p) if l.strip()]
    samples = [{"t_s": float(t), "vmrss_kib": int(rss), "vmhwm_kib": int(hwm), "fds": int(fd),
                "threads": int(th), "steal_ms": int(st)} for t, rss, hwm, fd, th, st in rows if t != "end"]
    after = [{"vmrss_kib": int(rss), "vmhwm_kib": int(hwm), "fds": int(fd), "threads": int(th)}
             for t, rss, hwm, fd, th, st in rows if t == "end"]
    # CPU steal: time the hypervisor ran other guests instead of this machine's cores, as a share
    # of the cores' time -- a run on a contended VM loses that much capacity while it lasts, so a
    # failure next to a high steal share says more about the machine than about the proxy.
    cores = a.cores
    steal = None
    if len(samples) >= 2:
        spans = [(b["t_s"] - a["t_s"], b["steal_ms"] - a["steal_ms"]) for a, b in zip(samples, samples[1:])]
        total_s = samples[-1]["t_s"] - samples[0]["t_s"]
        steal = {"definition": "CPU steal (/proc/stat) as a share of all cores' time between samples",
                 "run_pct": round(100 * (samples[-1]["steal_ms"] - samples[0]["steal_ms"])
                                  / (max(total_s, 1e-9) * 1000 * cores), 1),
                 "max_interval_pct": round(max(100 * st / (max(dt, 1e-9) * 1000 * cores)
                                               for dt, st in spans), 1)}
    mode, settle, flat_pct, flat_mib, fd_slack = a.mode, a.settle, a.flat_pct, a.flat_mib, a.fd_slack
    # The timeline: the load generator's seconds (from the end of its warm-up) beside the steal and
    # the proxy's CPU sampled every second, matched by wall-clock time.
    cpu = [tuple(float(x) for x in l.split("\t")) for l in open(cpu_p) if l.count("\t") == 2]
    cpu_t = [c[0] for c in cpu]
    def cpu_share(t0, t1):
        """Steal (% of all cores) and proxy CPU (% of one core) between unix times t0 and t1."""
        i, j = bisect.bisect_left(cpu_t, t0), bisect.bisect_right(cpu_t, t1) - 1
        i, j = max(i - 1, 0), min(j + 1, len(cpu) - 1)
        if j <= i:
            return None, None
        dt = (cpu[j][0] - cpu[i][0]) * 1000
        return (round(100 * (cpu[j][1] - cpu[i][1]) / (dt * cores), 1),
                round(100 * (cpu[j][2] - cpu[i][2]) / dt, 1))
    BOUND = 1000
    timeline = []
    for k, tk in enumerate(r.get("timeline", [])):
        st, pc = cpu_share(r["started_unix_s"] + k, r["started_unix_s"] + k + 1)
        timeline.append({"t_s": k, **tk, "steal_pct": st, "proxy_cpu_pct": pc})
    over = [s for s in timeline if s["backlog"] > BOUND]
    rest = [s for s in timeline if s["backlog"] <= BOUND]
    longest = run_len = 0
    for s in timeline:
        run_len = run_len + 1 if s["backlog"] > BOUND else 0
        longest = max(longest, run_len)
    mean = lambda xs: round(statistics.mean(xs), 1) if xs else None
    tl = None
    if timeline:
        tl = {"seconds": len(timeline),
              "seconds_with_errors": sum(1 for s in timeline if s["errors"]),
              "max_backlog": max(s["backlog"] for s in timeline),
              "seconds_over_bound": len(over), "bound": BOUND, "longest_over_bound_s": longest,
              "requests_due_over_bound": sum(s["requests"] for s in over),
              "steal_pct_over_bound": mean([s["steal_pct"] for s in over if s["steal_pct"] is not None]),
              "steal_pct_other": mean([s["steal_pct"] for s in rest if s["steal_pct"] is not None]),
              "proxy_cpu_pct_over_bound": mean([s["proxy_cpu_pct"] for s in over if s["proxy_cpu_pct"] is not None]),
              "proxy_cpu_pct_other": mean([s["proxy_cpu_pct"] for s in rest if s["proxy_cpu_pct"] is not None])}
    failures = []
    if r["errors"] or not r["ok"]:
        failures.append(f"errors: {r['errors']} ({r['errors_by_reason']}), {r['ok']} answered 200")
    cut = min(len(samples) - 1, max(1, len(samples) * settle // 100)) if samples else 0
    first, second = samples[:cut], samples[cut:]
    flat = fd_ok = None
    if len(samples) < 4:
        failures.append(f"only {len(samples)} samples: too short a run for the memory checks")
    else:
        rss2 = [s["vmrss_kib"] for s in second]
        m = statistics.median(rss2)
        tol = max(m * flat_pct / 100, flat_mib * 1024)
        worst = max(abs(x - m) for x in rss2)
        # Least-squares slope after the warm-up, for information (MiB per hour).
        ts = [s["t_s"] for s in second]
        tm = statistics.mean(ts)
        den = sum((t - tm) ** 2 for t in ts) or 1
        slope = sum((t - tm) * (x - statistics.mean(rss2)) for t, x in zip(ts, rss2)) / den
        flat = {"definition": f"samples after the first {settle}% within max({flat_pct}% of "
                              f"their median, {flat_mib} MiB) of it",
                "median_after_warmup_kib": m, "tolerance_kib": round(tol), "worst_deviation_kib": worst,
                "slope_mib_per_hour": round(slope * 3600 / 1024, 1), "met": worst <= tol}
        if not flat["met"]:
            failures.append(f"RSS not flat: a sample after the warm-up {worst} KiB from the median {m} KiB "
                            f"(tolerance {round(tol)} KiB)")
        fd1, fd2 = max(s["fds"] for s in first), max(s["fds"] for s in second)
        fd_ok = {"definition": f"max fds after the warm-up <= max during it + {fd_slack}",
                 "warmup_max": fd1, "after_warmup_max": fd2, "met": fd2 <= fd1 + fd_slack}
        if not fd_ok["met"]:
            failures.append(f"descriptors grew: {fd1} -> {fd2}")
    rss = [s["vmrss_kib"] for s in samples]
    result = {
        "mode": mode,
        "revision": a.revision,
        "cores": cores,
        "pipeline": "full FAPI: mTLS + DPoP-bound token (fapi2) + fresh DPoP proof per request + "
                    "scope + object rule (authorization_details) + client rate-limit class + audit "
                    "log (file, rotated at 64 MiB, 4 kept)",
        "load": {"connections": a.connections, "duration": a.duration, "warmup": a.warmup,
                 "mode": r["mode"], "rate": r["rate"],
                 "capacity_rps": a.capacity, "fraction": a.fraction if mode == "soak" else None,
                 "token_lifetime": a.token_lifetime, "tokens_minted": r["tokens_minted"]},
        "fapi_checks": json.load(open(checks_p))["routes"],
        "result": {"requests": r["requests"], "ok": r["ok"], "rps": r["rps"], "ok_rps": r["ok_rps"],
                   "latency": r["latency"], "statuses": r["statuses"], "errors": r["errors"],
                   "errors_by_reason": r["errors_by_reason"], "seconds": r["seconds"]},
        "memory": {"first_kib": rss[0] if rss else None, "last_kib": rss[-1] if rss else None,
                   "max_kib": max(rss) if rss else None, "after_run": after[0] if after else None,
                   "flat": flat},
        "fds": {"first": samples[0]["fds"] if samples else None,
                "last": samples[-1]["fds"] if samples else None,
                "max": max(s["fds"] for s in samples) if samples else None, "growth": fd_ok},
        "audit": {"bytes_on_disk": a.audit_bytes, "files": a.audit_files},
        "cpu_steal": steal,
        "timeline_summary": tl,
        "timeline": timeline,
        "samples": samples,
        "every_s": a.every,
        "passed": not failures,
        "failures": failures,
    }
    json.dump(result, open(out, "w"), indent=2)
    mib = lambda k: f"{k / 1024:.1f} MiB"
    t = r["latency"]
    print()
    print(f"{mode} -- portcullis {result['revision']}, full FAPI pipeline, {result['cores']} cores shared "
          f"with the load generator and the mock bank")
    if mode == "soak":
        print(f"  load     open loop at {r['rate']} req/s ({result['load']['fraction']} of the capacity "
              f"{result['load']['capacity_rps']:.0f} req/s measured closed loop), {a.connections} connections, "
              f"{a.duration} after {a.warmup}")
    else:
        print(f"  load     closed loop, {a.connections} connections, {a.duration} after {a.warmup}")
    print(f"  checks   refused before the run: " + ", ".join(
        f"{k} {v['statuses']}" for k, v in result["fapi_checks"].items() if k != "account"))
    print(f"  result   {r['requests']} answers ({r['ok']} ok) = {r['rps']:.0f} req/s; latency p50 "
          f"{t['p50_us']} us, p99 {t['p99_us']} us, p99.9 {t['p999_us']} us, max {t['max_us']} us")
    print(f"  errors   {r['errors']}" + (f" {r['errors_by_reason']}" if r["errors"] else "")
          + f"; tokens minted {r['tokens_minted']}")
    if samples:
        print(f"  RSS      first {mib(rss[0])}, last {mib(rss[-1])}, max {mib(max(rss))} "
              f"({len(samples)} samples every {a.every} s)")
        print("  RSS MiB  " + " ".join(f"{x / 1024:.0f}" for x in rss))
    if flat:
        print(f"  flat     {flat['definition']}: worst {mib(flat['worst_deviation_kib'])} from "
              f"{mib(flat['median_after_warmup_kib'])} (tolerance {mib(flat['tolerance_kib'])}), slope "
              f"{flat['slope_mib_per_hour']} MiB/h: {'yes' if flat['met'] else 'NO'}")
    if samples:
        print(f"  fds      first {result['fds']['first']}, last {result['fds']['last']}, max "
              f"{result['fds']['max']}" + (f": growth {'none' if fd_ok['met'] else 'YES'} "
              f"({fd_ok['warmup_max']} -> {fd_ok['after_warmup_max']})" if fd_ok else ""))
    print(f"  audit    {result['audit']['bytes_on_disk']} bytes in {result['audit']['files']} file(s)")
    if steal:
        print(f"  steal    the hypervisor took {steal['run_pct']} % of the {cores} cores over the run, "
              f"{steal['max_interval_pct']} % in the worst {a.every} s")
    if tl:
        print(f"  backlog  most outstanding at once {tl['max_backlog']}; {tl['seconds_over_bound']} of "
              f"{tl['seconds']} s over {BOUND} (longest {tl['longest_over_bound_s']} s, "
              f"{tl['requests_due_over_bound']} requests due then); steal {tl['steal_pct_over_bound']} % "
              f"in those seconds, {tl['steal_pct_other']} % in the others; proxy CPU "
              f"{tl['proxy_cpu_pct_over_bound']} % / {tl['proxy_cpu_pct_other']} % of a core")
        print(f"  errors   in {tl['seconds_with_errors']} of {tl['seconds']} s")
        worst = sorted(timeline, key=lambda s: (-s["backlog"], -s["max_us"]))[:5]
        print("  worst s  " + "; ".join(f"t={s['t_s']} backlog {s['backlog']} max {s['max_us'] // 1000} ms "
                                        f"steal {s['steal_pct']} % proxy {s['proxy_cpu_pct']} %" for s in worst))
    print(f"  result   {'PASSED' if not failures else 'FAILED: ' + '; '.join(failures)}")
    print(f"  results  {out}")
    sys.exit(0 if not failures else 1)


def main():
    p = argparse.ArgumentParser(description="The checks and the report of benches/soak.sh.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("open-loop")
    s.add_argument("capacity_report")
    s.add_argument("fraction")
    s.set_defaults(run=open_loop)
    s = sub.add_parser("report")
    for name in ("report", "samples", "cpu_samples", "checks", "out"):
        s.add_argument(name)
    s.add_argument("--mode", choices=("soak", "saturation"), required=True)
    s.add_argument("--revision", required=True)
    s.add_argument("--cores", type=int, required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--duration", required=True, help="the run's length, as given (e.g. 30m)")
    s.add_argument("--warmup", required=True)
    s.add_argument("--capacity", type=lambda x: num(x) if x else None, default=None,
                   help="soak: the capacity measured (req/s)")
    s.add_argument("--fraction", type=num, default=None, help="soak: the open-loop fraction")
    s.add_argument("--token-lifetime", required=True)
    s.add_argument("--every", type=int, required=True, help="seconds between samples")
    s.add_argument("--settle", type=num, required=True)
    s.add_argument("--flat-pct", type=num, required=True)
    s.add_argument("--flat-mib", type=num, required=True)
    s.add_argument("--fd-slack", type=num, required=True)
    s.add_argument("--audit-bytes", type=num, required=True)
    s.add_argument("--audit-files", type=num, required=True)
    s.set_defaults(run=report)
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
