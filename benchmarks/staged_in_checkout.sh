#!/usr/bin/env bash
# Every staged mbox (`modelopt-fork stage`) applied with `git am`, in series order, to an upstream
# Model-Optimizer checkout (DIR: e.g. `git archive a2fbac7b` of the mirror, docs/upstream-suite.md),
# then the upstream-style test files the mboxes add run there against that checkout's modelopt.
#   bash benchmarks/staged_in_checkout.sh /work/upstream-src [WORK]
# Prints one line per mbox (applies / does not apply, with git's first error) and pytest's summary.
set -u
src=${1:?usage: staged_in_checkout.sh UPSTREAM_CHECKOUT [WORK]}
work=${2:-$(mktemp -d)}
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work/mbox" "$work/checkout"
python -m modelopt_fork stage --no-run-tests --out "$work/mbox" > "$work/stage.log" 2>&1 || { tail -5 "$work/stage.log"; exit 2; }
cp -r "$src" "$work/checkout" && cd "$work/checkout" || exit 2
id=(-c user.name=staged -c user.email=staged@localhost)
git init -q -b upstream && git add -A && git "${id[@]}" commit -qm "upstream $(cat .source-commit 2>/dev/null)"
ok=0; n=0
for m in "$work"/mbox/*.mbox; do
  n=$((n + 1))
  if git "${id[@]}" am -q "$m" > "$work/am.err" 2>&1; then ok=$((ok + 1)); echo "applies         $(basename "$m")"
  else git am --abort 2> /dev/null; echo "does not apply  $(basename "$m"): $(grep -m1 error: "$work/am.err")"; fi
done
echo "$ok of $n mboxes apply in series order to $src ($(cat .source-commit 2>/dev/null || git -C "$src" rev-parse HEAD))"
tests=$(git diff --name-only --diff-filter=A upstream HEAD -- 'tests/*.py')
PYTHONPATH=$PWD:$PWD/tests python -m pytest -q -p no:cacheprovider -n 2 -o addopts="" $tests 2>&1 | tail -12
