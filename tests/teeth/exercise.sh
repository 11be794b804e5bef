#!/usr/bin/env bash
# One exercise of docs/exercises.md: applies the deliberate bug NAME (from
# tests/teeth/mutations.txt) to a scratch copy of the workspace, runs the test that
# guards against it, and prints the whole failure: the property that broke, the seed and
# how to replay it, and the trace of the run up to the failure. Your tree is not touched.
# Usage: tests/teeth/exercise.sh NAME [seeds, default 2000]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 NAME [seeds]   (the names are in tests/teeth/mutations.txt and docs/exercises.md)" >&2
  exit 2
fi
TEETH_EXACT=1 TEETH_SHOW=1 exec "$(dirname "$0")/run.sh" "${2:-2000}" "$1"
