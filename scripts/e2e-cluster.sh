#!/usr/bin/env bash
# The browser tests' cluster (playwright.config.ts, project "cluster"):
# scripts/cluster.sh with the binary already built, on a fresh database of
# the tests' PostgreSQL, with the browser tests' accounts. Devices reach it
# through haproxy on MQTT_PORT and browsers through nginx on HTTP_PORT; RUN
# holds the proxies' pid files, which the tests use to kill them.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${MQTT_PORT:?}" "${HTTP_PORT:?}" "${RUN:?}" "${ACCOUNTS:?role=password pairs}"
export SKIP_BUILD=1
rm -rf "$RUN"
mkdir -p "$RUN"

if [[ -z "${SIGHTLINE_TEST_POSTGRES_URL:-}" ]]; then
  # Run on its own (npx playwright test): a PostgreSQL of its own, on a
  # port apart from test.sh's and cluster.sh's.
  source "$ROOT/scripts/postgres.sh"
  PG_PORT=55434
  trap stop_postgres EXIT
  trap 'exit 143' TERM INT
  start_postgres
fi
PGOPTIONS='-c client_min_messages=warning' psql -q "$SIGHTLINE_TEST_POSTGRES_URL" \
  -c 'DROP DATABASE IF EXISTS sightline_e2e_cluster' -c 'CREATE DATABASE sightline_e2e_cluster'
export DB_URL="${SIGHTLINE_TEST_POSTGRES_URL%/*}/sightline_e2e_cluster"
for pair in $ACCOUNTS; do
  echo "${pair#*=}" | "$SIGHTLINE_BIN" user add --role "${pair%%=*}" "${pair%%=*}" --database-url "$DB_URL" >/dev/null
done
# Not exec: the EXIT trap stops a PostgreSQL of its own when the cluster ends.
"$ROOT/scripts/cluster.sh" --open-registration --max-publish-rate 100000
