#!/usr/bin/env bash
# Behavioural detection, false positives: a realistic FAPI mix from several clients against one
# portcullis with `detection:` at the shipped defaults must raise no alert.
#
# The mix (the load generator's FAPI scenarios, from two certificates and three client ids):
#   tpp1 (Tpp One's certificate)
#     tpp-one-ais   DPoP-bound token (fresh proof per request): the account list, its own two
#                   accounts and their transactions, a balances route that demands DPoP
#                   nonces, and now and then a stale link to a closed account (403 authz.object)
#     tpp-one-pis   DPoP-bound token: domestic payments, OBIE-signed, each with its own
#                   x-idempotency-key (the route requires one)
#     tpp-one-cert  certificate-bound token: the account list
#   tpp2 (Tpp Two's certificate)
#     tpp-two       DPoP-bound token with a short lifetime that it renews only when the proxy
#                   refuses it as expired (401 token.expired, then the request again)
#     tpp-two-cert  certificate-bound token, same renewal
# Open loop, in phases of PHASE at rates taken in turn from RATES, so the throughput is uneven
# (the volume detector sees a client's level change by several times, not by ten).
#
# Prints the alert count per detector (audit records and metrics), requests per client and per
# status and reason (from the audit log), the load generator's totals; exits 1 if anything fired
# or a run failed.
#
# Usage: BIN=target/debug/portcullis bash benches/detection_fp.sh
# Environment: DURATION (10m), PHASE (1m), RATES ("20 40 10 30 60 15" requests/s),
# TOKEN_LIFETIME (20s: tpp2's tokens), VOLUME (empty: the shipped volume detector; e.g.
# '{bucket: 5s, min_requests: 50}' to let it warm up within the run — the shipped warm-up is an
# hour), KEEP_WORKDIR (0), TMPDIR, OUT (target/detection-fp.json). Loopback only; stops by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
DURATION=${DURATION:-10m}
PHASE=${PHASE:-1m}
RATES=${RATES:-"20 40 10 30 60 15"}
TOKEN_LIFETIME=${TOKEN_LIFETIME:-20s}
VOLUME=${VOLUME:-}
BIN_GIVEN=${BIN:-}

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
OUT=$(result_json detection-fp.json)
[[ -n $BIN_GIVEN ]] && BIN=$BIN_GIVEN
[[ -x $BIN ]] || { echo "set BIN to a portcullis binary (cargo build)" >&2; exit 2; }
bench_traps
require_tools curl python3
bench_workdir detection-fp

# 90s, 10m, 1h -> seconds.
seconds() {
    local v=$1
    case $v in
        *ms) echo 0 ;;
        *s) echo "${v%s}" ;;
        *m) echo $((${v%m} * 60)) ;;
        *h) echo $((${v%h} * 3600)) ;;
        *) echo "$v" ;;
    esac
}
TOTAL_S=$(seconds "$DURATION")
PHASE_S=$(seconds "$PHASE")
((TOTAL_S > 0 && PHASE_S > 0)) || die "DURATION and PHASE must be at least 1s"

A=/open-banking/v3.1/aisp/accounts
cat >"$WORK/policies/fp.yaml" <<EOF
# The false-positive mix's routes: FAPI 2.0 reads (DPoP- or certificate-bound tokens), object rules on the account in the path, a DPoP nonce route, payments with required
# idempotency keys.
group: fp
upstream: bank
routes:
  - id: accounts.list
    method: GET
    path: $A
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
  - id: account.get
    method: GET
    path: $A/{AccountId}
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: transactions.get
    method: GET
    path: $A/{AccountId}/transactions
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: balances.get
    method: GET
    path: $A/{AccountId}/balances
    auth: {profile: fapi2, dpop_nonce: true}
    scopes: {all_of: [accounts]}
    rules:
      - {id: own-account, value: {path: AccountId}, in: {claim: accounts}}
  - id: payments.create
    method: POST
    path: /open-banking/v3.1/pisp/domestic-payments
    body_limit: 8192
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    idempotency: required
EOF

read -r -a P < <(free_ports 3; echo)
P_BANK=${P[0]} P_PROXY=${P[1]} P_ADMIN=${P[2]}
start_mock_bank "$P_BANK"

DETECTION="detection: {}"
[[ -n $VOLUME ]] && DETECTION="detection:
  volume: $VOLUME"
portcullis_config "$P_PROXY" "$P_ADMIN" "$(audit_file fp.log)
issuers:
  as:
    issuer: $AS_ISSUER
    audience: $AS_AUDIENCE
    algorithms: [ES256]
    jwks: {file: tokens/as-jwks.json}
    # Tokens end on time, so tpp2's renew-on-expiry path is taken.
    clock_skew: 1s
$DPOP
$DETECTION" policies/fp.yaml >"$WORK/fp.yaml"
start_portcullis "$WORK/fp.yaml" proxy "$P_ADMIN"

# One token block: $1 client id, $2 binding, $3 scopes, $4 claims, $5 extra lines.
token() {
    cat <<EOF
    token:
      signing_key: $TOK/as.key
      kid: as-1
      issuer: $AS_ISSUER
      audience: $AS_AUDIENCE
      client_id: $1
      scopes: [$3]
      claims: $4
      binding: $2
$5
EOF
}

# The scenario for one phase: $1 rate, $2 seconds.
scenario() {
    cat <<EOF
# Generated by benches/detection_fp.sh.
name: detection-fp
target:
  address: 127.0.0.1:$P_PROXY
  server_name: localhost
  ca: $CERTS/ca.pem
  timeout: 10s
clients:
  - name: tpp-one-ais
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key
    weight: 3
$(token tpp-one-ais dpop accounts "{accounts: [acc-1, acc-2]}" "      lifetime: 1h
      dpop_key: $TOK/dpop.key")
  - name: tpp-one-pis
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key
$(token tpp-one-pis dpop payments "{openbanking_intent_id: pdc-demo}" "      lifetime: 1h
      dpop_key: $TOK/dpop.key")
  - name: tpp-one-cert
    cert: $CERTS/tpp1.pem
    key: $CERTS/tpp1.key
$(token tpp-one-ais cert accounts "{}" "      lifetime: 1h")
  - name: tpp-two
    cert: $CERTS/tpp2.pem
    key: $CERTS/tpp2.key
    weight: 2
$(token tpp-two dpop accounts "{accounts: [acc-7]}" "      lifetime: $TOKEN_LIFETIME
      refresh: on_expiry")
  - name: tpp-two-cert
    cert: $CERTS/tpp2.pem
    key: $CERTS/tpp2.key
$(token tpp-two cert accounts "{}" "      lifetime: $TOKEN_LIFETIME
      refresh: on_expiry")
routes:
  - name: accounts.list
    path: $A
    headers: {accept: application/json, x-fapi-interaction-id: "{uuid}"}
    clients: [tpp-one-ais, tpp-two]
    weight: 6
    expect: [200]
  - name: accounts.list.cert
    path: $A
    headers: {accept: application/json}
    clients: [tpp-one-cert, tpp-two-cert]
    weight: 3
    expect: [200]
  - name: tpp1.account
    path: $A/acc-1
    clients: [tpp-one-ais]
    weight: 3
    expect: [200]
  - name: tpp1.transactions
    path: $A/acc-2/transactions
    clients: [tpp-one-ais]
    weight: 2
    expect: [200]
  - name: tpp1.balances
    path: $A/acc-1/balances
    clients: [tpp-one-ais]
    weight: 1
    expect: [200]
  - name: tpp1.stale-link
    path: $A/acc-closed
    clients: [tpp-one-ais]
    weight: 1
    expect: [403]
  - name: tpp2.account
    path: $A/acc-7
    clients: [tpp-two]
    weight: 3
    expect: [200]
  - name: payment
    method: POST
    path: /open-banking/v3.1/pisp/domestic-payments
    headers:
      content-type: application/json
      accept: application/json
      x-fapi-interaction-id: "{uuid}"
      x-idempotency-key: "{uuid}"
    body: {file: $ROOT/benches/scenarios/payment.json}
    jws:
      format: obie
      key: $CERTS/tpp1.key
      kid: tpp-one-signing
      iss: PSDGB-FCA-123456/tpp-one-software-id
    clients: [tpp-one-pis]
    weight: 2
    expect: [201]
load:
  protocol: http1
  mode: open
  rate: $1
  connections: 16
  max_outstanding: 512
  duration: ${2}s
EOF
}

read -r -a RATE_LIST <<<"$RATES"
RAW=$WORK/results
start_s=$SECONDS
phase=0
while ((SECONDS - start_s < TOTAL_S)); do
    left=$((TOTAL_S - (SECONDS - start_s)))
    len=$((left < PHASE_S ? left : PHASE_S))
    rate=${RATE_LIST[$((phase % ${#RATE_LIST[@]}))]}
    phase=$((phase + 1))
    log "phase $phase: $rate requests/s for ${len}s"
    scenario "$rate" "$len" >"$WORK/phase-$phase.yaml"
    run_fg "$BIN" loadgen --scenario "$WORK/phase-$phase.yaml" --json "$RAW/phase-$phase.json" \
        --quiet >"$RAW/phase-$phase.stdout" 2>"$RAW/phase-$phase.stderr" || true
    [[ -s $RAW/phase-$phase.json ]] || { cat "$RAW/phase-$phase.stderr" >&2; die "phase $phase: loadgen failed"; }
done

curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" >"$WORK/metrics.txt"
# The audit writer flushes on its own schedule: give it a moment.
sleep 2

python3 - "$WORK" "$RAW" "$phase" "$OUT" "$DURATION" "$RATES" "$VOLUME" <<'PY'
import collections, glob, json, os, sys
work, raw, phases, out, duration, rates, volume = sys.argv[1:8]
recs = []
for f in sorted(glob.glob(os.path.join(work, "audit", "fp.log*"))):
    with open(f) as fh:
        for line in fh:
            if line.endswith("\n"):
                recs.append(json.loads(line))
requests = [r for r in recs if r.get("kind") == "request"]
alerts = [r for r in recs if r.get("kind") == "alert"]
org = {"PSDGB-FCA-123456": "tpp1", "PSDGB-FCA-654321": "tpp2"}
by_client = collections.Counter(
    f"{org.get(r.get('client_org_id'), r.get('client_org_id', '-'))}/{r.get('client_id', '-')}"
    for r in requests)
by_status = collections.Counter(f"{r.get('status')} {r.get('reason', 'allowed')}" for r in requests)
alerts_by = collections.Counter(a.get("detector") for a in alerts)
fired = {}
for line in open(os.path.join(work, "metrics.txt")):
    if line.startswith("portcullis_detection_fired_total{"):
        det = line.split('detector="', 1)[1].split('"', 1)[0]
        fired[det] = float(line.rsplit(" ", 1)[1])
lg = {"requests": 0, "errors": 0, "token_refreshes": 0, "dpop_nonce_retries": 0}
per_phase = []
for i in range(1, int(phases) + 1):
    s = json.load(open(os.path.join(raw, f"phase-{i}.json")))
    for k in lg:
        lg[k] += s.get(k, 0)
    per_phase.append({"rate": s.get("rate"), "seconds": round(s["seconds"], 1),
                      "requests": s["requests"], "errors": s["errors"]})
print(f"detection false positives: {duration} in {phases} phases at {rates} requests/s; "
      f"volume: {volume or 'shipped'}")
print(f"alerts (audit records): {sum(alerts_by.values())}  by detector: {dict(alerts_by)}")
print("portcullis_detection_fired_total: " + ", ".join(f"{k} {v:g}" for k, v in sorted(fired.items())))
print(f"requests audited: {len(requests)}  (load generator: {lg['requests']} answered, "
      f"{lg['errors']} unexpected, {lg['token_refreshes']} sent again after token.expired, "
      f"{lg['dpop_nonce_retries']} DPoP nonce retries)")
print("requests per client (certificate org / client id):")
for k, v in sorted(by_client.items()):
    print(f"  {k:32} {v}")
print("requests per status and reason:")
for k, v in sorted(by_status.items()):
    print(f"  {k:40} {v}")
json.dump({"duration": duration, "rates": rates, "volume": volume or "shipped",
           "alerts": dict(alerts_by), "fired_total": fired, "requests": len(requests),
           "by_client": dict(by_client), "by_status": dict(by_status), "loadgen": lg,
           "phases": per_phase, "alert_records": alerts}, open(out, "w"), indent=2)
sys.exit(1 if alerts or any(fired.values()) or lg["errors"] else 0)
PY
