#!/usr/bin/env bash
# Does the virtual-time emulator (`swarm train --cluster`) predict a real run? 4 SwarmSGD ranks
# (`--transport tcp`, one process each, started by tools/launcher) in a network namespace whose
# loopback is rate-limited with a token bucket (`tc qdisc ... tbf`), against the emulator set to
# the same link (one shared link, as the ranks share the loopback) and to the ranks' measured step
# time. Runs:
#   real      the 4 ranks exchanging over the limited link: training time (slowest rank),
#             interactions, and time per local step (4 processes sharing this machine's cores;
#             it includes the CPU the ranks spend on TCP, which the emulator does not model)
#   emulated  swarm train --cluster net:LATENCY_US:GBPS,shared,fixed:STEP_MS with the same
#             settings and the real run's time per local step: virtual time and interactions
#   alone     for comparison: the ranks without any exchange (unlimited link), and the emulator
#             set to their step time, which leaves out the CPU cost of communication
# and as its last line (for the emulator set to the real run's step time)
#   fidelity: emulated E s vs measured M s (ratio R), interactions ratio I
# Goal: R and I within 0.8..1.25.
#
# Usage (as root, after `bash tools/setup.sh`): tools/emulator-fidelity.sh [GBIT]
# Defaults: 1 Gbit/s; model mlp:2048 (1.6M parameters, 6.5 MB); H = 4; pairwise; 200 steps per
# rank; overlap on. Environment: STEPS, MODEL, H, INTERACTION, OVERLAP, LATENCY_US (of the
# emulated link; default 20, about a loopback TCP hop), KEEP=1, SKIP_BUILD=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rate="${1:-1}"
steps="${STEPS:-200}"
model="${MODEL:-mlp:2048}"
h="${H:-4}"
interaction="${INTERACTION:-pairwise}"
overlap="${OVERLAP:-on}"
latency_us="${LATENCY_US:-20}"
ranks=4
batch=32

NETNS_TOOL=emulator-fidelity
source "$root/tools/netns-lib.sh"
netns_require_root
netns_build
netns_create

common=(--model "$model" --interaction "$interaction" --batch-size "$batch"
  --train-subset "$((steps * ranks * batch))" --epochs 1 --test-subset 1000 --lr 0.05
  --lr-schedule constant --seed 5 --overlap "$overlap")

# ranks_summary OUT: "slowest_train_seconds mean_step_seconds interactions" over the ranks.
ranks_summary() {
  python3 - "$1" "$ranks" <<'PY'
import json, sys
out, ranks = sys.argv[1], int(sys.argv[2])
seconds, step, inter = [], [], 0
for r in range(ranks):
    s = json.load(open(f"{out}/rank-{r}/summary.json"))
    seconds.append(s["train_seconds"])
    step.append(s["train_seconds"] / s["stats"]["local_steps"])
    inter += s["stats"]["interactions"]
print(f"{max(seconds):.4f} {sum(step) / len(step):.6f} {inter}")
PY
}

# emulate NAME STEP_SECONDS: the emulated run; prints "virtual_seconds interactions".
emulate() {
  local step_ms spec
  step_ms="$(python3 -c "print(f'{$2 * 1e3:.3f}')")"
  spec="net:$latency_us:$rate,shared,fixed:$step_ms"
  "$swarm" train --nodes "$ranks" "${common[@]}" --local-steps "$h" --cluster "$spec" --quiet \
    --out "$work/$1" >"$work/$1.log" 2>&1 || {
    echo "emulator-fidelity: the emulated run $1 failed; its log:" >&2
    tail -n 30 "$work/$1.log" >&2
    exit 1
  }
  echo "emulator-fidelity: emulated $1: --cluster $spec" >&2
  python3 -c "
import json
s = json.load(open('$work/$1/summary.json'))
print(f\"{s['train_seconds']:.4f} {s['interactions']}\")"
}

echo "emulator-fidelity: $ranks ranks, $model, H = $h, $interaction, overlap $overlap, $steps steps per rank, $rate Gbit/s" >&2
netns_set_rate 0
netns_ranks "$work/alone" "$ranks" "${common[@]}" --local-steps 1000000000
read -r _ alone_step _ < <(ranks_summary "$work/alone")

netns_set_rate "$rate"
netns_ranks "$work/real" "$ranks" "${common[@]}" --local-steps "$h"
read -r measured real_step real_inter < <(ranks_summary "$work/real")

read -r emulated emu_inter < <(emulate emulated "$real_step")
read -r emulated_alone alone_inter < <(emulate emulated-alone "$alone_step")

python3 - <<PY
rows = [
    ("real ranks", $measured, $real_inter, $real_step),
    ("emulated, real step time", $emulated, $emu_inter, $real_step),
    ("emulated, step time alone", $emulated_alone, $alone_inter, $alone_step),
]
print(f"{'run':<28}{'seconds':>10}{'interactions':>14}{'ms/step':>10}{'time ratio':>12}{'inter. ratio':>14}")
for name, sec, inter, step in rows:
    print(f"{name:<28}{sec:>10.2f}{inter:>14}{step * 1e3:>10.2f}{sec / $measured:>12.2f}{inter / max($real_inter, 1):>14.2f}")
print(f"fidelity: emulated {$emulated:.2f} s vs measured {$measured:.2f} s (ratio {$emulated / $measured:.2f}), interactions ratio {$emu_inter / max($real_inter, 1):.2f}")
PY
