#!/usr/bin/env bash
# Shows that the checks have teeth: applies each deliberate bug from mutations.txt to a
# scratch copy of the workspace, runs the test that guards against it (the simulation,
# unless the bug names another with "test:"), and expects it to fail. Prints, per bug,
# the first failing seed and the property that caught it.
# Usage: tests/teeth/run.sh [seeds per bug, default 2000] [only bugs whose name contains this]
# TEETH_LIST=<file> reads the bugs from another file in the same format.
# TEETH_EXACT=1 takes the name as exact; TEETH_SHOW=1 prints the whole failure (the
# property, the replay command and the trace), as tests/teeth/exercise.sh does.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seeds=${1:-2000}
only=${2:-}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/teeth}
status=0
# The whole failure: for the simulation, its first failing seed in full (property, replay
# command, trace); for any other test, everything it printed.
show() {
  if grep -q 'The first in full:' <<<"$1"; then
    sed -n '/The first in full:/,/^stack backtrace:/p' <<<"$1" | grep -v '^stack backtrace:'
  else
    printf '%s\n' "$1"
  fi
}
python3 - "${TEETH_LIST:-$root/tests/teeth/mutations.txt}" > "$scratch/list" <<'PY'
import sys
blocks, cur = [], {}
for line in open(sys.argv[1]):
    if line.startswith('#') or not line.strip():
        if cur: blocks.append(cur); cur = {}
        continue
    key, _, value = line.partition(':')
    cur[key.strip()] = value.strip()
if cur: blocks.append(cur)
for b in blocks:
    print('\t'.join([b['name'], b['file'], b['from'], b['to'], b.get('test', '')]))
PY
while IFS=$'\t' read -r name file from to test; do
  if [ -n "${TEETH_EXACT:-}" ]; then
    [[ "${name%% (*}" == "$only" ]] || continue
  else
    [[ -z "$only" || "$name" == *"$only"* ]] || continue
  fi
  found=1
  rm -rf "$scratch/ws" && mkdir "$scratch/ws"
  (cd "$root" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C "$scratch/ws"
  python3 - "$scratch/ws/$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"mutation text not found exactly once in {path}: {old}")
open(path, 'w').write(text.replace(old, new))
PY
  if [ -n "$test" ]; then
    # A test of its own: it fails (naming its seed) or the bug went unnoticed.
    out=$(cd "$scratch/ws" && LIGHTRAFT_DIFF_CASES=$seeds cargo test --release -q $test 2>&1 || true)
    caught=$(grep -m1 -E '^seed [0-9]+: ' <<<"$out" || true)
    if [ -z "$caught" ]; then
      # Not a seeded test: the assertion that failed says what it caught.
      caught=$(grep -m1 -A2 'panicked at' <<<"$out" | tr '\n' ' ' || true)
    fi
    if [ -n "$caught" ]; then echo "CAUGHT  $name: $caught"; else echo "MISSED  $name"; status=1; fi
    [ -z "${TEETH_SHOW:-}" ] || show "$out"
    continue
  fi
  out=$(cd "$scratch/ws" && LIGHTRAFT_SIM_SEEDS=$seeds cargo test --release -q -p lightraft-tests --test simulation 2>&1 || true)
  caught=$(grep -m1 '^simulation seed' <<<"$out" || true)
  if [ -n "$caught" ]; then
    echo "CAUGHT  $name: ${caught#simulation }"
    [ -z "${TEETH_SHOW:-}" ] || show "$out"
    continue
  fi
  # Rare interleavings are also staged by hand in the golden scenarios, which run the
  # same checker: a violation there (not a mere transcript change) counts as caught.
  out=$(cd "$scratch/ws" && cargo test --release -q -p lightraft-tests --test scenarios 2>&1 || true)
  caught=$(grep -m1 -oE "scenario [a-z0-9_]+: command '[a-z]+' failed at line [0-9]+: [^\"]*" <<<"$out" || true)
  if [ -n "$caught" ]; then
    echo "CAUGHT  $name: not in $seeds random seeds, but by $caught"
    [ -z "${TEETH_SHOW:-}" ] || show "$out"
  else
    echo "MISSED  $name (no failure in $seeds seeds nor in the scenarios)"
    status=1
  fi
done < "$scratch/list"
if [ -z "${found:-}" ]; then
  echo "no deliberate bug matches ${only:-anything} in ${TEETH_LIST:-tests/teeth/mutations.txt}" >&2
  exit 2
fi
exit $status
