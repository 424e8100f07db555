#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints, unit and integration
# tests (real containerd, registry, DNS, nft/netns, Prometheus). Run as root (netns, nft, containerd).
# The integration tests (tests/real/) are built only with the `real-parts` feature: always on here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the integration tests create network namespaces and start containerd: run as root" >&2
  exit 1
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --all-targets --workspace --features real-parts --locked -- -D warnings
echo "==> cargo nextest run"
cargo nextest run --workspace --features real-parts --locked --no-fail-fast "$@"
