# Shared settings for the scripts in this folder; sourced, not run.
#
# Build artefacts live outside the clone so that a fresh clone (as in CI)
# reuses them when present; nothing depends on them being there.
export SIGHTLINE_CACHE="${SIGHTLINE_CACHE:-/var/cache/sightline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SIGHTLINE_CACHE/target}"
export SIGHTLINE_TOOLS="$SIGHTLINE_CACHE/tools"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
# The pinned wasm-bindgen and trunk first, then binaryen 132 from npm:
# Debian's older wasm-opt produces a bundle that traps at start-up, so it
# must never come first.
export PATH="$SIGHTLINE_TOOLS/bin:$ROOT/end2end/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export SIGHTLINE_BIN="$CARGO_TARGET_DIR/release/sightline"
export SCHEMATHESIS="$SIGHTLINE_TOOLS/schemathesis-4.32.5/bin/st"
# A Python with paho-mqtt, for the tests of the README's subscriber.
export SIGHTLINE_PYTHON="$SIGHTLINE_TOOLS/paho-mqtt-2.1.0/bin/python"
