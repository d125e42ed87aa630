#!/usr/bin/env bash
# Installs everything the build and the tests need, and only what is
# missing: Debian packages, the wasm target, pinned wasm-bindgen and trunk,
# and the npm packages (Playwright, binaryen's wasm-opt, ECharts).
set -euo pipefail
source "$(dirname "$0")/env.sh"

WASM_BINDGEN_VERSION=0.2.130
TRUNK_VERSION=0.21.14

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The cluster tests start their own 3-node NATS cluster.
[[ -x /usr/sbin/nats-server ]] || need_apt+=(nats-server)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Read the lists first: `grep -q` exiting early under pipefail would make
# a present target look missing.
targets="$(rustup target list --installed)"
grep -qx wasm32-unknown-unknown <<<"$targets" || rustup target add wasm32-unknown-unknown
components="$(rustup component list --installed)"
grep -q '^rustfmt' <<<"$components" || rustup component add rustfmt
grep -q '^clippy' <<<"$components" || rustup component add clippy

mkdir -p "$SIGHTLINE_TOOLS"
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]]; then
  # No --locked: its lockfile wants a webpki-roots the registry lacks.
  cargo install --root "$SIGHTLINE_TOOLS" wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
if [[ "$(trunk --version 2>/dev/null)" != "trunk $TRUNK_VERSION" ]]; then
  cargo install --root "$SIGHTLINE_TOOLS" "trunk@$TRUNK_VERSION" --locked
fi

# npm ci again whenever the lockfile is newer than the installed tree.
modules="$ROOT/end2end/node_modules"
if [[ ! -x "$modules/.bin/wasm-opt" || ! -d "$modules/@playwright/test" ||
      ! -f "$modules/echarts/dist/echarts.min.js" ||
      "$ROOT/end2end/package-lock.json" -nt "$modules/.package-lock.json" ]]; then
  (cd "$ROOT/end2end" && npm ci --no-audit --no-fund)
fi

# schemathesis, pinned, in its own virtualenv: it fuzzes the JSON API
# against /api/openapi.json in the tests.
SCHEMATHESIS_VERSION=4.32.5
venv="$SIGHTLINE_TOOLS/schemathesis-$SCHEMATHESIS_VERSION"
if [[ ! -x "$venv/bin/st" ]]; then
  command -v python3 >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  }
  python3 -m venv "$venv" 2>/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet --no-cache-dir "schemathesis==$SCHEMATHESIS_VERSION"
fi

# paho-mqtt, pinned, in its own virtualenv: the tests run the README's
# Python subscriber with it, as a user of the feed would.
PAHO_VERSION=2.1.0
paho="$SIGHTLINE_TOOLS/paho-mqtt-$PAHO_VERSION"
if [[ ! -x "$paho/bin/python" ]] || ! "$paho/bin/python" -c 'import paho.mqtt' 2>/dev/null; then
  python3 -m venv "$paho" 2>/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$paho"
  }
  "$paho/bin/pip" install --quiet --no-cache-dir "paho-mqtt==$PAHO_VERSION"
fi
