#!/usr/bin/env bash
# Request and response contracts (OpenAPI) on against off, whole proxy: a FAPI 2.0 payment-
# consent route (mTLS, a DPoP-bound token with a fresh proof per request, the payments scope,
# the audit log to a file) taking a realistic OBIE domestic payment consent body, in two
# instances side by side against one mock bank, identical but for the route's `contract:` (the
# vendored OBIE v4.0.0 Payment Initiation description, operation CreateDomesticPaymentConsents,
# strict, with the answer checked in CONTRACT_RESPONSE mode). Rounds alternate the order
# (off, on / on, off) so a drift of the machine's speed within a round favours neither; the
# verdict is the median over rounds of the paired ratio on ÷ off for throughput. Target: ≥ 0.95.
# It also prints each instance's CPU per request (from /proc, over each round's requests) and
# the contract's share of it, the figure the shared cores blur least.
#
# The mock bank answers the consent with its own body, which does not fit OBIE's response
# schema: under the default (shadow) every answer is read, checked and recorded as drift, the
# cost a bank that drifts pays. CONTRACT_RESPONSE=off measures the request check alone.
#
# Usage: BIN=target/release/portcullis bash benches/contract.sh
# Environment: CONNECTIONS (32), DURATION (10s), ROUNDS (5), WARMUP (2s), CONTRACT_RESPONSE
# (shadow | enforce | off), KEEP_WORKDIR (0), TMPDIR, OUT (target/contract.json). Loopback only;
# stops by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
CONTRACT_RESPONSE=${CONTRACT_RESPONSE:-shadow}
case $CONTRACT_RESPONSE in shadow | enforce | off) ;; *) echo "CONTRACT_RESPONSE: shadow, enforce or off" >&2; exit 2 ;; esac

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
OUT=$(result_json contract.json)
[[ -x $BIN ]] || { echo "set BIN to a portcullis binary (cargo build --release)" >&2; exit 2; }
bench_traps
require_tools curl python3
bench_workdir contract
write_policies

# The mock bank serves payment consents under v3.1; the contract names the operation, not the
# path, so the v4.0.0 description checks the same body there.
CONSENTS=/open-banking/v3.1/pisp/domestic-payment-consents
mkdir -p "$WORK/openapi"
cp "$ROOT/tests/vectors/openapi/obie-payment-initiation-v4.0.0.yaml" "$WORK/openapi/"
route() {
    cat <<EOF
group: bench
upstream: bank
routes:
  - id: pisp.consents.create
    method: POST
    path: $CONSENTS
    body_limit: 16384
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    rate_limit: bench
$1
EOF
}
route "" >"$WORK/policies/bench-consent-off.yaml"
route "    contract: {spec: ../openapi/obie-payment-initiation-v4.0.0.yaml, operation: CreateDomesticPaymentConsents, strict: true, response: $CONTRACT_RESPONSE}" \
    >"$WORK/policies/bench-consent-on.yaml"

# OBWriteDomesticConsent4, as tests/contracts.rs sends it.
cat >"$WORK/consent.json" <<'EOF'
{"Data":{"ReadRefundAccount":"No","Initiation":{"InstructionIdentification":"ACME412","EndToEndIdentification":"FRESCO.21302.GFX.20","LocalInstrument":"UK.OBIE.FPS","InstructedAmount":{"Amount":"165.88","Currency":"GBP"},"CreditorAccount":{"SchemeName":"UK.OBIE.SortCodeAccountNumber","Identification":"08080021325698","Name":"ACME Inc","SecondaryIdentification":"0002"},"RemittanceInformation":{"Unstructured":["Internal ops code 5120101"]}},"Authorisation":{"AuthorisationType":"Single","CompletionDateTime":"2027-01-01T10:00:00+00:00"}},"Risk":{"PaymentContextCode":"TransferToThirdParty","MerchantCategoryCode":"5967","MerchantCustomerIdentification":"053598653254","DeliveryAddress":{"AddressLine":["Flat 7","Acacia Lodge"],"TownName":"Sparsholt","Country":"UK"}}}
EOF

read -r -a P < <(free_ports 5; echo)
P_BANK=${P[0]} P_OFF=${P[1]} A_OFF=${P[2]} P_ON=${P[3]} A_ON=${P[4]}
start_mock_bank "$P_BANK"

consent_config() {
    portcullis_config "$1" "$2" "$(audit_file "$3")
$ISSUERS
$DPOP
$RATE_LIMITS" "$4"
}
consent_config "$P_OFF" "$A_OFF" off.log policies/bench-consent-off.yaml >"$WORK/off.yaml"
consent_config "$P_ON" "$A_ON" on.log policies/bench-consent-on.yaml >"$WORK/on.yaml"
start_portcullis "$WORK/off.yaml" off "$A_OFF"
PID_OFF=$STARTED_PID
start_portcullis "$WORK/on.yaml" on "$A_ON"
PID_ON=$STARTED_PID
declare -A PORT=([off]=$P_OFF [on]=$P_ON)
declare -A PID=([off]=$PID_OFF [on]=$PID_ON)

# The headers OBIE requires of a consent POST. The load generator signs each body (the route
# verifies no request signature, but the description requires x-jws-signature), the same cost
# on both instances.
CONSENT_LOAD="  - name: consent
    method: POST
    path: $CONSENTS
    clients: [tpp-one]
    headers:
      content-type: application/json
      x-idempotency-key: \"{uuid}\"
    body: {file: $WORK/consent.json}
    jws:
      format: obie
      profile: obie-3.1.4
      key: $CERTS/tpp1.key
      kid: tpp-one-signing
      iss: PSDGB-FCA-123456/tpp-one-software-id
      tan: openbanking.org.uk
    expect: [201]"

# One run against $1 (off|on) for $2, JSON report in $3.
drive() {
    local who=$1 duration=$2 out=$3 file=$WORK/$1-$2.yaml
    [[ -f $file ]] || fapi_scenario "${PORT[$1]}" "  protocol: http1
  mode: closed
  connections: $CONNECTIONS
  duration: $duration" "$CONSENT_LOAD" >"$file"
    run_fg "$BIN" loadgen --scenario "$file" --json "$out" >"$out.stdout" 2>"$out.stderr" || true
    [[ -s $out ]] || { cat "$out.stderr" >&2; die "loadgen --scenario against $who failed"; }
}

RAW=$WORK/results
mkdir -p "$RAW"
for ((round = 1; round <= ROUNDS; round++)); do
    order=(off on)
    ((round % 2 == 0)) && order=(on off)
    for who in "${order[@]}"; do
        log "round $round/$ROUNDS: contract $who"
        drive "$who" "$WARMUP" "$RAW/warmup.json"
        before=$(cpu_ticks "${PID[$who]}")
        drive "$who" "$DURATION" "$RAW/$who-$round.json"
        echo $(($(cpu_ticks "${PID[$who]}") - before)) >"$RAW/$who-$round.ticks"
    done
done

# The validated instance must really have validated: its records carry the contract's outcome.
grep -q '"contract":{"operation":"CreateDomesticPaymentConsents"' "$WORK/audit/on.log" ||
    die "the validated instance recorded no contract check (see $WORK/audit/on.log)"

python3 - "$RAW" "$ROUNDS" "$OUT" "$CONTRACT_RESPONSE" <<'PY'
import json, statistics, sys
raw, rounds, out, response = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
HZ = 100  # USER_HZ: /proc/PID/stat counts CPU time in 1/100 s
def flat(w, r):
    s = json.load(open(f"{raw}/{w}-{r}.json")); lat = s.get("latency", s)
    n = s.get("requests") or 1
    ticks = int(open(f"{raw}/{w}-{r}.ticks").read())
    return {"rps": s["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
            "errors": s.get("errors", 0), "cpu_us": ticks * 1e6 / HZ / n}
runs = {w: [flat(w, r) for r in range(1, rounds + 1)] for w in ["off", "on"]}
bad = [f"{w} round {i}: {r['errors']} errors" for w, rs in runs.items()
       for i, r in enumerate(rs, 1) if r["errors"]]
ratios = [n["rps"] / o["rps"] for o, n in zip(runs["off"], runs["on"])]
med = {w: {k: statistics.median(r[k] for r in rs) for k in ["rps", "p50_us", "p99_us", "cpu_us"]}
       for w, rs in runs.items()}
ratio = statistics.median(ratios)
# The proxy's own CPU per request: the figure the shared cores blur least.
extra = statistics.median(n["cpu_us"] - o["cpu_us"] for o, n in zip(runs["off"], runs["on"]))
print(f"consent  off {med['off']['rps']:.0f} req/s  on (response: {response}) "
      f"{med['on']['rps']:.0f} req/s  on/off {ratio:.3f} (target >= 0.95)  "
      f"paired {['%.3f' % r for r in ratios]}")
print(f"proxy CPU per request: off {med['off']['cpu_us']:.1f} µs, on {med['on']['cpu_us']:.1f} µs, "
      f"the contract's share (median of the paired differences) {extra:.1f} µs")
json.dump({"median": med, "paired_ratios": ratios, "ratio_on_over_off": ratio,
           "contract_cpu_us_per_request": extra,
           "response": response, "target": 0.95, "problems": bad}, open(out, "w"), indent=2)
for b in bad:
    print("error:", b, file=sys.stderr)
sys.exit(1 if bad or ratio < 0.95 else 0)
PY
