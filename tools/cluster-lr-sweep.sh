#!/usr/bin/env bash
# The learning-rate sweep behind docs/experiments/cluster.toml: every algorithm of its group (a) at
# 64 nodes on emulated 10 GbE without stragglers, seed 1, for each rate, and a Markdown table of
# the averaged model's test accuracy after 5 epochs' samples. Runs are deterministic, so the table
# is the same on any machine; about 12 minutes on 2 cores.
# Usage (after `bash tools/setup.sh`): tools/cluster-lr-sweep.sh [OUT_DIR] (default /tmp/cluster-lr-sweep)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-/tmp/cluster-lr-sweep}"
rates=(0.1 0.3 1.0)
algos=(swarm allreduce localsgd dpsgd adpsgd sgp lasgd qsparse)
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p trainer --bin swarm
swarm="${CARGO_TARGET_DIR:-$root/target}/release/swarm"
mkdir -p "$out"
for lr in "${rates[@]}"; do
  for algo in "${algos[@]}"; do
    extra=()
    [ "$algo" = qsparse ] && extra=(--quant topk:0.1+minmax:8)
    run="$out/$algo-$lr"
    [ -f "$run/summary.json" ] && continue
    "$swarm" train --algo "$algo" --lr "$lr" --nodes 64 --topology hypercube --epochs 5 \
      --cluster 10gbe,fixed:1.36 --quiet --out "$run" "${extra[@]}" >"$run.log" 2>&1 || {
      echo "cluster-lr-sweep: $algo at lr $lr failed; its log:" >&2
      tail -n 20 "$run.log" >&2
      exit 1
    }
  done
done
python3 - "$out" "${rates[*]}" "${algos[*]}" <<'PY'
import json, sys
out, rates, algos = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| algo | " + " | ".join(f"lr {r}" for r in rates) + " |")
print("|---|" + "---|" * len(rates))
for a in algos:
    cells = []
    for r in rates:
        acc = json.load(open(f"{out}/{a}-{r}/summary.json"))["final_test_accuracy"]
        cells.append(f"{100 * acc:.2f}")
    print(f"| {a} | " + " | ".join(cells) + " |")
PY
