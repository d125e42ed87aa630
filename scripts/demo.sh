#!/usr/bin/env bash
# README command 1: builds everything and serves the dashboard with a live
# simulated fleet. Extra arguments go to `sightline serve`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$ROOT/scripts/build.sh"
cd "$ROOT"
echo
echo "Sightline is starting: open http://localhost:3000 (MQTT on port 1883; Ctrl-C stops)"
echo
exec "$SIGHTLINE_BIN" serve --demo --site-root "$ROOT/target/site" "$@"
