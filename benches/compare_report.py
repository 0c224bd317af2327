"""The JSON arithmetic and the tables of benches/compare_haproxy.sh (python3, standard library
only, no jq needed).

  compare_report.py line RUN.json                one measured run, one line
  compare_report.py open-rate LAT_DIR PIPELINE ROUNDS FRACTION
                                                 SCENARIO=latency: the open-loop rate, FRACTION
                                                 of the median closed-loop maximum in
                                                 LAT_DIR/max-ROUND-PIPELINE.json; written to
                                                 LAT_DIR/rate-PIPELINE.json and printed
  compare_report.py final RAW_DIR OUT.json       a throughput scenario (BENCH_* environment)
  compare_report.py redis-ratio OUT.json CALLS_BEFORE CALLS_AFTER LEASE
                                                 STATE=redis: adds ratio_redis_vs_memory to the
                                                 passthrough result OUT.json, prints two lines
  compare_report.py token-info HAPROXY_CFG CHECKS_TSV OUT.json ISSUER AUDIENCE SCOPE
                    CACHE_HITS_BEFORE VERIFICATIONS_BEFORE CACHE_HITS_AFTER VERIFICATIONS_AFTER
                                                 SCENARIO=token: what each side checks (HAProxy's
                                                 own config lines, portcullis's route), the
                                                 checks before measuring and the token-cache
                                                 counters, as JSON for `final`; prints nothing
  compare_report.py latency RAW_DIR OUT.json     SCENARIO=latency
  compare_report.py summary PASSTHROUGH.json TOKEN.json FAPI.json LATENCY.json SCENARIO...
                                                 the summary of a run of several scenarios
  compare_report.py oha-flatten OHA.json OUT.json
                                                 an oha run (--output-format json) in the shape
                                                 of a loadgen flag-mode report
  compare_report.py rows RESULT.json...          one row per (scenario, driver, upstream): both
                                                 medians, their ratio, the paired ratio with its
                                                 95 % interval, both p99s
"""
import json
import os
import random
import statistics
import sys
import textwrap


def load(path):
    with open(path) as f:
        return json.load(f)


def line(path):
    r = load(path)
    if "latency" in r:  # a scenario report (open loop)
        t = r["latency"]
        print(f"{r['rps']:.0f} answers/s, p50 {t['p50_us']} us, p99 {t['p99_us']} us, "
              f"errors {r['errors']}" + (f" {r['errors_by_reason']}" if r["errors"] else ""))
        return
    bad = {k: v for k, v in r["statuses"].items() if k != "200"}
    extra = f", statuses {r['statuses']}, {r['errors']} errors" if bad or r["errors"] else ""
    print(f"{r['rps']:.0f} req/s, p50 {r['p50_us']} us, p99 {r['p99_us']} us{extra}")


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def median_of(runs, key):
    vals = [x[key] for x in runs if x.get(key) is not None]
    if not vals:
        return None
    m = statistics.median(vals)
    # The mean of the two middle values (22.95, not 22.950000000000003).
    return round(m, 3) if isinstance(m, float) else m


def problems_of(runs):
    out = []
    for x in runs:
        other = {k: v for k, v in x["statuses"].items() if k != "200"}
        if x["errors"] or other or not x["requests"]:
            out.append(f"round {x['round']} {x['proxy']}: {x['requests']} requests, "
                       f"statuses {x['statuses']}, {x['errors']} errors")
    return out


def paired(runs, a, b):
    """Per-round throughput ratios a / b (the two ran back to back in each round), their median
    and mean, and a 95 % bootstrap interval of the mean (resampling rounds; fixed seed, so the
    report is reproducible from the raw runs)."""
    rps = {(x["round"], x["proxy"]): x["rps"] for x in runs}
    rounds = sorted({r for r, _ in rps if (r, a) in rps and (r, b) in rps and rps[(r, b)]})
    rs = [rps[(r, a)] / rps[(r, b)] for r in rounds]
    if not rs:
        return None
    rng = random.Random(9)
    means = sorted(statistics.mean(rng.choices(rs, k=len(rs))) for _ in range(10000))
    return {"rounds": len(rs), "ratios": [round(x, 3) for x in rs],
            "median": round(statistics.median(rs), 3), "mean": round(statistics.mean(rs), 3),
            "mean_ci95": [round(means[249], 3), round(means[9749], 3)]}


def open_rate(lat, pl, rounds, fraction):
    rounds, fraction = int(rounds), float(fraction)
    rps = [load(os.path.join(lat, f"max-{r}-{pl}.json"))["rps"] for r in range(1, rounds + 1)]
    m = statistics.median(rps)
    rate = {"max_rps": m, "fraction": fraction, "rate": max(1.0, round(m * fraction, 1))}
    json.dump(rate, open(os.path.join(lat, f"rate-{pl}.json"), "w"))
    print(rate["rate"])


def redis_ratio(path, c0, c1, lease):
    r = load(path)
    m = r["median"]
    mem, red = m["portcullis-limited"], m["portcullis-redis"]
    reqs = sum(x["requests"] for x in r["runs"] if x["proxy"] == "portcullis-redis")
    calls = (float(c1) - float(c0)) if "unknown" not in (c0, c1) else None
    r["ratio_redis_vs_memory"] = {
        "throughput": ratio(red["rps"], mem["rps"]),
        "p50": ratio(red["p50_us"], mem["p50_us"]),
        "p99": ratio(red["p99_us"], mem["p99_us"]),
        "cpu_per_request": ratio(red["proxy_cpu_us_per_request"], mem["proxy_cpu_us_per_request"]),
        "lease_max_tokens": int(lease),
        "redis_rate_limit_calls_in_measured_runs_and_warmups": calls,
        "measured_requests": reqs,
    }
    json.dump(r, open(path, "w"), indent=2)
    q = r["ratio_redis_vs_memory"]
    print(f"  state on Redis / in memory (rate-limited route, lease {lease}): throughput {q['throughput']}"
          f"   p50 {q['p50']}   p99 {q['p99']}   CPU per request {q['cpu_per_request']}")
    print(f"  Redis rate-limit calls during the runs (warm-ups included): {calls}, "
          f"for {reqs} measured requests")


def token_info(cfg, checks, out, issuer, audience, scope, hits0, verif0, hits1, verif1):
    lines, inside = [], False
    for l in open(cfg):
        if "-- rate limit, BEGIN" in l or "-- access token, BEGIN" in l:
            inside = True
        elif "-- rate limit, END" in l or "-- access token, END" in l:
            inside = False
        elif inside and l.strip() and not l.lstrip().startswith("#"):
            lines.append(l.strip())
    pre = {}
    for l in open(checks):
        proxy, what, want, got = l.rstrip("\n").split("\t")
        pre.setdefault(what, {})[proxy] = {"required": None if want == "*" else int(want),
                                           "got": int(got) if got.isdigit() else got}

    def num(s):
        return int(s) if s.isdigit() else None
    h0, v0, h1, v1 = (num(x) for x in (hits0, verif0, hits1, verif1))
    info = {
        "presented": f"Authorization: Bearer <ES256 JWT, typ at+jwt, kid as-1, iss {issuer}, "
                     f"aud {audience}, scope 'accounts payments', cnf.x5t#S256 = TPP One's "
                     "certificate>, the same token on every request of every connection",
        "haproxy_checks": [
            "rate limit: stick table keyed by SHA-256 of the client certificate's DER, "
            "http_req_rate(1s) against a quota never reached (429 beyond)",
            "Authorization: Bearer token present (http_auth_bearer)",
            "header: alg == ES256, typ at+jwt, kid == as-1 (jwt_header_query)",
            "signature: jwt_verify(ES256, AS public key PEM) == 1, on every request (no cache)",
            "claims: iss, aud (string) equal; exp required, exp/nbf/iat against date with 30 s skew",
            f"scope contains '{scope}' (403 otherwise)",
            "cnf.x5t#S256 == ssl_c_der,digest(sha256),ub64enc of this connection's certificate",
            "upstream: Authorization/DPoP removed; x-portcullis-client-id/subject/scope/token-jti "
            "set from the claims (as portcullis does)",
        ],
        "haproxy_config_lines": lines,
        "portcullis_route": f"auth: {{profile: fapi2}}, scopes: {{all_of: [{scope}]}}, "
                            "rate_limit: bench (a class never reached), issuer 'as' (jwks file, "
                            "algorithms [ES256], defaults otherwise: typ at+jwt required, 30 s skew)",
        "portcullis_checks": [
            "client rate limit: GCRA (governor) keyed by the certificate thumbprint, before the "
            "token; a quota never reached (429 beyond)",
            "exactly one Authorization header, Bearer or DPoP scheme, token68; no access_token "
            "in the query; at most 8192 bytes",
            "verified-token cache lookup by SHA-256(issuer, token); on a miss only: JWS parse, "
            "alg ES256, no jwk/jku/x5c/x5u/crit header, typ at+jwt, key by kid from the JWKS, "
            "ES256 signature, iss, aud (string or array), exp required, claim types, iat not in "
            "the future",
            "every request, cache hit or not: exp/nbf against now with 30 s skew; token must be "
            "bound (fapi2); cnf.x5t#S256 == base64url SHA-256 of this connection's verified "
            "certificate (computed once per connection)",
            f"scope: all of ['{scope}'] (403 authz.scope otherwise)",
            "upstream: Authorization/DPoP removed; x-portcullis-client-id/subject/scope/token-jti "
            "set from the claims",
        ],
        "asymmetries": [
            "signature: HAProxy verifies ES256 on every request; portcullis once per token, then "
            "serves the cached verdict (the design under test; the issue allows caching)",
            "rate limit: HAProxy counts a sliding 1 s request rate per certificate; portcullis "
            "runs a GCRA bucket per certificate thumbprint; both one lookup and update per request",
            "order: HAProxy checks the scope right after the signature and claims, before the "
            "binding; portcullis after the binding (a token both unbound and without the scope "
            "gets 403 from HAProxy, 401 from portcullis; the cases here are bound)",
            "portcullis also refuses what this HAProxy config lets through: two Authorization "
            "headers, access_token in the query, key-carrying (jwk/jku/x5c/x5u) or crit JOSE "
            "headers, tokens over 8 KiB, claims of the wrong JSON type (e.g. an object nbf, a "
            "numeric sub)",
            "aud: HAProxy accepts only a string equal to the audience, portcullis also an array "
            "containing it (no effect on this token)",
            "keys: HAProxy has one fixed PEM key and requires kid as-1; portcullis picks the key "
            "by kid from the JWKS (file here; could be a URL with refresh)",
            "binding: both compare cnf.x5t#S256 with the live connection's certificate; HAProxy "
            "hashes the certificate on every request, portcullis once per connection",
        ],
        "checks_before_measuring": pre,
        "portcullis_token_cache": {
            "window": "the token scenario's warm-ups and measured runs",
            "cache_hits": (h1 - h0) if None not in (h0, h1) else "unknown",
            "signature_verifications": (v1 - v0) if None not in (v0, v1) else "unknown",
            "note": "the token was verified once already by the checks before measuring",
        },
    }
    json.dump(info, open(out, "w"), indent=2)


def oha_flatten(src, out):
    """oha's JSON report (latencies in seconds) as the flag-mode report of `portcullis loadgen`
    (requests, rps, p50_us, p99_us, p999_us, statuses, errors) that `line` and `final` read.
    `errors` are requests without an answer (oha's errorDistribution); rps is oha's own
    requestsPerSec (answers / run time)."""
    r = load(src)
    pct = r.get("latencyPercentiles") or {}

    def us(key):
        v = pct.get(key)
        return None if v is None else round(v * 1e6)
    statuses = {str(k): int(v) for k, v in (r.get("statusCodeDistribution") or {}).items()}
    flat = {
        "driver": "oha",
        "requests": sum(statuses.values()),
        "rps": float(r["summary"].get("requestsPerSec") or 0.0),
        "p50_us": us("p50"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
        "statuses": statuses,
        "errors": sum(int(v) for v in (r.get("errorDistribution") or {}).values()),
        "errors_by_reason": r.get("errorDistribution") or {},
    }
    with open(out, "w") as f:
        json.dump(flat, f, indent=2)
        f.write("\n")


def rows(*paths):
    """The table of the issue: one row per (path, driver, upstream), from final() results."""
    out = []
    for path in paths:
        r = load(path)
        s, med = r["setup"], r["median"]
        driver, upstream = s.get("driver", "loadgen"), s.get("upstream", "mock")
        base = r["baseline"]
        paired_all = r["paired_vs_" + base.replace("-", "_")]
        label = {"passthrough": "mTLS pass-through",
                 "token": "mTLS + ES256 JWT + scope + cnf + limit",
                 "fapi": "full FAPI vs HAProxy's JWT pipeline"}[s["scenario"]]
        c = "portcullis-fapi" if s["scenario"] == "fapi" else "portcullis"
        out.append((label, driver, upstream, base, med[base], c, med[c], paired_all.get(c),
                    r["valid"]))
        if "portcullis-audit" in med:
            out.append(("  + audit log to a file", driver, upstream, "portcullis",
                        med["portcullis"], "portcullis-audit", med["portcullis-audit"],
                        r.get("audit_paired"), r["valid"]))
    print()
    print("rows (medians of this run; paired: the per-round ratio of the two run back to back,")
    print("its median and the 95 % bootstrap interval of its mean)")
    head = (f"  {'path':<40} {'driver':<7} {'upstream':<8} {'baseline req/s':>24} "
            f"{'ours req/s':>24} {'ratio':>6} {'paired [95 % CI]':>22} {'p99 base':>9} "
            f"{'p99 ours':>9} {'p99 ratio':>9}")
    print(head)
    for label, driver, upstream, base, mb, c, mc, pr, valid in out:
        pcell = f"{pr['median']} [{pr['mean_ci95'][0]}-{pr['mean_ci95'][1]}]" if pr else "-"

        def p99(m):
            return f"{m['p99_us'] / 1000:.2f} ms" if m.get("p99_us") is not None else "-"
        print(f"  {label:<40} {driver:<7} {upstream:<8} {base + ' ' + format(mb['rps'], '.0f'):>24} "
              f"{c + ' ' + format(mc['rps'], '.0f'):>24} {str(ratio(mc['rps'], mb['rps'])):>6} "
              f"{pcell:>22} {p99(mb):>9} {p99(mc):>9} "
              f"{str(ratio(mc.get('p99_us'), mb.get('p99_us'))):>9}"
              + ("" if valid else "   NOT VALID (errors)"))


def machine():
    e = os.environ
    return {"cores": int(e["BENCH_CORES"]), "cpu": e["BENCH_CPU"], "kernel": e["BENCH_KERNEL"]}


# What each contender is, for the setup block and the table.
CONTENDERS = {
    "haproxy": "HAProxy, mTLS pass-through",
    "haproxy-token": "HAProxy, mTLS + stick-table rate limit + jwt_verify/claims/scope/cnf "
                     "on every request (the token frontend)",
    "portcullis": "portcullis, mTLS pass-through (audit sink none)",
    "portcullis-audit": "portcullis, mTLS pass-through, audit log to a file",
    "portcullis-limited": "portcullis, pass-through + client rate-limit class (memory)",
    "portcullis-redis": "portcullis, pass-through + client rate-limit class (state on Redis)",
    "portcullis-token": "portcullis, mTLS + cert-bound token (fapi2) + scope + rate-limit class",
    "portcullis-fapi": "portcullis, full FAPI: mTLS + DPoP-bound token (fapi2) + fresh DPoP "
                       "proof per request + scope + object rule + rate-limit class + audit "
                       "log (file)",
}


LOAD_GENERATORS = {
    "loadgen": "portcullis loadgen: closed loop, HTTP/1.1 keep-alive, rustls client, "
               "TPP One's client certificate; the same for every proxy",
    "oha": "oha (third-party; rustls client): closed loop, HTTP/1.1 keep-alive, TPP One's client "
           "certificate, -w (requests under way at the deadline awaited); the same for every proxy",
}


def final(raw, out):
    e = os.environ
    contenders = e["BENCH_CONTENDERS"].split()
    baseline = e.get("BENCH_BASELINE", "haproxy")
    rounds = int(e["BENCH_ROUNDS"])
    clk = int(e["BENCH_CLK_TCK"])
    scenario = e["BENCH_SCENARIO"]
    cores = int(e["BENCH_CORES"])
    setup = {
        "scenario": scenario,
        "machine": machine(),
        "connections": int(e["BENCH_OHA_CONNECTIONS"] if e.get("BENCH_DRIVER") == "oha"
                           else e["BENCH_CONNECTIONS"]),
        "duration": e["BENCH_DURATION"],
        "warmup": e["BENCH_WARMUP"],
        "rounds": rounds,
        "order": "alternating: " + ", ".join(contenders) + " in odd rounds, the reverse in even ones",
        "contenders": {c: CONTENDERS.get(c, c) for c in contenders},
        "route": "GET " + e["BENCH_ROUTE"],
        "driver": e.get("BENCH_DRIVER", "loadgen"),
        "load_generator": LOAD_GENERATORS[e.get("BENCH_DRIVER", "loadgen")],
        "upstream": e.get("BENCH_UPSTREAM", "mock"),
        "upstream_detail": e.get("BENCH_UPSTREAM_DESC")
        or f"one portcullis mock-bank on {e['BENCH_BANK']} (plain HTTP/1.1), shared",
        "shared_cores": "load generator, proxy and upstream run on the same cores",
        "haproxy": {
            "version": e["BENCH_HA_VERSION"],
            "openssl": e["BENCH_HA_OPENSSL"],
            "nbthread": cores,
            "negotiated": e["BENCH_TLS_HA"],
            "request_log": "none",
            "keep_alive": "option http-keep-alive, http-reuse always",
        },
        "portcullis": {
            "revision": e["BENCH_PC_REV"],
            "threads": f"listener.workers default: one event-loop thread per core ({cores}), connections handed to the least-loaded",
            "tls": "rustls with aws-lc-rs",
            "negotiated": e["BENCH_TLS_PC"],
            "audit": "sink none for 'portcullis', like HAProxy without a request log"
                     + ("; sink file for 'portcullis-audit'" if "portcullis-audit" in contenders else "")
                     + ("; sink file for 'portcullis-fapi'" if "portcullis-fapi" in contenders else ""),
        },
    }
    if scenario == "fapi":
        setup["route"] = (f"GET {e['BENCH_ROUTE']} for the pass-through and HAProxy contenders; "
                          f"GET {e['BENCH_FAPI_PATH']} for portcullis-fapi")
        setup["load_generator"] += (
            "; portcullis-fapi: `portcullis loadgen --scenario` (the same engine, closed loop, "
            "the same connections) minting one DPoP-bound token and signing a fresh ES256 DPoP "
            "proof per request on the same cores (its CPU is in loadgen_cpu_us_per_request)")

    runs = []
    for r in range(1, rounds + 1):
        for c in contenders:
            rep = load(os.path.join(raw, f"run-{r}-{c}.json"))
            with open(os.path.join(raw, f"run-{r}-{c}.cpu")) as f:
                cpu_s = int(f.read()) / clk
            rep["proxy_cpu_seconds"] = round(cpu_s, 2)
            rep["proxy_cpu_us_per_request"] = (
                round(cpu_s * 1e6 / rep["requests"], 1) if rep["requests"] else None)
            # Counters sampled around the run, where the script wrote them: (file, key, µs per
            # unit, digits). The writer thread's only for the audited contender; steal is the
            # machine's, not the proxy's: what the hypervisor took from the cores.
            counters = [(".steal", "steal_us_per_request", 1e6 / clk, 2),
                        (".json.lgcpu", "loadgen_cpu_us_per_request", 1e3, 1)]
            if c == "portcullis-audit":
                counters.insert(0, (".writer", "audit_writer_cpu_us_per_request", 1e6 / clk, 2))
            for suffix, key, us, digits in counters:
                path = os.path.join(raw, f"run-{r}-{c}{suffix}")
                if os.path.exists(path):
                    with open(path) as f:
                        n = int(f.read())
                    rep[key] = round(n * us / rep["requests"], digits) if rep["requests"] else None
            runs.append({"round": r, "proxy": c, **rep})

    problems = problems_of(runs)
    keys = ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_request", "loadgen_cpu_us_per_request")
    med = {c: {k: median_of([x for x in runs if x["proxy"] == c], k) for k in keys}
           for c in contenders}

    def ratios_vs(base):
        return {
            c: {
                "throughput": ratio(med[c]["rps"], med[base]["rps"]),
                "p50": ratio(med[c]["p50_us"], med[base]["p50_us"]),
                "p99": ratio(med[c]["p99_us"], med[base]["p99_us"]),
                "cpu_per_request": ratio(med[c]["proxy_cpu_us_per_request"],
                                         med[base]["proxy_cpu_us_per_request"]),
            }
            for c in contenders if c != base
        }

    ratios = ratios_vs(baseline)
    result = {"setup": setup, "runs": runs, "median": med, "baseline": baseline,
              "ratio_vs_" + baseline.replace("-", "_"): ratios,
              "paired_vs_" + baseline.replace("-", "_"):
                  {c: paired(runs, c, baseline) for c in contenders if c != baseline}}
    # The old key, kept for tools that read it.
    if baseline == "haproxy":
        result["ratio_vs_haproxy"] = ratios

    token = target = None
    if scenario == "passthrough":
        q = ratios["portcullis"]
        target = {"name": "mTLS pass-through: >= 1.05 x HAProxy throughput, p99 no worse",
                  "met": q["throughput"] is not None and q["throughput"] >= 1.05
                  and q["p99"] is not None and q["p99"] <= 1.0}
    elif scenario == "token":
        token = load(e["BENCH_TOKEN_INFO"])
        setup["token"] = token
        setup["portcullis"]["audit"] = "sink none, like HAProxy without a request log"
        tp = ratios["portcullis"]["throughput"]
        target = {"name": "mTLS + JWT + cnf + scope + rate limit: >= 3.0 x HAProxy throughput",
                  "throughput_ratio": 3.0, "met": tp is not None and tp >= 3.0}
    elif scenario == "fapi":
        result["fapi_checks"] = load(e["BENCH_FAPI_CHECKS"])
        vs_pt = ratios_vs("portcullis")["portcullis-fapi"]
        result["ratio_fapi_vs_portcullis_passthrough"] = vs_pt
        tp = ratios["portcullis-fapi"]["throughput"]
        target = {"name": "full FAPI (DPoP + audit): >= 1.0 x HAProxy's JWT pipeline throughput",
                  "throughput_ratio": 1.0, "met": tp is not None and tp >= 1.0}
    if target:
        result["target"] = target
    result["valid"] = not problems
    result["problems"] = problems
    if "portcullis-audit" in contenders:
        result["audit_log_bytes"] = int(e["BENCH_AUDIT_BYTES"])
        lines = int(e.get("BENCH_AUDIT_LINES", "0"))
        result["audit_bytes_per_record"] = (
            round(result["audit_log_bytes"] / lines) if lines else None)
        # Auditing may cost at most 3 % of throughput. Shown only when the whole 95 %
        # interval of the mean per-round ratio is at or above 0.97.
        pr = paired(runs, "portcullis-audit", "portcullis")
        if pr:
            pr["target"] = "audit on / off >= 0.97 (at most 3 % of throughput), the whole interval"
            pr["shown"] = pr["mean_ci95"][0] >= 0.97
        result["audit_paired"] = pr
        # Where the audit's CPU goes: the writer thread (sealing, hashing, writing) and the rest
        # of the proxy's extra CPU per request (encoding and queueing on the workers).
        writer = median_of([x for x in runs if x["proxy"] == "portcullis-audit"],
                           "audit_writer_cpu_us_per_request")
        plain = med["portcullis"]["proxy_cpu_us_per_request"]
        audited = med["portcullis-audit"]["proxy_cpu_us_per_request"]
        if writer is not None and plain is not None and audited is not None:
            result["audit_cpu_us_per_request"] = {
                "proxy_extra": round(audited - plain, 2),
                "writer_thread": round(writer, 2),
                "rest": round(audited - plain - writer, 2),
            }
            # The host's work for the audit's disk writes shows as steal, outside the proxy.
            steal = {c: median_of([x for x in runs if x["proxy"] == c], "steal_us_per_request")
                     for c in ("portcullis", "portcullis-audit")}
            if None not in steal.values():
                result["audit_cpu_us_per_request"]["machine_steal_extra"] = round(
                    steal["portcullis-audit"] - steal["portcullis"], 2)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    def para(head, text):
        print(textwrap.fill(text, 100, initial_indent=f"  {head:<12}", subsequent_indent=" " * 14))

    def items(xs):
        for x in xs:
            print(textwrap.fill(x, 100, initial_indent=" " * 14 + "- ", subsequent_indent=" " * 16))

    s, h, p = setup, setup["haproxy"], setup["portcullis"]
    print()
    if scenario == "token":
        print("token scenario -- portcullis vs HAProxy: mTLS + client rate limit + certificate-bound")
        print("access token with a required scope on every request, keep-alive, pass-through to the")
        print("same upstream")
    elif scenario == "fapi":
        print("fapi scenario -- portcullis's full FAPI pipeline vs HAProxy's JWT pipeline (token")
        print("frontend) and vs portcullis pass-through, keep-alive, the same upstream")
    else:
        print("portcullis vs HAProxy: mTLS termination, keep-alive, pass-through to the same upstream")
    print(f"  machine     {cores} cores ({s['machine']['cpu']}), Linux {s['machine']['kernel']};")
    print("              load generator, proxy and upstream all share these cores, nothing pinned")
    para("load", f"{s['load_generator']}; {s['connections']} connections, {s['duration']} per run "
                 f"after a {s['warmup']} warm-up, {rounds} round(s), {s['order']}")
    para("route", f"{s['route']} -> {s['upstream_detail']} (~600-byte JSON)")
    print(f"  haproxy     {h['version']}, {h['openssl']}")
    print(f"              nbthread {h['nbthread']}, no request log, {h['keep_alive']}")
    print(f"              negotiated with the load generator: {h['negotiated']}")
    print(f"  portcullis  {p['revision']}, {p['threads']}, {p['tls']}")
    print(f"              negotiated with the load generator: {p['negotiated']}")
    print("  work        all: client certificate required + CRL, one route allowed, client-cert")
    print("              (RFC 9440), x-forwarded-*, x-fapi-interaction-id set on the way up")
    print(f"  audit       {p['audit']}")

    if scenario == "fapi":
        print("  contenders")
        items([f"{c}: {CONTENDERS.get(c, c)}" for c in contenders])
        para("verified", "before measuring, portcullis-fapi refused (statuses and reasons of "
                         "`portcullis loadgen` on one connection):")
        for name, r in result["fapi_checks"]["routes"].items():
            reasons = r.get("errors_by_reason") or {}
            print(f"                {name:<22} statuses {r['statuses']}"
                  + (f", reasons {reasons}" if reasons else ""))
    if token:
        para("token", token["presented"])
        para("checks", "haproxy, on EVERY request (no verified-token cache):")
        items(token["haproxy_checks"])
        para("", f"portcullis, {token['portcullis_route']}:")
        items(token["portcullis_checks"])
        para("NOT EQUAL", "where the two differ:")
        items(token["asymmetries"])
        para("verified", "before measuring, on TPP One's connection: answer haproxy / "
                         "portcullis (* = recorded, not required):")
        for what, r in token["checks_before_measuring"].items():
            def cell(x):
                return f"{x['got']}{'' if x['required'] is not None else '*'}"
            print(f"                {cell(r['haproxy']):>4} / {cell(r['portcullis']):<4}  {what}")
        tc = token["portcullis_token_cache"]
        para("cache", f"portcullis over the token scenario's warm-ups and runs: "
                      f"{tc['signature_verifications']} signature verification(s), "
                      f"{tc['cache_hits']} cache hits ({tc['note']})")
    print()
    w = max(len(c) for c in contenders)
    has_lg = any("loadgen_cpu_us_per_request" in x for x in runs)
    lg_head = f"  {'loadgen CPU us/req':>18}" if has_lg else ""
    print(f"  {'round':<6}  {'proxy':<{w}}  {'req/s':>9}  {'p50 us':>8}  {'p99 us':>8}  "
          f"{'p99.9 us':>8}  {'errors':>6}  {'proxy CPU us/req':>16}{lg_head}")
    for x in runs:
        lg = f"  {str(x.get('loadgen_cpu_us_per_request')):>18}" if has_lg else ""
        print(f"  {x['round']:<6}  {x['proxy']:<{w}}  {x['rps']:>9.0f}  {x['p50_us']:>8}  "
              f"{x['p99_us']:>8}  {x['p999_us']:>8}  {x['errors']:>6}  "
              f"{str(x['proxy_cpu_us_per_request']):>16}{lg}")
    print()
    for c in contenders:
        m = med[c]
        lg = f"  {str(m['loadgen_cpu_us_per_request']):>18}" if has_lg else ""
        print(f"  {'median':<6}  {c:<{w}}  {m['rps']:>9.0f}  {m['p50_us']:>8.0f}  {m['p99_us']:>8.0f}  "
              f"{'':>8}  {'':>6}  {str(m['proxy_cpu_us_per_request']):>16}{lg}")
    print()
    for c, r in ratios.items():
        print(f"  {c} / {baseline}:  throughput {r['throughput']}   p50 {r['p50']}   "
              f"p99 {r['p99']}   CPU per request {r['cpu_per_request']}")
    for c, pr in result["paired_vs_" + baseline.replace("-", "_")].items():
        if pr and pr["rounds"] > 1:
            print(f"  {c} / {baseline}, per round (back to back): throughput median "
                  f"{pr['median']}, mean {pr['mean']}, 95 % interval of the mean "
                  f"{pr['mean_ci95'][0]}-{pr['mean_ci95'][1]}")
    if scenario == "fapi":
        r = result["ratio_fapi_vs_portcullis_passthrough"]
        print(f"  portcullis-fapi / portcullis (pass-through):  throughput {r['throughput']}   "
              f"p50 {r['p50']}   p99 {r['p99']}   CPU per request {r['cpu_per_request']}")
    print(f"  (throughput >= 1.0 and p99 <= 1.0 mean no worse than {baseline})")
    if target:
        print(f"  target: {target['name']}: "
              f"{'met' if target['met'] else 'NOT met'} in this run")
    print("  (proxy CPU us/req: the proxy process's user+system CPU time during the measured run /")
    print("   requests; the load generator and the upstream share the same cores)")
    if has_lg:
        print("  (loadgen CPU us/req: the load generator's own CPU per request; the full-FAPI one")
        print("   signs a DPoP proof per request, on the cores the proxy under test also uses)")
    if "portcullis-audit" in contenders:
        print(f"  audit log of portcullis-audit, current file: {result['audit_log_bytes']} bytes, "
              f"{result['audit_bytes_per_record']} bytes per record (rotated at 64 MiB)")
        split = result.get("audit_cpu_us_per_request")
        if split:
            print(f"  audit CPU per request (medians): proxy +{split['proxy_extra']} us, of which the "
                  f"writer thread {split['writer_thread']} us and the rest (encoding and queueing on "
                  f"the workers, effects on them) {split['rest']} us")
            if "machine_steal_extra" in split:
                print(f"  and the machine's steal (the host, e.g. emulating the disk writes): "
                      f"+{split['machine_steal_extra']} us per request")
        pr = result["audit_paired"]
        if pr:
            print(f"  audit on / off, per round (back to back): median {pr['median']}, mean "
                  f"{pr['mean']}, 95 % interval of the mean {pr['mean_ci95'][0]}-"
                  f"{pr['mean_ci95'][1]} over {pr['rounds']} rounds")
            print(f"  target: at most 3 % of throughput (the whole interval >= 0.97): "
                  f"{'shown' if pr['shown'] else 'NOT shown'} in this run")
    if problems:
        print()
        print("  WARNING: runs with errors or non-200 answers; these numbers are not comparable:")
        for x in problems:
            print(f"    {x}")
    print()
    print(f"  results: {out}")


def latency(raw, out):
    """SCENARIO=latency: closed-loop maxima, then open loop at a fraction of them against the
    proxy and against the mock bank directly; added p99 = proxy p99 - direct p99."""
    e = os.environ
    rounds = int(e["BENCH_ROUNDS"])
    fraction = float(e["BENCH_LATENCY_FRACTION"])
    pipelines = e["BENCH_PIPELINES"].split()
    result = {
        "setup": {
            "machine": machine(),
            "revision": e["BENCH_PC_REV"],
            "connections": int(e["BENCH_CONNECTIONS"]),
            "duration": e["BENCH_DURATION"],
            "warmup": e["BENCH_WARMUP"],
            "rounds": rounds,
            "rate_fraction": fraction,
            "method": [
                "1. maximum: closed loop, CONNECTIONS connections, median req/s over ROUNDS runs "
                "(each after a warm-up)",
                f"2. open loop (`mode: open`, latency from the intended send time, so queueing "
                f"behind a stall counts) at {fraction} x that maximum, over the same number of "
                "connections, against (a) portcullis and (b) the mock bank directly over plain "
                "HTTP (`target.plaintext: true`), and for the pass-through pipeline (c) HAProxy's "
                "mTLS pass-through at the same rate, as a reference; in this order in every round",
                "3. added p99 = median p99 of (a) - median p99 of (b). The direct path has no "
                "TLS, so the added latency includes TLS termination (record decryption and "
                "encryption on the keep-alive connection; no handshakes after the first); "
                "HAProxy's added p99 = median p99 of (c) - median p99 of (b)",
            ],
            "pipelines": {
                "passthrough": "mTLS pass-through route, TPP One's certificate, no token",
                "token": "mTLS + certificate-bound token (minted by loadgen, scope accounts), "
                         "scope + rate-limit class (the token scenario's portcullis)",
            },
            "shared_cores": "load generator, proxy and mock bank share the same cores",
        },
        "pipelines": {},
        "problems": [],
    }
    for pl in pipelines:
        closed = []
        for r in range(1, rounds + 1):
            x = load(os.path.join(raw, f"max-{r}-{pl}.json"))
            closed.append({"round": r, **x})
        max_rps = median_of(closed, "rps")
        rate = load(os.path.join(raw, f"rate-{pl}.json"))["rate"]
        opens = {"proxy": [], "direct": []}
        if os.path.exists(os.path.join(raw, f"open-1-{pl}-haproxy.json")):
            opens["haproxy"] = []
        for r in range(1, rounds + 1):
            for side in opens:
                s = load(os.path.join(raw, f"open-{r}-{pl}-{side}.json"))
                row = {"round": r, "requests": s["requests"], "rps": s["rps"],
                       "statuses": s["statuses"], "errors": s["errors"],
                       "errors_by_reason": s["errors_by_reason"], **s["latency"]}
                opens[side].append(row)
                if s["errors"] or not s["requests"]:
                    # A failed reference run leaves portcullis's figures standing.
                    where = "reference_problems" if side == "haproxy" else "problems"
                    result.setdefault(where, []).append(
                        f"{pl} round {r} {side}: {s['requests']} answers, {s['errors']} errors "
                        f"{s['errors_by_reason']}")
        med = {side: {k: median_of(rows, k) for k in ("rps", "p50_us", "p99_us", "p999_us")}
               for side, rows in opens.items()}
        added = (med["proxy"]["p99_us"] - med["direct"]["p99_us"]
                 if None not in (med["proxy"]["p99_us"], med["direct"]["p99_us"]) else None)
        added_p50 = (med["proxy"]["p50_us"] - med["direct"]["p50_us"]
                     if None not in (med["proxy"]["p50_us"], med["direct"]["p50_us"]) else None)
        reference = None
        if "haproxy" in med and None not in (med["haproxy"]["p99_us"], med["direct"]["p99_us"]):
            reference = {
                "added_p50_us": med["haproxy"]["p50_us"] - med["direct"]["p50_us"],
                "added_p99_us": med["haproxy"]["p99_us"] - med["direct"]["p99_us"],
            }
        result["pipelines"][pl] = {
            "closed_loop_max": {"runs": closed, "median_rps": max_rps},
            "open_loop_rate": rate,
            "open_loop": opens,
            "median": med,
            "added_p50_us": added_p50,
            "added_p99_us": added,
            "haproxy_reference": reference,
            "target": {"name": "added p99 <= 1 ms at half of the maximum throughput",
                       "met": added is not None and added <= 1000},
        }
    result["valid"] = not result["problems"]
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    s = result["setup"]
    print()
    print("latency scenario -- latency portcullis adds over calling the upstream directly")
    print(f"  machine     {s['machine']['cores']} cores ({s['machine']['cpu']}), Linux "
          f"{s['machine']['kernel']}; load generator, proxy and mock bank share them")
    print(f"  portcullis  {s['revision']}")
    for m in s["method"]:
        print(textwrap.fill(m, 100, initial_indent="  ", subsequent_indent="     "))
    print(f"  runs        {s['connections']} connections, {s['duration']} per run after a "
          f"{s['warmup']} warm-up, {rounds} round(s)")
    for pl, r in result["pipelines"].items():
        print()
        print(f"  {pl}: {s['pipelines'][pl]}")
        print(f"    closed-loop maximum: " + ", ".join(f"{x['rps']:.0f}" for x in r["closed_loop_max"]["runs"])
              + f" req/s -> median {r['closed_loop_max']['median_rps']:.0f}")
        print(f"    open loop at {r['open_loop_rate']:.0f} req/s:")
        print(f"      {'round':<6} {'target':<10} {'answers/s':>10} {'p50 us':>8} {'p99 us':>8} "
              f"{'p99.9 us':>8} {'errors':>6}")
        names = {"proxy": "portcullis", "direct": "mock bank", "haproxy": "haproxy"}
        for side in r["open_loop"]:
            for x in r["open_loop"][side]:
                name = names[side]
                print(f"      {x['round']:<6} {name:<10} {x['rps']:>10.0f} {x['p50_us']:>8} "
                      f"{x['p99_us']:>8} {x['p999_us']:>8} {x['errors']:>6}")
        m = r["median"]
        print(f"      median portcullis p50 {m['proxy']['p50_us']:.0f} us, p99 {m['proxy']['p99_us']:.0f} us;"
              f" mock bank direct p50 {m['direct']['p50_us']:.0f} us, p99 {m['direct']['p99_us']:.0f} us")
        print(f"    added: p50 {r['added_p50_us']:.0f} us, p99 {r['added_p99_us']:.0f} us -> target "
              f"(added p99 <= 1000 us): {'met' if r['target']['met'] else 'NOT met'} in this run")
        if r["haproxy_reference"]:
            h, hm = r["haproxy_reference"], m["haproxy"]
            print(f"    haproxy (reference, same rate): median p50 {hm['p50_us']:.0f} us, p99 "
                  f"{hm['p99_us']:.0f} us -> added p50 {h['added_p50_us']:.0f} us, p99 "
                  f"{h['added_p99_us']:.0f} us")
    if result["problems"]:
        print()
        print("  WARNING: runs with errors; these numbers are not valid:")
        for x in result["problems"]:
            print(f"    {x}")
    if result.get("reference_problems"):
        print()
        print("  HAProxy reference runs with errors (the reference figure counts them; "
              "portcullis's figures stand):")
        for x in result["reference_problems"]:
            print(f"    {x}")
    print()
    print(f"  results: {out}")


def summary(passthrough, token, fapi, latency_json, *scenarios):
    paths = {"passthrough": passthrough, "token": token, "fapi": fapi, "latency": latency_json}
    print("summary (medians of this run):")
    for label in scenarios:
        r = load(paths[label])
        valid = "" if r["valid"] else "   (NOT VALID)"
        if label == "latency":
            for pl, x in r["pipelines"].items():
                print(f"  latency      {pl}: added p99 {x['added_p99_us']:.0f} us at "
                      f"{x['open_loop_rate']:.0f} req/s (target <= 1000 us: "
                      f"{'met' if x['target']['met'] else 'NOT met'}){valid}")
            continue
        base = r["baseline"]
        q = r["ratio_vs_" + base.replace("-", "_")]
        c = "portcullis-fapi" if label == "fapi" else "portcullis"
        m = r["median"]
        print(f"  {label:<12} {c} / {base}: throughput {q[c]['throughput']}  ({m[c]['rps']:.0f} vs "
              f"{m[base]['rps']:.0f} req/s)   p99 {q[c]['p99']}   target "
              f"{'met' if r['target']['met'] else 'NOT met'}{valid}")
        if label == "fapi":
            p = r["ratio_fapi_vs_portcullis_passthrough"]
            print(f"  {'':<12} portcullis-fapi / portcullis pass-through: throughput {p['throughput']}"
                  f"   p99 {p['p99']}")


if __name__ == "__main__":
    {"line": line, "open-rate": open_rate, "final": final, "redis-ratio": redis_ratio,
     "token-info": token_info, "latency": latency, "summary": summary,
     "oha-flatten": oha_flatten, "rows": rows}[sys.argv[1]](*sys.argv[2:])
