#!/usr/bin/env bash
# A side-by-side check of `make bench` item 5, taken without the bench's code (issue #12).
#
# It starts the service, bench/bare_app.py and the stack's floor (bench/floor_app.py: the
# service's promised work written plainly, without its code) under the shipped gunicorn
# configuration with plain `gunicorn`, provisions an account with the `media-service` CLI,
# uploads 1 KiB with curl and drives each endpoint with ApacheBench (`ab`, keep-alive) instead
# of wrk, alternating the seven endpoints ROUNDS times. It prints each run, the median ratios to
# bare Flask, and each service endpoint's ratio to its floor.
#
#   scripts/side-by-side.sh            # needs .venv (make install) and ab (apt install apache2-utils)
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNECTIONS=32 scripts/side-by-side.sh
#
# Both servers bind 127.0.0.1 on free ports, keep their data in a temporary directory and are
# stopped by PID when the script exits.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-32}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN="$HERE/.venv/bin"
WORK=$(mktemp -d -t media-side-by-side-XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v ab >/dev/null || { echo "ab not found: apt-get install apache2-utils" >&2; exit 2; }

free_port() {
    "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME APP: gunicorn with the shipped configuration, data and logs under $WORK/NAME; its
# port in $WORK/NAME/port. Not run in a $(...) subshell: PIDS must reach the exit trap.
start() {
    local name=$1 app=$2 port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    (cd "$HERE" && exec env MEDIA_DATA_DIR="$WORK/$name" PORT="$port" \
        PROMETHEUS_MULTIPROC_DIR="$WORK/$name/metrics" \
        "$BIN/gunicorn" --config config/gunicorn.conf.py "$app" \
        >"$WORK/$name/out.log" 2>"$WORK/$name/err.log") &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
            echo "$port" >"$WORK/$name/port"
            return
        fi
        sleep 0.1
    done
    echo "$name did not start; see $WORK/$name/err.log" >&2
    exit 1
}

start service app:app
start bare bench.bare_app:app
start floor bench.floor_app:app
service_port=$(cat "$WORK/service/port")
bare_port=$(cat "$WORK/bare/port")
floor_port=$(cat "$WORK/floor/port")
# Both apps' workers answer before the first run (gunicorn forks them after /healthz can answer).
sleep 2

account=$(cd "$HERE" && MEDIA_DATA_DIR="$WORK/service" "$BIN/media-service" accounts create)
key=$(echo "$account" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
secret=$(echo "$account" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["api_secret"])')
auth="Authorization: Basic $(printf '%s:%s' "$key" "$secret" | base64 -w0)"
head -c 1024 /dev/urandom >"$WORK/one-kib.bin"
item=$(curl -fs -H "$auth" -F "filedata=@$WORK/one-kib.bin" "http://127.0.0.1:$service_port/v3/media" |
    "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')

declare -A URL HEADER
URL[bare]="http://127.0.0.1:$bare_port/bare"
URL[info]="http://127.0.0.1:$service_port/v3/media/$item/info"
URL[download]="http://127.0.0.1:$service_port/v3/media/$item"
URL[healthz]="http://127.0.0.1:$service_port/healthz"
HEADER[bare]="X-Side-By-Side: 1"
HEADER[info]=$auth
HEADER[download]=$auth
HEADER[healthz]="X-Side-By-Side: 1"
floor_item=00000000-0000-4000-8000-000000000001  # bench/floor_app.py ITEM_ID
floor_auth="Authorization: Basic $(printf 'floorkey:floor-secret-0123456789' | base64 -w0)"
URL[floor-info]="http://127.0.0.1:$floor_port/floor/info/$floor_item"
URL[floor-download]="http://127.0.0.1:$floor_port/floor/download/$floor_item"
URL[floor-healthz]="http://127.0.0.1:$floor_port/healthz"
HEADER[floor-info]=$floor_auth
HEADER[floor-download]=$floor_auth
HEADER[floor-healthz]="X-Side-By-Side: 1"
NAMES=(bare info floor-info download floor-download healthz floor-healthz)

# run NAME SECONDS: requests per second from one ab run (fails on any non-2xx answer).
run() {
    local name=$1 seconds=$2 out
    out=$(ab -q -k -c "$CONNECTIONS" -t "$seconds" -n 100000000 -H "${HEADER[$name]}" "${URL[$name]}" 2>&1)
    if grep -q "^Non-2xx responses" <<<"$out"; then
        echo "$name: non-2xx answers" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/^Requests per second:/ {print $4}' <<<"$out"
}

for name in "${NAMES[@]}"; do run "$name" 2 >/dev/null; done  # warm both apps' workers

declare -A RESULTS
echo "ab -k -c $CONNECTIONS, $SECONDS_PER_RUN s per run, $ROUNDS rounds, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    line="round $round:"
    for name in "${NAMES[@]}"; do
        rate=$(run "$name" "$SECONDS_PER_RUN")
        RESULTS[$name]="${RESULTS[$name]:-} $rate"
        line+=" $name $rate"
    done
    echo "$line"
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
bare=$(median "${RESULTS[bare]}")
echo "medians (req/s): bare Flask $bare"
for name in info download healthz; do
    rate=$(median "${RESULTS[$name]}")
    floor=$(median "${RESULTS[floor-$name]}")
    awk -v n="$name" -v r="$rate" -v b="$bare" -v f="$floor" 'BEGIN {printf "  %-9s %8.0f req/s  ratio %.2f   floor %8.0f req/s  ratio %.2f   service/floor %.2f\n", n, r, r / b, f, f / b, r / f}'
done
