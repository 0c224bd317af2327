"""The JSON and the report of benches/memory.sh (python3, standard library only, except
`keygen`, which needs the `cryptography` package -- benches/memory.sh checks for it before
part 2).

  memory.py keygen DIR
      writes an Ed25519 authorization-server key (DIR/as.key, PKCS#8 PEM) and its JWKS
      (DIR/jwks.json, kid keys-1) for part 2. Prints nothing.
  memory.py keying-check CHECK
      exit 0 if CHECK, the key feeder's JSON line (benches/py/key_feeder.py) for one token
      sent twice at once, has one 200 and one 429 rate_limit.client, 1 otherwise. Prints
      nothing.
  memory.py idle-json OUT --connections N --answers S --open-seconds S --hold-seconds S
                     --closed N --baseline RSS HWM FDS --connected RSS HWM FDS ACTIVE
                     --after-hold RSS HWM FDS ACTIVE
      writes part 1's result (idle keep-alive connections; RSS and HWM in KiB) to OUT.
  memory.py keys-json OUT WORK DRIVERS --keys N --keying-check CHECK --baseline RSS HWM
                     --after-feed RSS HWM --after-maintenance RSS HWM RSSANON WAIT_S
                     --key-refill-s S --maintenance-s S
      writes part 2's result (rate-limit keys; CHECK as above) to OUT, from the feeders' reports
      WORK/feed-D.json (the last line of each) and the RSS samples WORK/keys-rss.tsv and
      WORK/keys-after.tsv.
  memory.py report OUT IDLE_JSON KEYS_JSON REVISION CORES [--haproxy IDLE_JSON]
                   [--haproxy-version V]
      prints the report of the parts whose JSON exists and writes them together to OUT
      (target/memory.json); with --haproxy (HAProxy's idle-json of the same run), HAProxy's
      figures and the per-connection comparison too.
"""
import argparse
import base64
import json
import os
import sys


def num(s):
    """A number as the shell has it: an int if it is one, else a float."""
    try:
        return int(s)
    except ValueError:
        return float(s)


def keygen(a):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    d = a.dir
    os.makedirs(d, exist_ok=True)
    k = ed25519.Ed25519PrivateKey.generate()
    open(f"{d}/as.key", "wb").write(k.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    x = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "keys-1", "alg": "EdDSA", "use": "sig",
           "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode()}
    json.dump({"keys": [jwk]}, open(f"{d}/jwks.json", "w"))


def keying_check(a):
    r = json.loads(a.check)
    sys.exit(0 if r["statuses"] == {"200": 1, "429": 1}
             and r["reasons"] == {"rate_limit.client": 1} else 1)


def idle_json(a):
    n = a.connections
    rss0, hwm0, fd0 = (num(x) for x in a.baseline)
    rss1, hwm1, fd1 = (num(x) for x in a.connected[:3])
    rss2, hwm2, fd2 = (num(x) for x in a.after_hold[:3])
    r = {
        "connections": n, "answers": a.answers, "open_seconds": a.open_seconds,
        "hold_seconds": a.hold_seconds, "closed_by_proxy_during_hold": a.closed,
        "baseline": {"vmrss_kib": rss0, "vmhwm_kib": hwm0, "fds": fd0},
        "connected": {"vmrss_kib": rss1, "vmhwm_kib": hwm1, "fds": fd1, "active": a.connected[3]},
        "after_hold": {"vmrss_kib": rss2, "vmhwm_kib": hwm2, "fds": fd2, "active": a.after_hold[3]},
        "per_connection_kib": round((rss2 - rss0) / n, 1),
        "target": {"name": "<= 64 MiB RSS with 1,000 idle keep-alive connections",
                   "limit_kib": 65536, "vmrss_kib": max(rss1, rss2),
                   "met": max(rss1, rss2) <= 65536 and n >= 1000 and a.closed == 0
                          and a.answers == f"200:{n}"},
    }
    json.dump(r, open(a.out, "w"), indent=2)


def keys_json(a):
    out, work, drivers = a.out, a.work, a.drivers
    statuses, reasons, feed_s = {}, {}, 0
    for d in range(drivers):
        r = json.loads(open(f"{work}/feed-{d}.json").read().strip().splitlines()[-1])
        feed_s = max(feed_s, r["seconds"])
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    tsv = lambda f: [[float(x) for x in l.split()] for l in open(f"{work}/{f}") if l.strip()]
    keys = a.keys
    rss0, hwm0 = (num(x) for x in a.baseline)
    rss1, hwm1 = (num(x) for x in a.after_feed)
    rss2, hwm2, rssanon2, wait_s = (num(x) for x in a.after_maintenance)
    refill = a.key_refill_s
    r = {
        "keys": keys, "feed_seconds": feed_s, "feed_rate": round(keys / max(feed_s, 0.001)),
        "statuses": statuses, "reasons": reasons, "keying_check": json.loads(a.keying_check),
        "baseline": {"vmrss_kib": rss0, "vmhwm_kib": hwm0},
        "after_feed": {"vmrss_kib": rss1, "vmhwm_kib": hwm1},
        "after_maintenance": {"vmrss_kib": rss2, "vmhwm_kib": hwm2, "rssanon_kib": rssanon2,
                              "wait_seconds": wait_s},
        "key_refill_s": refill,
        "all_keys_held_at_end_of_feed": feed_s < 2 * refill,
        "bytes_per_key": round((rss1 - rss0) * 1024 / keys),
        "rss_while_feeding": tsv("keys-rss.tsv"),
        "rss_after_feed": tsv("keys-after.tsv"),
        "maintenance_interval_s": a.maintenance_s,
        "how": "end to end: KEYS distinct EdDSA tokens (client_id 43 chars) over DRIVERS pipelined "
               "TLS connections without a client certificate; the class keys on cid:<client_id>; "
               "token cache off, audit none",
        "target": {"name": "<= 256 MiB after 1M distinct rate-limit keys", "limit_kib": 262144,
                   "vmrss_kib": max(rss1, hwm1),
                   "met": max(rss1, hwm1) <= 262144 and keys >= 1000000
                          and statuses == {"200": keys} and feed_s < 2 * refill},
    }
    json.dump(r, open(out, "w"), indent=2)


def report(a):
    out, idle_p, keys_p, rev, cores = a.out, a.idle_json, a.keys_json, a.revision, a.cores
    res = {"revision": rev, "cores": int(cores)}
    mib = lambda k: f"{k / 1024:.1f} MiB"
    print()
    print(f"memory targets -- portcullis {rev}, release build, {cores} cores (shared with the clients)")
    if os.path.exists(idle_p):
        r = res["idle_connections"] = json.load(open(idle_p))
        t = r["target"]
        print(f"  idle: {r['connections']} mTLS keep-alive connections (python3 ssl, TPP One's certificate),")
        print(f"        one GET each (answers {r['answers']}), then held {r['hold_seconds']} s; full config")
        print(f"        (both routes, issuer, rate-limit class, audit file)")
        print(f"        VmRSS baseline {mib(r['baseline']['vmrss_kib'])}, connected {mib(r['connected']['vmrss_kib'])}, "
              f"after the hold {mib(r['after_hold']['vmrss_kib'])} (VmHWM {mib(r['after_hold']['vmhwm_kib'])})")
        print(f"        {r['per_connection_kib']} KiB per connection; fds {r['baseline']['fds']} -> "
              f"{r['after_hold']['fds']}; connections_active {r['after_hold']['active']}; "
              f"closed by the proxy during the hold: {r['closed_by_proxy_during_hold']}")
        print(f"        target {t['name']}: {'met' if t['met'] else 'NOT met'} ({mib(t['vmrss_kib'])})")
        if a.haproxy and os.path.exists(a.haproxy):
            h = json.load(open(a.haproxy))
            ok_h = h["closed_by_proxy_during_hold"] == 0 and h["answers"] == f"200:{h['connections']}"
            print(f"  idle, HAProxy ({a.haproxy_version or 'haproxy'}, the pass-through frontend of "
                  f"benches/compare_haproxy.sh), the same clients in the same run:")
            print(f"        answers {h['answers']}; VmRSS baseline {mib(h['baseline']['vmrss_kib'])}, connected "
                  f"{mib(h['connected']['vmrss_kib'])}, after the hold {mib(h['after_hold']['vmrss_kib'])}")
            print(f"        {h['per_connection_kib']} KiB per connection; fds {h['baseline']['fds']} -> "
                  f"{h['after_hold']['fds']}; closed by HAProxy during the hold: "
                  f"{h['closed_by_proxy_during_hold']}")
            pc, hc = r["per_connection_kib"], h["per_connection_kib"]
            valid = ok_h and r["closed_by_proxy_during_hold"] == 0
            cmp = {"name": "memory per idle mTLS connection <= HAProxy's",
                   "portcullis_kib": pc, "haproxy_kib": hc,
                   "ratio": round(pc / hc, 2) if hc else None,
                   "valid": valid, "met": valid and pc <= hc}
            res["idle_connections_haproxy"] = h
            res["idle_vs_haproxy"] = cmp
            print(f"        per idle connection: portcullis {pc} KiB, HAProxy {hc} KiB (ratio "
                  f"{cmp['ratio']}); target {cmp['name']}: {'met' if cmp['met'] else 'NOT met'}"
                  + ("" if valid else " (NOT VALID: a connection was closed or refused)"))
    if os.path.exists(keys_p):
        r = res["rate_limit_keys"] = json.load(open(keys_p))
        t = r["target"]
        print(f"  keys: {r['keys']} distinct client rate-limit keys (cid:<43-char client_id>, one EdDSA token")
        print(f"        each, pipelined over TLS) in {r['feed_seconds']} s ({r['feed_rate']} req/s); answers {r['statuses']}")
        print(f"        keying check (one token twice at once): {r['keying_check']['statuses']}")
        print(f"        VmRSS baseline {mib(r['baseline']['vmrss_kib'])}, after the feed {mib(r['after_feed']['vmrss_kib'])}"
              f" (VmHWM {mib(r['after_feed']['vmhwm_kib'])}), ~{r['bytes_per_key']} B per key")
        held = "all held at the end of the feed" if r["all_keys_held_at_end_of_feed"] else \
            "NOT all held at once: the feed took longer than 2 x KEY_REFILL, raise it"
        print(f"        (one request per client per {r['key_refill_s']} s: {held})")
        print(f"        {r['after_maintenance']['wait_seconds']} s later (every key droppable, maintenance every "
              f"{r['maintenance_interval_s']} s: retain_recent + shrink_to_fit): VmRSS "
              f"{mib(r['after_maintenance']['vmrss_kib'])}, RssAnon {mib(r['after_maintenance']['rssanon_kib'])}")
        print(f"        target {t['name']}: {'met' if t['met'] else 'NOT met'} ({mib(t['vmrss_kib'])})")
    json.dump(res, open(out, "w"), indent=2)
    print(f"  results: {out}")


def main():
    p = argparse.ArgumentParser(description="The JSON and the report of benches/memory.sh.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("keygen")
    s.add_argument("dir")
    s.set_defaults(run=keygen)
    s = sub.add_parser("keying-check")
    s.add_argument("check")
    s.set_defaults(run=keying_check)
    s = sub.add_parser("idle-json")
    s.add_argument("out")
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--answers", required=True)
    s.add_argument("--open-seconds", type=num, required=True)
    s.add_argument("--hold-seconds", type=num, required=True)
    s.add_argument("--closed", type=num, required=True)
    s.add_argument("--baseline", nargs=3, required=True, metavar=("RSS", "HWM", "FDS"))
    s.add_argument("--connected", nargs=4, required=True, metavar=("RSS", "HWM", "FDS", "ACTIVE"))
    s.add_argument("--after-hold", nargs=4, required=True, metavar=("RSS", "HWM", "FDS", "ACTIVE"))
    s.set_defaults(run=idle_json)
    s = sub.add_parser("keys-json")
    s.add_argument("out")
    s.add_argument("work")
    s.add_argument("drivers", type=int)
    s.add_argument("--keys", type=int, required=True)
    s.add_argument("--keying-check", required=True, metavar="CHECK")
    s.add_argument("--baseline", nargs=2, required=True, metavar=("RSS", "HWM"))
    s.add_argument("--after-feed", nargs=2, required=True, metavar=("RSS", "HWM"))
    s.add_argument("--after-maintenance", nargs=4, required=True,
                   metavar=("RSS", "HWM", "RSSANON", "WAIT_S"))
    s.add_argument("--key-refill-s", type=num, required=True)
    s.add_argument("--maintenance-s", type=num, required=True)
    s.set_defaults(run=keys_json)
    s = sub.add_parser("report")
    for name in ("out", "idle_json", "keys_json", "revision", "cores"):
        s.add_argument(name)
    s.add_argument("--haproxy", default="", help="HAProxy's idle-json, when measured")
    s.add_argument("--haproxy-version", default="")
    s.set_defaults(run=report)
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
