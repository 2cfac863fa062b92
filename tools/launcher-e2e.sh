#!/usr/bin/env bash
# End-to-end checks of tools/launcher with the real trainer (loopback only, every step bounded):
#   slurm    4-rank SwarmSGD run (`swarm train --transport tcp`) through `launcher slurm -n 4` on
#            the throw-away one-node Slurm of tools/slurm-localhost.sh; its summary.json must
#            hold 4 ranks, all `"status": "ok"`, no failed rank and a final test accuracy.
#            Then SIGTERM to a running `launcher slurm -n 4` must reach every task as SIGTERM.
#   compare  `launcher local -n 4 -- swarm train --transport tcp ARGS` against the same run in one
#            process (`swarm train --nodes 4 ARGS`) on Fashion-MNIST: final test accuracies
#            (averaged model) within 1 point.
# Usage: tools/launcher-e2e.sh [slurm|compare|all]   (default all)
# Binaries: $SWARM_BIN and $LAUNCHER_BIN, default target/debug/{swarm,launcher} (tools/test.sh
# builds them with the test profile, optimised).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
swarm="${SWARM_BIN:-$root/target/debug/swarm}"
launcher="${LAUNCHER_BIN:-$root/target/debug/launcher}"
what="${1:-all}"
for b in "$swarm" "$launcher"; do
  [ -x "$b" ] || { echo "launcher-e2e: $b missing: cargo build --profile test -p trainer -p launcher --bins" >&2; exit 2; }
done
work="$(mktemp -d /tmp/launcher-e2e.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The comparison: 4 nodes, MLP 784-256-10, 3 epochs over all 60k images (~0.1-0.3 points apart
# in 3 trials on 2 cores; 2 epochs on a 20k subset gave 0.6). The Slurm run only has to finish.
train_args=(--epochs 3 --seed 7)
slurm_args=(--train-subset 10000 --epochs 2 --seed 7)

# check_summary FILE: 4 ranks, all ok, none failed, rank 0's accuracy present; prints it.
check_summary() {
  python3 - "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
ranks = s["ranks"]
problems = []
if s["world_size"] != 4: problems.append(f"world_size {s['world_size']}")
if sorted(r["rank"] for r in ranks) != [0, 1, 2, 3]: problems.append(f"ranks {[r['rank'] for r in ranks]}")
if any(r.get("status") != "ok" for r in ranks): problems.append(f"status {[r.get('status') for r in ranks]}")
if s["failed_ranks"]: problems.append(f"failed {s['failed_ranks']}")
acc = s.get("final_test_accuracy")
if not isinstance(acc, (int, float)) or not 0.6 < acc <= 1: problems.append(f"final_test_accuracy {acc}")
if problems:
    print("summary.json wrong: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(acc)
EOF
}

# (The run_* functions are called in an `if`, where `set -e` does not apply: every step that
# can fail says `|| return 1`.)
run_slurm() {
  echo "== launcher slurm -n 4 (real Slurm on localhost)"
  local start=$SECONDS acc
  SLURM_LOCALHOST_TIMEOUT=600 bash "$root/tools/slurm-localhost.sh" \
    "$launcher" slurm -n 4 --master-addr 127.0.0.1 --timeout 480 --summary "$work/slurm.json" -- \
    "$swarm" train --transport tcp "${slurm_args[@]}" --out "$work/slurm-run" || return 1
  acc="$(check_summary "$work/slurm.json")" || return 1
  echo "launcher-e2e: slurm: 4 ranks ok, final test accuracy $acc ($((SECONDS - start)) s)"
}

# SIGTERM to the launcher reaches every Slurm task as SIGTERM (srun itself would SIGKILL them):
# four shell-script ranks say so and exit 0.
run_slurm_stop() {
  echo "== launcher slurm -n 4, then SIGTERM to the launcher"
  cat >"$work/term.sh" <<'EOF'
#!/bin/sh
trap 'echo "rank $RANK stopped cleanly"; exit 0' TERM
echo "rank $RANK ready"
while :; do sleep 0.2; done
EOF
  cat >"$work/stop.sh" <<'EOF'
#!/bin/bash
"$1" slurm -n 4 --grace 20 --timeout 60 --summary "$2/stop.json" -- "$2/term.sh" >"$2/stop.out" 2>&1 &
l=$!
for _ in $(seq 150); do [ "$(grep -c ' ready$' "$2/stop.out")" -ge 4 ] && break; sleep 0.2; done
kill -TERM "$l"
wait "$l"
rc=$?
cat "$2/stop.out"
[ "$rc" -eq 143 ] || { echo "launcher exited $rc, expected 143" >&2; exit 1; }
[ "$(grep -c 'stopped cleanly$' "$2/stop.out")" -eq 4 ] || { echo "not every rank stopped on SIGTERM" >&2; exit 1; }
EOF
  chmod +x "$work/term.sh" "$work/stop.sh"
  SLURM_LOCALHOST_TIMEOUT=120 bash "$root/tools/slurm-localhost.sh" "$work/stop.sh" "$launcher" "$work" || return 1
  echo "launcher-e2e: slurm-stop: 4 ranks got SIGTERM and exited 0"
}

run_compare() {
  echo "== launcher local -n 4 (tcp) vs one process (--nodes 4)"
  local start=$SECONDS mid tcp inproc
  "$launcher" local -n 4 --timeout 480 --summary "$work/local.json" -- \
    "$swarm" train --transport tcp "${train_args[@]}" --out "$work/tcp-run" || return 1
  tcp="$(check_summary "$work/local.json")" || return 1
  mid=$SECONDS
  timeout 480 "$swarm" train --nodes 4 "${train_args[@]}" --out "$work/inproc-run" || return 1
  inproc="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["final_test_accuracy"])' \
    "$work/inproc-run/summary.json")" || return 1
  echo "launcher-e2e: compare: tcp run $((mid - start)) s, in-process run $((SECONDS - mid)) s"
  python3 - "$tcp" "$inproc" <<'EOF'
import sys
tcp, inproc = float(sys.argv[1]), float(sys.argv[2])
gap = 100 * abs(tcp - inproc)
print(f"launcher-e2e: compare: tcp (4 processes) {100*tcp:.2f}% vs in-process {100*inproc:.2f}%: {gap:.2f} points apart (limit 1)")
sys.exit(0 if gap <= 1.0 else 1)
EOF
}

case "$what" in
  slurm) checks=(slurm slurm_stop) ;;
  compare) checks=(compare) ;;
  all) checks=(slurm slurm_stop compare) ;;
  *) echo "usage: $0 [slurm|compare|all]" >&2; exit 2 ;;
esac
passed=0
failed=0
for c in "${checks[@]}"; do
  if "run_$c"; then
    passed=$((passed + 1))
  else
    echo "launcher-e2e: $c FAILED" >&2
    failed=$((failed + 1))
  fi
done
echo "launcher-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
