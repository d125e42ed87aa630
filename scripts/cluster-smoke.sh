#!/usr/bin/env bash
# Starts scripts/cluster.sh (README's scale-out command) with the binary
# already built, publishes through haproxy with mosquitto_pub, and reads the
# reading back through nginx from every instance in turn. Run by test.sh,
# on a fresh database of the tests' PostgreSQL (SIGHTLINE_TEST_POSTGRES_URL).
set -euo pipefail
source "$(dirname "$0")/env.sh"

: "${SIGHTLINE_TEST_POSTGRES_URL:?run by test.sh, which starts PostgreSQL}"
export MQTT_PORT=18830 HTTP_PORT=18080 SKIP_BUILD=1
export RUN="$(mktemp -d /tmp/sightline-cluster-smoke.XXXXXX)"
PGOPTIONS='-c client_min_messages=warning' psql -q "$SIGHTLINE_TEST_POSTGRES_URL" -c 'DROP DATABASE IF EXISTS sightline_cluster_smoke' \
  -c 'CREATE DATABASE sightline_cluster_smoke'
export DB_URL="${SIGHTLINE_TEST_POSTGRES_URL%/*}/sightline_cluster_smoke"
"$ROOT/scripts/cluster.sh" --open-registration >"$RUN/cluster.out" 2>&1 &
cluster=$!
cleanup() {
  kill "$cluster" 2>/dev/null || true
  wait "$cluster" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q '^Sightline cluster:' "$RUN/cluster.out" 2>/dev/null && break
  kill -0 "$cluster" 2>/dev/null || { cat "$RUN/cluster.out"; exit 1; }
  sleep 0.1
done
grep -q '^Sightline cluster:' "$RUN/cluster.out" || { cat "$RUN/cluster.out"; exit 1; }

db="$DB_URL"
echo "smoke-password-$RANDOM$RANDOM" | "$SIGHTLINE_BIN" user add smoke --admin --database-url "$db" >/dev/null 2>>"$RUN/cli.log"
token="$("$SIGHTLINE_BIN" user token smoke --database-url "$db" 2>>"$RUN/cli.log" | tail -n 1 | awk '{print $NF}')"

mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -i smoke-1 -q 1 -t sensor/smoke-1 -m '{"temp":21.5}'
# nginx spreads requests over the instances; each must answer with the
# reading, whichever instance the device's connection went to.
for i in 1 2 3 4; do
  body=""
  for _ in $(seq 1 50); do
    body="$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$HTTP_PORT/api/devices/smoke-1" || true)"
    grep -q '21.5' <<<"$body" && break
    sleep 0.1
  done
  grep -q '21.5' <<<"$body" || { echo "request $i did not see the reading: $body"; cat "$RUN"/*.log; exit 1; }
done
echo "cluster smoke: a reading published through haproxy was served through nginx"
