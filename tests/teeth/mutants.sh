#!/usr/bin/env bash
# Mutation testing of raft-core with cargo-mutants (`cargo install cargo-mutants`): every
# mutant of raft-core should make a test fail, and by a named property or test, not only
# by changing a golden transcript. Settings are in .cargo/mutants.toml; the last results
# and every surviving mutant's reason are in docs/testing.md.
#
# Usage: tests/teeth/mutants.sh [cargo-mutants arguments, e.g. --file raft-core/src/log.rs,
#        --shard 1/4, -j 2, --iterate]
# LIGHTRAFT_SIM_SEEDS (default 300) sets the simulator's seeds per mutant; MUTANTS_OUT
# (default target/mutants) where the results go. `tests/teeth/mutants.sh --report [DIR...]`
# only prints the report of the last run, or of several runs' mutants.out directories
# merged in order (a later run's outcome for a mutant replaces an earlier one: e.g. a
# whole run, then an `--iterate` run of the survivors after new tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${MUTANTS_OUT:-$root/target/mutants}
export LIGHTRAFT_SIM_SEEDS=${LIGHTRAFT_SIM_SEEDS:-300}
cd "$root"
dirs=("$out/mutants.out")
if [ "${1:-}" = "--report" ]; then
  shift
  [ $# -eq 0 ] || dirs=("$@")
else
  # cargo-mutants exits non-zero when a mutant survives; the report says which.
  cargo mutants -p raft-core -o "$out" "$@" || true
fi
python3 - "${dirs[@]}" <<'PY'
import json, os, re, sys
outcome = {}
for base in sys.argv[1:]:
    for o in json.load(open(os.path.join(base, 'outcomes.json')))['outcomes']:
        if o['scenario'] != 'Baseline':
            outcome[o['scenario']['Mutant']['name']] = (base, o)
groups = {'property': [], 'transcript': [], 'timeout': [], 'missed': [], 'unviable': []}
for name, (base, o) in outcome.items():
    summary = o['summary']
    if summary == 'CaughtMutant':
        log = open(os.path.join(base, o['log_path']), errors='replace').read()
        named = (
            'simulation seed' in log
            or re.search(r"panicked at (raft-core/|tests/src/)", log)
            or re.search(r"scenario \w+: command '\w+' failed", log)
        )
        groups['property' if named else 'transcript'].append(name)
    elif summary == 'Timeout':
        groups['timeout'].append(name)
    elif summary == 'MissedMutant':
        groups['missed'].append(name)
    elif summary == 'Unviable':
        groups['unviable'].append(name)
viable = sum(len(v) for k, v in groups.items() if k != 'unviable')
caught = len(groups['property']) + len(groups['timeout'])
print(f"{viable} viable mutants ({len(groups['unviable'])} unviable, not counted)")
print(f"  caught by a named property or test: {len(groups['property'])}")
print(f"  caught only because a golden transcript changed: {len(groups['transcript'])}")
print(f"  caught by the test timeout (a hang): {len(groups['timeout'])}")
print(f"  missed: {len(groups['missed'])}")
if viable:
    print(f"score (named property, test or timeout) / viable: {100.0 * caught / viable:.1f}%")
for key in ('transcript', 'timeout', 'missed'):
    for name in sorted(groups[key]):
        print(f"{key.upper():10} {name}")
PY
