#!/usr/bin/env bash
# The issue-5 chart benchmarks (BENCHMARKS.md): series API times over a year
# of 1-minute readings, then the page's time to first chart for the 1 y
# view in Chromium, against that same database. Needs scripts/build.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

report="$("$SIGHTLINE_BIN" bench --scenario history --keep)"
echo "$report"
dir="$(awk '/^kept/ {print $2}' <<<"$report")"
# The page needs a signed-in viewer; perf/first-chart.spec.ts signs in as it.
echo "perf-viewer-password" | "$SIGHTLINE_BIN" user add perf \
  --database-url "sqlite://$dir/bench.db?mode=rwc" >/dev/null
"$SIGHTLINE_BIN" serve --http-addr 127.0.0.1:3920 --mqtt-addr 127.0.0.1:18920 \
  --database-url "sqlite://$dir/bench.db?mode=rwc" --site-root "$ROOT/target/site" \
  >"$dir/chart-server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:3920/api/health >/dev/null && break
  sleep 0.1
done
(cd end2end && SIGHTLINE_PERF_URL=http://127.0.0.1:3920 npx playwright test --config perf.config.ts)
