#!/usr/bin/env bash
# Bisect upstream GPU-test regressions over series prefixes (device tool `run`, carrying .gpu and
# modelopt): .gpu/prefix/NNNN.tgz holds the tree of patches 0001..NNNN (built here with
# series.materialize.build_tree), .gpu/upstream-src.tgz upstream's tests (gpu_upstream_suite.sh prepare).
# Runs the given test ids under every prefix and the carried full tree, side by side, one line each.
#   OUT=$OUT bash benchmarks/gpu_bisect_upstream.sh ID [ID ...]
set -u
. benchmarks/gpu_site.sh
rm -rf /tmp/upstream-src && mkdir -p /tmp/upstream-src && tar xzf .gpu/upstream-src.tgz -C /tmp/upstream-src
trees=()
for t in .gpu/prefix/*.tgz; do n=$(basename "$t" .tgz); mkdir -p "/tmp/prefix-$n"; tar xzf "$t" -C "/tmp/prefix-$n"; trees+=("/tmp/prefix-$n"); done
trees+=("$PWD")
for tree in "${trees[@]}"; do
  ( cd /tmp/upstream-src && PYTHONPATH=$tree:$SITE:/tmp/upstream-src/tests timeout 400 python3 -m pytest -q -p no:cacheprovider \
      -o addopts="" -rN --junitxml="$OUT/$(basename "$tree").xml" "$@" > "$OUT/$(basename "$tree").log" 2>&1
    echo "$(basename "$tree"): $(tail -1 "$OUT/$(basename "$tree").log")" ) &
done
wait
(cd "$OUT" && tar czf bisect.tgz ./*.xml ./*.log && rm -f ./*.xml ./*.log)
