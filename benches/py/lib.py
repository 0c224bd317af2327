"""Helpers of benches/lib.sh (python3, standard library only).

  lib.py free-ports N          prints N free loopback TCP ports, all distinct, on one line,
                               from below the kernel's ephemeral range (exit 1 if too few)
  lib.py fapi-checks REPORT    reads the loadgen scenario report of the full-FAPI refusal
                               checks (benches/lib.sh fapi_checks) and prints one line per
                               route to stderr; exit 1 unless every route answered as required
  lib.py flatten REPORT        rewrites a loadgen scenario report in place in the flag-mode
                               shape that benches/compare_report.py reads (requests, rps,
                               p50_us ... statuses, errors = requests without an answer);
                               the original is kept as REPORT.scenario.json. Prints nothing.
"""
import json
import random
import shutil
import socket
import sys


def free_ports(n):
    # Below the ephemeral range: a port inside it can still be held by a TIME_WAIT socket of a
    # client connection closed a moment ago, and a listener's bind there then fails.
    n = int(n)
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(10000, max(low, 10000 + 4 * n)))
    random.shuffle(candidates)
    socks = []
    for port in candidates:
        if len(socks) == n:
            break
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    if len(socks) < n:
        sys.exit("no %d free ports below %d" % (n, low))
    print(" ".join(str(s.getsockname()[1]) for s in socks))


def fapi_checks(path):
    r = json.load(open(path))["routes"]
    want = {  # route: (statuses, errors by reason) -- n = requests of that route
        "account": lambda n: ({"200": n}, {}),
        "no-proof": lambda n: ({"401": n}, {"binding.dpop_proof_missing": n}),
        "replayed-proof": lambda n: ({"200": 1, "401": n - 1}, {"binding.dpop_replay": n - 1}),
        "account-outside-grant": lambda n: ({"403": n}, {"authz.object": n}),
        "token-without-scope": lambda n: ({"403": n}, {"authz.scope": n}),
    }
    bad = 0
    for name, f in want.items():
        got = r.get(name, {})
        n = got.get("requests", 0) + sum(v for k, v in got.get("errors_by_reason", {}).items()
                                         if k.startswith("loadgen."))
        statuses, reasons = f(n)
        gs = {str(k): v for k, v in got.get("statuses", {}).items()}
        gr = got.get("errors_by_reason", {})
        ok = n >= (2 if name == "replayed-proof" else 1) and gs == statuses and gr == reasons
        bad += not ok
        print(f"  {'ok ' if ok else 'BAD'} {name:<22} {n:>3} requests: statuses {gs}"
              + (f", reasons {gr}" if gr else "")
              + ("" if ok else f"  (required: {statuses}, {reasons})"), file=sys.stderr)
    sys.exit(1 if bad else 0)


def flatten(path):
    s = json.load(open(path))
    shutil.copy(path, path + ".scenario.json")
    t = s["latency"]
    r = {"requests": s["requests"], "seconds": s["seconds"], "rps": s["rps"],
         "p50_us": t["p50_us"], "p90_us": t["p90_us"], "p99_us": t["p99_us"],
         "p999_us": t["p999_us"], "max_us": t["max_us"], "statuses": s["statuses"],
         "errors": s["errors"] - sum(s["errors_by_status"].values()),
         "errors_by_reason": s["errors_by_reason"]}
    json.dump(r, open(path, "w"))


if __name__ == "__main__":
    {"free-ports": free_ports, "fapi-checks": fapi_checks, "flatten": flatten}[sys.argv[1]](*sys.argv[2:])
