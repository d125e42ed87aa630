#!/usr/bin/env bash
# A quick throughput check, not the benchmark: starts the release server on
# a fresh SQLite file, runs the simulator RUNS times, and prints per run the
# readings sent by the simulator and those the server counted as received,
# stored and dropped (from /api/stats), plus the server's RSS.
#
#   scripts/quick-sim.sh [DEVICES] [RATE_PER_DEVICE] [SECONDS] [RUNS]
set -euo pipefail
source "$(dirname "$0")/env.sh"
devices="${1:-200}" rate="${2:-100}" seconds="${3:-10}" runs="${4:-3}"
http=39300 mqtt=18930
dir="$(mktemp -d /tmp/sightline-sim.XXXXXX)"
"$SIGHTLINE_BIN" serve --http-addr "127.0.0.1:$http" --mqtt-addr "127.0.0.1:$mqtt" \
  --database-url "sqlite://$dir/sim.db?mode=rwc" --site-root "$ROOT/target/site" >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$http/api/health" >/dev/null && break; sleep 0.1; done

stat() { curl -sf "127.0.0.1:$http/api/stats" | python3 -c "import json,sys; c=json.load(sys.stdin); print(c['$1'])"; }
printf '%-4s %12s %12s %12s %10s %14s %8s\n' run sent/s received stored dropped stored/s rss_mb
for run in $(seq "$runs"); do
  stored0=$(stat stored) received0=$(stat received) dropped0=$(stat dropped)
  start=$(date +%s.%N)
  sent=$("$SIGHTLINE_BIN" simulate --broker "127.0.0.1:$mqtt" --devices "$devices" --rate "$rate" \
    --seconds "$seconds" --prefix "run$run-" | sed -E 's/.*\(([0-9]+) readings\/s sent\).*/\1/')
  # Let the writer finish what is queued before reading the counters.
  prev=-1
  while [[ "$(stat stored)" != "$prev" ]]; do prev=$(stat stored); sleep 0.3; done
  elapsed=$(python3 -c "print($(date +%s.%N) - $start - 0.3)")
  stored=$(( $(stat stored) - stored0 )) received=$(( $(stat received) - received0 ))
  dropped=$(( $(stat dropped) - dropped0 ))
  rss=$(( $(ps -o rss= -p $server) / 1024 ))
  printf '%-4s %12s %12s %12s %10s %14.0f %8s\n' "$run" "$sent" "$received" "$stored" "$dropped" \
    "$(python3 -c "print($stored / $elapsed)")" "$rss"
done
