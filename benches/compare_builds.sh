#!/usr/bin/env bash
# Compares two builds of portcullis on the same machine in one run: an old binary against a new
# one, on the three paths a refactoring must not slow down —
#
#   passthrough  mTLS, route match, forward (policies/bench.yaml)
#   token        + a certificate-bound ES256 access token, scope and a client rate-limit class
#                (policies/bench-token.yaml)
#   fapi         the full FAPI route: mTLS, a DPoP-bound token with a fresh proof per request,
#                scope, an object rule, a rate-limit class, and the audit log to a file
#                (policies/bench-fapi.yaml, driven by a loadgen scenario)
#
# Both builds run side by side against one mock bank, driven by the same load generator (the new
# binary's `loadgen`). Rounds alternate the order (old, new / new, old), so a drift of the
# machine's speed within a round favours neither; the verdict is the median over rounds of the
# per-round ratio new ÷ old, for throughput, and the medians of each side's p50 and p99.
#
# Usage: OLD=path/to/old/portcullis NEW=path/to/new/portcullis bash benches/compare_builds.sh
# Environment: CONNECTIONS (32), DURATION (10s), ROUNDS (5), WARMUP (2s), KEEP_WORKDIR (0),
# TMPDIR (the work directory). The summary is printed and written as JSON to
# $OUT (default: target/compare_builds.json). Loopback only; stops by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
[[ -x ${OLD:-} && -x ${NEW:-} ]] || { echo "set OLD and NEW to two portcullis binaries" >&2; exit 2; }

# shellcheck source=lib.sh
source "$ROOT/benches/lib.sh"
OUT=$(result_json compare_builds.json)
BIN=$NEW
bench_traps
require_tools curl python3
bench_workdir builds
write_policies

read -r -a P < <(free_ports 13; echo)
P_BANK=${P[0]}
P_OLD_PT=${P[1]} A_OLD_PT=${P[2]} P_NEW_PT=${P[3]} A_NEW_PT=${P[4]}
P_OLD_TK=${P[5]} A_OLD_TK=${P[6]} P_NEW_TK=${P[7]} A_NEW_TK=${P[8]}
P_OLD_FA=${P[9]} A_OLD_FA=${P[10]} P_NEW_FA=${P[11]} A_NEW_FA=${P[12]}
start_mock_bank "$P_BANK"

TOKEN=$("$NEW" dev-token access --key "$TOK/as.key" --kid as-1 --issuer "$AS_ISSUER" \
    --audience "$AS_AUDIENCE" --ttl 24h --scope "accounts payments" --cert "$CERTS/tpp1.pem")

# Starts build $1 (old|new) for path $2 on port $3, admin port $4.
start_build() {
    local build=$1 path=$2 port=$3 admin=$4 config=$WORK/$1-$2.yaml
    case $path in
        passthrough) portcullis_config "$port" "$admin" "$AUDIT_NONE" >"$config" ;;
        token) portcullis_config "$port" "$admin" "$AUDIT_NONE
$ISSUERS
$RATE_LIMITS" policies/bench-token.yaml >"$config" ;;
        fapi) fapi_config "$port" "$admin" "$build.log" >"$config" ;;
    esac
    if [[ $build == old ]]; then BIN=$OLD; else BIN=$NEW; fi
    start_portcullis "$config" "$build-$path" "$admin"
    BIN=$NEW
}
start_build old passthrough "$P_OLD_PT" "$A_OLD_PT"
start_build new passthrough "$P_NEW_PT" "$A_NEW_PT"
start_build old token "$P_OLD_TK" "$A_OLD_TK"
start_build new token "$P_NEW_TK" "$A_NEW_TK"
start_build old fapi "$P_OLD_FA" "$A_OLD_FA"
start_build new fapi "$P_NEW_FA" "$A_NEW_FA"

declare -A PORT=([old-passthrough]=$P_OLD_PT [new-passthrough]=$P_NEW_PT
    [old-token]=$P_OLD_TK [new-token]=$P_NEW_TK [old-fapi]=$P_OLD_FA [new-fapi]=$P_NEW_FA)

# One run of $1 (build-path) for $2, JSON report in $3.
drive() {
    local who=$1 duration=$2 out=$3 port=${PORT[$1]}
    case $who in
        *-fapi)
            local file=$WORK/$who-$duration.yaml
            [[ -f $file ]] || fapi_scenario "$port" "  protocol: http1
  mode: closed
  connections: $CONNECTIONS
  duration: $duration" "$FAPI_ROUTE_LOAD" >"$file"
            run_fg "$NEW" loadgen --scenario "$file" --json "$out" >"$out.stdout" 2>"$out.stderr" || true
            [[ -s $out ]] || { cat "$out.stderr" >&2; die "loadgen --scenario against $who failed"; }
            ;;
        *)
            local extra=()
            [[ $who == *-token ]] && extra=(--header "authorization: Bearer $TOKEN")
            run_fg "$NEW" loadgen --addr "127.0.0.1:$port" --server-name localhost --path "$ROUTE" \
                --ca "$CERTS/ca.pem" --cert "$CERTS/tpp1.pem" --key "$CERTS/tpp1.key" \
                --connections "$CONNECTIONS" --duration "$duration" --json "${extra[@]}" \
                >"$out" 2>"$out.stderr" || { cat "$out.stderr" >&2; die "loadgen against $who failed"; }
            ;;
    esac
}

RAW=$WORK/results
for ((round = 1; round <= ROUNDS; round++)); do
    for path in passthrough token fapi; do
        order=(old new)
        ((round % 2 == 0)) && order=(new old)
        for build in "${order[@]}"; do
            log "round $round/$ROUNDS: $build $path"
            drive "$build-$path" "$WARMUP" "$RAW/warmup.json"
            drive "$build-$path" "$DURATION" "$RAW/$build-$path-$round.json"
        done
    done
done

python3 "$ROOT/benches/py/compare_builds.py" "$RAW" "$ROUNDS" "$OLD" "$NEW" "$OUT"
