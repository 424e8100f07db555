#!/usr/bin/env bash
# Fuzzes every parser of outside input: each cargo-fuzz target (fuzz/fuzz_targets/) runs for
# SECONDS_PER_TARGET (default 600), FUZZ_JOBS at a time (default 2) under `nice -n 19`, then its
# corpus is minimised back into fuzz/corpus/<target>/ (committed; `cargo test` replays it on
# stable). A crash is copied to fuzz/regressions/<target>/ so the replay test fails until fixed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    (0 seconds: only minimise the corpora)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
# Logs: fuzz/logs/<target>.log (each ends with libFuzzer's final stats: executions, coverage).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${1:-600}"
shift || true
jobs="${FUZZ_JOBS:-2}"
# A fixed revision: a commit must not rebuild the instrumented crate (build.rs bakes HEAD in).
export PULLWATCH_REVISION="${PULLWATCH_REVISION:-fuzz}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Built once (debug assertions and overflow checks on); the runs below use these binaries, so
# editing the sources meanwhile changes nothing under way.
# FUZZ_NO_BUILD=1: reuse the binaries built last (e.g. to minimise what they found).
[ -n "${FUZZ_NO_BUILD:-}" ] || nice -n 10 cargo +nightly fuzz build -a
bin="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p fuzz/logs fuzz/work

# One target: new inputs go to fuzz/work/<t> (not committed); the committed corpus is read as seeds.
run_one() {
  local t="$1"
  mkdir -p "fuzz/work/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # -timeout: one input taking 10 s is a finding (a hang); -rss_limit_mb: so is 2 GB of memory.
  nice -n 19 "$bin/$t" "fuzz/work/$t" "fuzz/corpus/$t" \
    -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1 || true
  local execs found=0
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  for crash in fuzz/artifacts/"$t"/*; do
    [ -e "$crash" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$crash" "fuzz/regressions/$t/"
    found=$((found + 1))
  done
  echo "$t: ${seconds}s, ${execs} executions, ${found} finding(s)"
}

for t in "${targets[@]}"; do
  [ "$seconds" -gt 0 ] || break
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_one "$t" &
done
wait

# Minimise: libFuzzer measures every input (committed corpus and new ones); the committed corpus
# becomes a greedy cover of their coverage edges in at most FUZZ_CORPUS_MAX files (default 200).
max_files="${FUZZ_CORPUS_MAX:-200}"
for t in "${targets[@]}"; do
  control="fuzz/logs/$t.merge"
  rm -rf "fuzz/merged/$t" "$control" && mkdir -p "fuzz/merged/$t"
  nice -n 19 "$bin/$t" -merge=1 -merge_control_file="$control" "fuzz/merged/$t" \
    "fuzz/corpus/$t" "fuzz/work/$t" -max_len=65536 >>"fuzz/logs/$t.log" 2>&1
  mkdir -p fuzz/merged/keep
  python3 - "$control" "$max_files" <<'COVER' | while read -r f; do cp "$f" fuzz/merged/keep/; done
import os, sys
lines = open(sys.argv[1]).read().split("\n")
n = int(lines[0])
files = lines[2 : 2 + n]
cover = {}
for line in lines[2 + n :]:
    if line.startswith("COV "):
        fields = line.split()
        cover[int(fields[1])] = set(fields[2:])
left = set().union(*cover.values()) if cover else set()
chosen = 0
while left and chosen < int(sys.argv[2]):
    best = max(cover, key=lambda i: (len(cover[i] & left), -os.path.getsize(files[i])))
    if not cover[best] & left:
        break
    left -= cover[best]
    chosen += 1
    print(files[best])
COVER
  rm -rf "fuzz/corpus/$t" && mv fuzz/merged/keep "fuzz/corpus/$t"
  echo "$t: corpus $(find "fuzz/corpus/$t" -type f | wc -l) files, $(cat fuzz/corpus/"$t"/* | wc -c) bytes"
done
rm -rf fuzz/merged
if compgen -G "fuzz/regressions/*/*" >/dev/null; then
  echo "findings in fuzz/regressions/ (cargo test replays them)"
fi
