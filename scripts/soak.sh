#!/usr/bin/env bash
# The soak: a real agent for MINUTES (default 10) while faults cycle every 20 s — 1,500 half-sent
# requests on its HTTP port and 100 on its API socket, its registry going down and up, its DNS
# answering SERVFAIL, then nothing, then again — sampling its RSS, open fds and threads every
# SAMPLE_SECONDS (default 5). Fails (exit 1) unless each stays flat: the last quarter's largest
# value within a margin of the first quarter's (RSS +10 % + 4 MiB, fds and threads +3).
# Not part of scripts/test.sh. Needs root-free tools only: docker-registry (scripts/install-deps.sh).
#
#   bash scripts/soak.sh [MINUTES] [SAMPLE_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# The slow clients hold ~1,600 sockets at once.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --locked --quiet --bin pullwatch --example soak
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_BIN_EXE_pullwatch="$target_dir/debug/pullwatch"
exec "$target_dir/debug/examples/soak" "$@"
