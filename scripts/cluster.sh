#!/usr/bin/env bash
# Starts a whole Sightline cluster on this machine, for trying scale-out and
# for tests: PostgreSQL, 3 NATS nodes, N instances (2 unless INSTANCES is
# set), haproxy in front of their MQTT ports and nginx in front of their
# HTTP ports, all on loopback. Ctrl-C (or SIGTERM) stops everything.
#
#   scripts/cluster.sh [serve flags]     extra arguments go to every instance
#   SIMULATE=100 scripts/cluster.sh      also 100 simulated devices through haproxy
#   DB_URL=postgres://… scripts/cluster.sh   an existing PostgreSQL database instead
#
# Devices connect to MQTT_PORT (1883), browsers to HTTP_PORT (8080). The
# configurations come from deploy/, with this machine's ports filled in;
# RUN (a temporary folder unless set) keeps them, the logs and the data.
set -euo pipefail
source "$(dirname "$0")/env.sh"

INSTANCES="${INSTANCES:-2}"
MQTT_PORT="${MQTT_PORT:-1883}"
HTTP_PORT="${HTTP_PORT:-8080}"
PG_PORT="${PG_PORT:-55433}"
RUN="${RUN:-$(mktemp -d /tmp/sightline-cluster.XXXXXX)}"
mkdir -p "$RUN"

need_apt=()
[[ -x /usr/sbin/haproxy ]] || need_apt+=(haproxy)
[[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
[[ -x /usr/sbin/nats-server ]] || need_apt+=(nats-server)
if ((${#need_apt[@]})); then
  echo "cluster: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
  "$ROOT/scripts/build.sh"
fi

pids=()
stop_all() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${own_postgres:-}" ]] && stop_postgres
  echo "cluster: stopped; logs and configuration are in $RUN"
}
trap stop_all EXIT INT TERM

# 1. PostgreSQL, the only store in cluster mode: a throwaway one of its own
# unless DB_URL names a database.
if [[ -z "${DB_URL:-}" ]]; then
  source "$ROOT/scripts/postgres.sh"
  own_postgres=1
  start_postgres
  DB_URL="$SIGHTLINE_TEST_POSTGRES_URL"
fi

# 2. Three NATS core nodes, routed to each other.
nats_urls=()
routes=""
for i in 0 1 2; do
  routes+="${routes:+, }nats://127.0.0.1:$((6250 + i))"
  nats_urls+=("nats://127.0.0.1:$((4250 + i))")
done
for i in 0 1 2; do
  sed -e "s/@NAME@/nats-$i/" -e "s/@CLIENT_PORT@/$((4250 + i))/" \
      -e "s/@ROUTE_PORT@/$((6250 + i))/" -e "s|@ROUTES@|$routes|" \
      "$ROOT/deploy/nats.conf" >"$RUN/nats-$i.conf"
  nats-server -c "$RUN/nats-$i.conf" >"$RUN/nats-$i.log" 2>&1 &
  pids+=($!)
done
NATS="$(IFS=,; echo "${nats_urls[*]}")"
# Instances connect to NATS at start and refuse to run without it.
for i in 0 1 2; do
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((4250 + i))") 2>/dev/null && break
    sleep 0.1
  done
done

# 3. The instances, each on its own ports.
serve_args=("$@")
# Simulated devices have no secrets.
[[ "${SIMULATE:-0}" != 0 ]] && serve_args+=(--open-registration)
mqtt_servers=""
http_servers=""
for ((i = 0; i < INSTANCES; i++)); do
  mqtt=$((1900 + i))
  http=$((3100 + i))
  mqtt_servers+="    server sightline-$i 127.0.0.1:$mqtt check port $http"$'\n'
  http_servers+="        server 127.0.0.1:$http max_fails=1 fail_timeout=2s;"$'\n'
  "$SIGHTLINE_BIN" serve \
    --database-url "$DB_URL" --nats-url "$NATS" \
    --mqtt-addr "127.0.0.1:$mqtt" --http-addr "127.0.0.1:$http" \
    --site-root "$ROOT/target/site" --trusted-proxy 127.0.0.1 "${serve_args[@]}" >"$RUN/sightline-$i.log" 2>&1 &
  pids+=($!)
done

# 4. haproxy for devices, nginx for browsers.
awk -v servers="$mqtt_servers" '{ if ($0 == "@MQTT_SERVERS@") printf "%s", servers; else print }' \
  "$ROOT/deploy/haproxy.cfg" | sed "s/@MQTT_BIND@/127.0.0.1:$MQTT_PORT/" >"$RUN/haproxy.cfg"
# Each proxy runs under a loop that starts it again when it exits, as
# systemd's Restart=always would: tests kill them to prove that devices and
# browsers reconnect by themselves. Each writes its pid to $RUN.
keep_running() {
  local name="$1"
  shift
  (
    child=""
    trap '[[ -n "$child" ]] && kill "$child" 2>/dev/null; wait; exit 0' TERM INT
    while true; do
      "$@" >>"$RUN/$name.log" 2>&1 &
      child=$!
      wait "$child" || true
      echo "cluster: $name exited; starting it again" >>"$RUN/$name.log"
      sleep 0.2
    done
  ) &
  pids+=($!)
}
keep_running haproxy haproxy -W -db -p "$RUN/haproxy.pid" -f "$RUN/haproxy.cfg"
awk -v servers="$http_servers" '{ if ($0 == "@HTTP_SERVERS@") printf "%s", servers; else print }' \
  "$ROOT/deploy/nginx.conf" |
  sed -e "s|@RUN@|$RUN|g" -e "s/@HTTP_BIND@/127.0.0.1:$HTTP_PORT/" >"$RUN/nginx.conf"
keep_running nginx nginx -p "$RUN" -c "$RUN/nginx.conf" -g 'daemon off;'

# Ready when every instance answers through nginx and MQTT through haproxy.
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/api/health" >/dev/null 2>&1 &&
     (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [[ "${SIMULATE:-0}" != 0 ]]; then
  # Through haproxy, like real devices, so they spread over the instances.
  "$SIGHTLINE_BIN" simulate --broker "127.0.0.1:$MQTT_PORT" --devices "$SIMULATE" \
    >"$RUN/simulate.log" 2>&1 &
  pids+=($!)
fi
cat <<EOF

Sightline cluster: $INSTANCES instances on PostgreSQL ($DB_URL) and NATS ($NATS)
  browsers: http://127.0.0.1:$HTTP_PORT (nginx)
  devices:  mqtt://127.0.0.1:$MQTT_PORT (haproxy)
  logs and configuration: $RUN
Ctrl-C stops everything.
EOF
wait -n "${pids[@]}" || true
echo "cluster: a process exited; stopping the rest" >&2
