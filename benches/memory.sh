#!/usr/bin/env bash
# Memory targets (issue #8): <= 64 MiB RSS with 1,000 idle keep-alive connections, and
# <= 256 MiB after 1M distinct rate-limit keys -- measured end to end on a release build.
#
# Part 1, idle connections: portcullis runs the full config (mTLS required + CRL, the
# pass-through route and the full-FAPI route with issuer, DPoP replay cache, rate-limit class,
# audit log to a file). python3's ssl module opens IDLE_CONNECTIONS mTLS connections with TPP
# One's certificate (loopback), sends one GET on each (keep-alive), reads the answer and then
# holds every connection idle for IDLE_HOLD. The proxy's VmRSS/VmHWM (/proc/PID/status), open
# descriptors and portcullis_connections_active are read before, once all are connected, and at
# the end of the hold.
#
# Part 2, rate-limit keys: a second portcullis whose route takes an optional client
# certificate and a bearer token, with a rate-limit class. Without a certificate the class keys
# on the verified token's client_id (src/pipeline/ratelimit.rs: certificate thumbprint, else
# token client_id, else peer IP), so KEYS distinct keys need KEYS distinct tokens: DRIVERS
# python3 processes each mint their share of EdDSA access tokens (client_id of 43 characters,
# the length of a certificate thumbprint: the keys are as long as real ones) and pipeline them
# over one TLS connection each, BATCH requests at a time. The token cache is off
# (tokens.cache_entries: 0) and the audit sink is none, so that neither holds per-request
# memory; the DPoP replay cache is unused (bearer tokens). The class allows one request per
# KEY_REFILL per client (burst 1): before the feed, two requests with one token prove that it
# really keys on client_id (the second is refused with 429); every one of the KEYS requests
# must then be answered 200. Maintenance (every MAINTENANCE: governor's retain_recent +
# shrink_to_fit) drops a key once its theoretical arrival time is one replenish period in the
# past, i.e. 2 x KEY_REFILL after its one request (governor 0.10: drop_below = now - t); so
# while the feed is shorter than that, all KEYS keys are held at its end (checked). RSS is read
# before the feed, every 5 s during it, right after it, and every 5 s until every key is
# droppable and one more maintenance pass has run.
#
# Not measured here: the pre-authentication limit per peer IP (one loopback address: one key;
# 1M source addresses would need 1M TLS handshakes). src/state/ratelimit.rs has an in-process
# harness for the limiter alone (`cargo test --release --lib ratelimit::tests::one_million_keys
# -- --ignored --nocapture`).
#
# Knobs (environment):
#   PART=all              idle | keys | all
#   IDLE_CONNECTIONS=1000 connections held idle
#   IDLE_HOLD=30s         how long they are held (seconds, `s` optional); the instance's
#                         idle_timeout and header_read_timeout are set above it
#   KEYS=1000000          distinct rate-limit keys
#   DRIVERS=2             python3 processes feeding keys (one TLS connection each)
#   BATCH=200             pipelined requests per write
#   KEY_REFILL=150s       one request per client per KEY_REFILL; 2 x it must exceed the feed
#   MAINTENANCE=10s       rate_limits.maintenance_interval of the keys instance
#   KEYS_TIMEOUT=1200     seconds the feed may take before it is stopped (a failure)
#   BUILD=1               0 skips `cargo build --release`
#   KEEP_WORKDIR=0        1 keeps the temporary directory
# Needs python3 with the `cryptography` package for part 2 (python3-cryptography).
#
# Time: part 1 ~ IDLE_HOLD + 10 s; part 2 ~ feed (KEYS / request rate: about 3 minutes for 1M
# keys at ~5,500 req/s on the 2-core VM) + 2 x KEY_REFILL + MAINTENANCE: about 9 minutes.
# Results: target/memory.json. Loopback only; everything started is stopped on exit.
#
# Example: PART=idle IDLE_HOLD=3 benches/memory.sh
#          PART=keys KEYS=20000 KEY_REFILL=20s MAINTENANCE=5s benches/memory.sh
set -euo pipefail

PART=${PART:-all}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}
IDLE_HOLD=${IDLE_HOLD:-30s}
KEYS=${KEYS:-1000000}
DRIVERS=${DRIVERS:-2}
BATCH=${BATCH:-200}
MAINTENANCE=${MAINTENANCE:-10s}
KEY_REFILL=${KEY_REFILL:-150s}
KEYS_TIMEOUT=${KEYS_TIMEOUT:-1200}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_traps
RESULT_JSON=$TARGET_DIR/memory.json

case $PART in idle | keys | all) ;; *) die "PART must be idle, keys or all (got '$PART')" ;; esac
want_part() { [[ $PART == all || $PART == "$1" ]]; }
secs() { local v=${1%s}; [[ $v =~ ^[0-9]+$ ]] || die "$2 must be whole seconds (got '$1')"; echo "$v"; }
IDLE_HOLD_S=$(secs "$IDLE_HOLD" IDLE_HOLD)
MAINTENANCE_S=$(secs "$MAINTENANCE" MAINTENANCE)
KEY_REFILL_S=$(secs "$KEY_REFILL" KEY_REFILL)
for v in IDLE_CONNECTIONS KEYS DRIVERS BATCH KEYS_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
require_tools python3 curl
if want_part keys && ! python3 -c 'import cryptography' 2>/dev/null; then
    die "part 2 needs python3's cryptography package (apt-get install python3-cryptography)"
fi
if want_part idle && (($(ulimit -n) < IDLE_CONNECTIONS + 100)); then
    ulimit -n $((IDLE_CONNECTIONS + 200)) 2>/dev/null ||
        die "open-file limit $(ulimit -n) is below IDLE_CONNECTIONS + 100"
fi

ensure_binary
bench_workdir memory
write_policies
read -r P_BANK P_FULL P_FULL_ADMIN P_KEYS P_KEYS_ADMIN < <(free_ports 5)
start_mock_bank "$P_BANK"
PC_REV=$(revision)

# Reads "VmRSS VmHWM fds" of a process, in KiB/KiB/count.
proc_line() { echo "$(status_kib "$1" VmRSS) $(status_kib "$1" VmHWM) $(fd_count "$1")"; }
active_connections() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '$1 == "portcullis_connections_active" { print $2 }'
}

# --- part 1: idle keep-alive connections -----------------------------------------------------

IDLE_JSON=$WORK/results/idle.json
if want_part idle; then
    # Both routes in one policy file (the full config's routes).
    cat "$WORK/policies/bench.yaml" >"$WORK/policies/full.yaml"
    sed -n '/^  - id: aisp.accounts.get/,$p' "$WORK/policies/bench-fapi.yaml" >>"$WORK/policies/full.yaml"
    # Both timeouts above the hold: hyper's header_read_timeout also closes a keep-alive
    # connection that waits that long for its next request (see README, Performance).
    IDLE_TIMEOUT=$((IDLE_HOLD_S + 120))s HEADER_READ_TIMEOUT=$((IDLE_HOLD_S + 60))s portcullis_config "$P_FULL" "$P_FULL_ADMIN" \
        "$(audit_file full.log)
$ISSUERS
$RATE_LIMITS" policies/full.yaml >"$WORK/full.yaml"
    start_portcullis "$WORK/full.yaml" full "$P_FULL_ADMIN"
    PID_FULL=$STARTED_PID
    # One request first, so that the baseline includes a warm upstream pool and audit writer.
    curl -s -o /dev/null --resolve "localhost:$P_FULL:127.0.0.1" "${CURL_MTLS[@]}" \
        "https://localhost:$P_FULL$ROUTE"
    sleep 1
    read -r RSS0 HWM0 FD0 < <(proc_line "$PID_FULL")
    log "idle: baseline VmRSS ${RSS0} KiB, VmHWM ${HWM0} KiB, ${FD0} fds; opening $IDLE_CONNECTIONS connections"

    cat >"$WORK/idle.py" <<'EOF'
# Opens N mTLS keep-alive connections, one GET on each, then holds them until the stop file
# appears (or the deadline passes); writes "ready" to the ready file once all are answered.
import os, socket, ssl, sys, time
port, n, certs, path, ready, stop, deadline = sys.argv[1:8]
n, deadline = int(n), time.time() + float(deadline)
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
ctx.load_cert_chain(f"{certs}/tpp1.pem", f"{certs}/tpp1.key")
req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
conns, statuses = [], {}
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"connection {i} closed before an answer")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = lines[0].split()[1]
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    statuses[status] = statuses.get(status, 0) + 1
    conns.append(s)
with open(ready, "w") as f:
    f.write(" ".join(f"{k}:{v}" for k, v in statuses.items()))
while not os.path.exists(stop) and time.time() < deadline:
    time.sleep(0.1)
# Still open? A closed connection reads b"" at once.
for s in conns:
    s.setblocking(False)
closed = 0
for s in conns:
    try:
        if s.recv(1) == b"":
            closed += 1
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    except OSError:
        closed += 1
with open(stop + ".result", "w") as f:
    f.write(str(closed))
EOF
    T0=$EPOCHREALTIME
    start_bg "$WORK/idle-client.log" python3 "$WORK/idle.py" "$P_FULL" "$IDLE_CONNECTIONS" \
        "$CERTS" "$ROUTE" "$WORK/idle.ready" "$WORK/idle.stop" $((IDLE_HOLD_S + 300))
    PID_IDLE=$STARTED_PID
    while [[ ! -s $WORK/idle.ready ]]; do
        kill -0 "$PID_IDLE" 2>/dev/null || { cat "$WORK/idle-client.log" >&2; die "the idle-connection client failed"; }
        sleep 0.2
    done
    OPEN_S=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    IDLE_STATUSES=$(cat "$WORK/idle.ready")
    sleep 1
    read -r RSS1 HWM1 FD1 < <(proc_line "$PID_FULL")
    ACTIVE1=$(active_connections "$P_FULL_ADMIN")
    log "idle: $IDLE_CONNECTIONS connected in ${OPEN_S} s (answers $IDLE_STATUSES); VmRSS ${RSS1} KiB, ${FD1} fds, ${ACTIVE1} active; holding ${IDLE_HOLD_S} s"
    sleep "$IDLE_HOLD_S"
    read -r RSS2 HWM2 FD2 < <(proc_line "$PID_FULL")
    ACTIVE2=$(active_connections "$P_FULL_ADMIN")
    touch "$WORK/idle.stop"
    wait "$PID_IDLE" || die "the idle-connection client failed (log: $WORK/idle-client.log)"
    forget_pid "$PID_IDLE"
    CLOSED=$(cat "$WORK/idle.stop.result")
    log "idle: after ${IDLE_HOLD_S} s VmRSS ${RSS2} KiB, VmHWM ${HWM2} KiB, ${FD2} fds, ${ACTIVE2} active; $CLOSED closed by the proxy"
    python3 - "$IDLE_JSON" <<EOF
import json, sys
n = $IDLE_CONNECTIONS
r = {
    "connections": n, "answers": "$IDLE_STATUSES", "open_seconds": $OPEN_S,
    "hold_seconds": $IDLE_HOLD_S, "closed_by_proxy_during_hold": $CLOSED,
    "baseline": {"vmrss_kib": $RSS0, "vmhwm_kib": $HWM0, "fds": $FD0},
    "connected": {"vmrss_kib": $RSS1, "vmhwm_kib": $HWM1, "fds": $FD1, "active": "$ACTIVE1"},
    "after_hold": {"vmrss_kib": $RSS2, "vmhwm_kib": $HWM2, "fds": $FD2, "active": "$ACTIVE2"},
    "per_connection_kib": round(($RSS2 - $RSS0) / n, 1),
    "target": {"name": "<= 64 MiB RSS with 1,000 idle keep-alive connections",
               "limit_kib": 65536, "vmrss_kib": max($RSS1, $RSS2),
               "met": max($RSS1, $RSS2) <= 65536 and n >= 1000 and $CLOSED == 0
                      and "$IDLE_STATUSES" == f"200:{n}"},
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
EOF
    stop_started "$PID_FULL"
fi

# --- part 2: 1M distinct rate-limit keys ----------------------------------------------------

KEYS_JSON=$WORK/results/keys.json
if want_part keys; then
    # The route: optional client certificate, a bearer token, the `keys` class keyed on the
    # token's client_id. Burst 1, refilled after KEY_REFILL: a second request with the same
    # token is refused, a key may be dropped 2 x KEY_REFILL after its request.
    cat >"$WORK/policies/keys.yaml" <<EOF
group: keys
upstream: bank
routes:
  - id: keys.accounts.list
    method: GET
    path: $ROUTE
    body_limit: 0
    client_cert: optional
    auth: {profile: bearer}
    rate_limit: keys
EOF
    python3 - "$WORK/keys" <<'EOF'
# An Ed25519 authorization-server key and its JWKS (kid keys-1).
import base64, json, os, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
k = ed25519.Ed25519PrivateKey.generate()
open(f"{d}/as.key", "wb").write(k.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
x = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "keys-1", "alg": "EdDSA", "use": "sig",
       "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode()}
json.dump({"keys": [jwk]}, open(f"{d}/jwks.json", "w"))
EOF
    portcullis_config "$P_KEYS" "$P_KEYS_ADMIN" "$AUDIT_NONE
issuers:
  as:
    issuer: $AS_ISSUER
    audience: $AS_AUDIENCE
    algorithms: [EdDSA]
    jwks: {file: keys/jwks.json}
tokens:
  cache_entries: 0
rate_limits:
  classes:
    keys: {rate: 1, per: ${KEY_REFILL_S}s, burst: 1}
  maintenance_interval: ${MAINTENANCE_S}s" policies/keys.yaml |
        sed 's/client_auth: required/client_auth: optional/' >"$WORK/keys.yaml"
    start_portcullis "$WORK/keys.yaml" keys "$P_KEYS_ADMIN"
    PID_KEYS=$STARTED_PID

    cat >"$WORK/feed.py" <<'EOF'
# Feeds distinct client_ids (one fresh EdDSA token each) over one TLS connection without a
# client certificate, BATCH pipelined requests per write. Prints JSON: statuses, seconds.
#   feed.py PORT CERTS KEYDIR ISS AUD PATH FIRST COUNT BATCH DEADLINE [SAME]
# SAME=1: COUNT requests all with the token of client FIRST (the keying check).
import base64, json, socket, ssl, sys, time
from cryptography.hazmat.primitives import serialization
port, certs, keydir, iss, aud, path = sys.argv[1:7]
first, count, batch, deadline = (int(x) for x in sys.argv[7:11])
same = len(sys.argv) > 11 and sys.argv[11] == "1"
deadline += time.time()
key = serialization.load_pem_private_key(open(f"{keydir}/as.key", "rb").read(), None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": "keys-1"}).encode())
now = int(time.time())
def token(i):
    # client_id: 43 characters, like an x5t#S256 thumbprint.
    c = (f'{{"iss":"{iss}","aud":"{aud}","sub":"psu","client_id":"c{i:042d}",'
         f'"scope":"accounts","iat":{now},"exp":{now + 7200},"jti":"j{i}"}}').encode()
    si = head + b"." + b64(c)
    return si + b"." + b64(key.sign(si))
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
pre = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ".encode()
buf, statuses, reasons, done, t0 = b"", {}, {}, 0, time.time()

def read_one():
    """One response from buf (reading more as needed): its status and body."""
    global buf
    while b"\r\n\r\n" not in buf:
        more = s.recv(262144)
        if not more:
            raise SystemExit("the proxy closed the connection")
        buf += more
    head_end = buf.index(b"\r\n\r\n")
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    status = lines[0].split()[1]
    hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    buf = buf[head_end + 4:]
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while len(buf) < n:
            buf += s.recv(262144)
        body, buf = buf[:n], buf[n:]
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(262144)
            size_line, rest = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += s.recv(262144)
            body += rest[:size]
            buf = rest[size + 2:]
            if size == 0:
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    buf += s.recv(262144)
                buf = buf[2:] if buf.startswith(b"\r\n") else buf[buf.index(b"\r\n\r\n") + 4:]
                break
    else:
        body = b""
    return status, body

while done < count:
    if time.time() > deadline:
        raise SystemExit(f"deadline passed after {done} of {count} requests")
    n = min(batch, count - done)
    ids = [first] * n if same else range(first + done, first + done + n)
    s.sendall(b"".join(pre + token(i) + b"\r\n\r\n" for i in ids))
    for _ in range(n):
        st, body = read_one()
        statuses[st] = statuses.get(st, 0) + 1
        if st != "200":
            try:
                r = json.loads(body).get("reason", "(none)")
            except ValueError:
                r = "(not json)"
            reasons[r] = reasons.get(r, 0) + 1
    done += n
print(json.dumps({"statuses": statuses, "reasons": reasons, "seconds": round(time.time() - t0, 2)}))
EOF
    feed() { # first count batch [same] -> JSON on stdout
        python3 "$WORK/feed.py" "$P_KEYS" "$CERTS" "$WORK/keys" "$AS_ISSUER" "$AS_AUDIENCE" \
            "$ROUTE" "$@"
    }
    # The keying check: two requests with one token at once (burst 1): 200 then 429.
    CHECK=$(feed 0 2 2 30 1)
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if r["statuses"] == {"200": 1, "429": 1} and r["reasons"] == {"rate_limit.client": 1} else 1)' "$CHECK" ||
        die "keying check: two requests with one token should answer 200 then 429 rate_limit.client (got $CHECK)"
    log "keys: the class keys on the token's client_id (one token twice at once: $CHECK)"
    # Warm-up: a few distinct keys (held in the baseline: 2,000 of them), then the baseline.
    feed 1 2000 "$BATCH" 60 >/dev/null
    sleep 1
    read -r KRSS0 KHWM0 KFD0 < <(proc_line "$PID_KEYS")
    log "keys: baseline VmRSS ${KRSS0} KiB, VmHWM ${KHWM0} KiB; feeding $KEYS distinct keys over $DRIVERS connection(s)"

    # The feed: DRIVERS processes, distinct id ranges (from 10^6 on, away from the warm-up's).
    per=$(((KEYS + DRIVERS - 1) / DRIVERS))
    FEED_PIDS=()
    T0=$EPOCHREALTIME
    for ((d = 0; d < DRIVERS; d++)); do
        first=$((1000000 + d * per))
        n=$((d == DRIVERS - 1 ? KEYS - d * per : per))
        start_bg "$WORK/feed-$d.json" python3 "$WORK/feed.py" "$P_KEYS" "$CERTS" "$WORK/keys" \
            "$AS_ISSUER" "$AS_AUDIENCE" "$ROUTE" "$first" "$n" "$BATCH" "$KEYS_TIMEOUT"
        FEED_PIDS+=("$STARTED_PID")
    done
    # RSS while feeding, every 5 s.
    : >"$WORK/keys-rss.tsv"
    while :; do
        running=0
        for p in "${FEED_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
        ((running)) || break
        printf '%s\t%s\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')" \
            "$(status_kib "$PID_KEYS" VmRSS)" >>"$WORK/keys-rss.tsv"
        sleep 5
    done
    for p in "${FEED_PIDS[@]}"; do
        wait "$p" || { cat "$WORK"/feed-*.json >&2; die "a key feeder failed"; }
        forget_pid "$p"
    done
    FEED_S=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    read -r KRSS1 KHWM1 KFD1 < <(proc_line "$PID_KEYS")
    log "keys: $KEYS keys fed (done within ${FEED_S} s); VmRSS ${KRSS1} KiB, VmHWM ${KHWM1} KiB"
    # After maintenance: every 5 s until the last key is droppable (2 x KEY_REFILL after its
    # request) and one more maintenance pass has run (the drops show when retain_recent runs).
    WAIT_S=$((2 * KEY_REFILL_S + MAINTENANCE_S + 5))
    log "keys: waiting ${WAIT_S} s for every key to be idle and maintenance to drop it"
    : >"$WORK/keys-after.tsv"
    T1=$EPOCHREALTIME
    for ((i = 0; i < (WAIT_S + 4) / 5; i++)); do
        sleep 5
        printf '%s\t%s\n' "$(awk -v a="$T1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')" \
            "$(status_kib "$PID_KEYS" VmRSS)" >>"$WORK/keys-after.tsv"
    done
    read -r KRSS2 KHWM2 KFD2 < <(proc_line "$PID_KEYS")
    KRSSANON2=$(status_kib "$PID_KEYS" RssAnon)
    log "keys: after maintenance VmRSS ${KRSS2} KiB (RssAnon ${KRSSANON2} KiB)"
    python3 - "$KEYS_JSON" "$WORK" "$DRIVERS" <<EOF
import json, sys
out, work, drivers = sys.argv[1], sys.argv[2], int(sys.argv[3])
statuses, reasons, feed_s = {}, {}, 0
for d in range(drivers):
    r = json.loads(open(f"{work}/feed-{d}.json").read().strip().splitlines()[-1])
    feed_s = max(feed_s, r["seconds"])
    for k, v in r["statuses"].items():
        statuses[k] = statuses.get(k, 0) + v
    for k, v in r["reasons"].items():
        reasons[k] = reasons.get(k, 0) + v
tsv = lambda f: [[float(x) for x in l.split()] for l in open(f"{work}/{f}") if l.strip()]
keys = $KEYS
r = {
    "keys": keys, "feed_seconds": feed_s, "feed_rate": round(keys / max(feed_s, 0.001)),
    "statuses": statuses, "reasons": reasons, "keying_check": json.loads('$CHECK'),
    "baseline": {"vmrss_kib": $KRSS0, "vmhwm_kib": $KHWM0},
    "after_feed": {"vmrss_kib": $KRSS1, "vmhwm_kib": $KHWM1},
    "after_maintenance": {"vmrss_kib": $KRSS2, "vmhwm_kib": $KHWM2, "rssanon_kib": $KRSSANON2,
                          "wait_seconds": $WAIT_S},
    "key_refill_s": $KEY_REFILL_S,
    "all_keys_held_at_end_of_feed": feed_s < 2 * $KEY_REFILL_S,
    "bytes_per_key": round(($KRSS1 - $KRSS0) * 1024 / keys),
    "rss_while_feeding": tsv("keys-rss.tsv"),
    "rss_after_feed": tsv("keys-after.tsv"),
    "maintenance_interval_s": $MAINTENANCE_S,
    "how": "end to end: KEYS distinct EdDSA tokens (client_id 43 chars) over DRIVERS pipelined "
           "TLS connections without a client certificate; the class keys on cid:<client_id>; "
           "token cache off, audit none",
    "target": {"name": "<= 256 MiB after 1M distinct rate-limit keys", "limit_kib": 262144,
               "vmrss_kib": max($KRSS1, $KHWM1),
               "met": max($KRSS1, $KHWM1) <= 262144 and keys >= 1000000
                      and statuses == {"200": keys} and feed_s < 2 * $KEY_REFILL_S},
}
json.dump(r, open(out, "w"), indent=2)
EOF
    stop_started "$PID_KEYS"
fi

# --- report ----------------------------------------------------------------------------------

mkdir -p "$TARGET_DIR"
python3 - "$RESULT_JSON" "$IDLE_JSON" "$KEYS_JSON" "$PC_REV" "$(nproc)" <<'EOF'
import json, os, sys
out, idle_p, keys_p, rev, cores = sys.argv[1:6]
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
EOF
