# Starts a throwaway PostgreSQL on loopback for the integration tests and
# exports SIGHTLINE_TEST_POSTGRES_URL; sourced by test.sh.

PG_PORT="${PG_PORT:-55432}"

start_postgres() {
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  PG_BIN="$bin"
  PG_DATA="$(mktemp -d /tmp/sightline-pg.XXXXXX)"
  chown postgres "$PG_DATA"
  # PostgreSQL refuses to run as root, hence its own user; it also needs a
  # working directory that user can read, which root's may not be.
  (
    cd /
    su postgres -c "$bin/initdb -D $PG_DATA -A trust -U postgres" >/dev/null
    if ! su postgres -c "$bin/pg_ctl -D $PG_DATA -l $PG_DATA/log -w -o '-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1' start" >/dev/null; then
      # Say why before anything cleans the folder up.
      echo "PostgreSQL on port $PG_PORT did not start; its log:" >&2
      cat "$PG_DATA/log" >&2
      return 1
    fi
    su postgres -c "$bin/createdb -h 127.0.0.1 -p $PG_PORT sightline_test"
  )
  export SIGHTLINE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/sightline_test"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
}

stop_postgres() {
  if [[ -n "${PG_DATA:-}" ]]; then
    (cd / && su postgres -c "$PG_BIN/pg_ctl -D $PG_DATA -m fast -w stop") >/dev/null 2>&1 || true
    rm -rf "$PG_DATA"
  fi
}
