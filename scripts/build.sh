#!/usr/bin/env bash
# Builds the release server binary and the hydrate bundle (target/site).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --release -p server
trunk build --skip-version-check
