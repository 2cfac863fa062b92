#!/usr/bin/env bash
# Does the model exchange hide behind local steps? 4 SwarmSGD ranks (`swarm train --transport
# tcp`, one process each, started by tools/launcher) inside a network namespace whose loopback is
# rate-limited with a token bucket (`tc qdisc ... tbf`; this kernel has no netem), at several link
# rates, in three modes:
#   alone     no exchange at all: every rank trains by itself (it never reaches an interaction)
#   blocking  --overlap off: a node waits for every read and correction write
#   overlap   --overlap on: a node keeps taking local steps while its partner's model is on the wire
# It prints local steps per second (mean over ranks, training time only) per mode and rate, the
# staleness of the averaged copies, and as its last line
#   overlap: S.SSx blocking, F.FF of no-exchange (at R Gbit/s)
# for the rate at which one interaction's bytes take closest to the compute time of H local steps.
#
# Usage (as root, after `bash tools/setup.sh`): tools/bench-overlap.sh [RATES_GBIT...]
# Defaults: rates 0.5 1 2 5; model mlp:2048 (1.6M parameters, 6.5 MB), H = 4, 240 steps per rank.
# Environment: STEPS (per rank), MODEL, H, INTERACTION (pairwise|pull), KEEP=1 keeps the runs,
# SKIP_BUILD=1 uses the binaries already built (in $CARGO_TARGET_DIR or target/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rates=("$@")
[ "${#rates[@]}" -gt 0 ] || rates=(0.5 1 2 5)
steps="${STEPS:-240}"
model="${MODEL:-mlp:2048}"
h="${H:-4}"
interaction="${INTERACTION:-pairwise}"
ranks=4
batch=32

NETNS_TOOL=bench-overlap
source "$root/tools/netns-lib.sh"
netns_require_root
netns_build
netns_create

# run NAME LOCAL_STEPS [swarm train flags...]: 4 ranks in the namespace; prints "steps_per_s staleness_mean
# staleness_max bytes_per_interaction interactions".
run() {
  local name="$1" local_steps="$2"
  shift 2
  local out="$work/$name"
  netns_ranks "$out" "$ranks" --model "$model" --local-steps "$local_steps" \
    --interaction "$interaction" --batch-size "$batch" --train-subset "$((steps * ranks * batch))" \
    --epochs 1 --test-subset 1000 --lr 0.05 --lr-schedule constant --seed 5 "$@"
  python3 - "$out" "$ranks" <<'EOF'
import json, sys
out, ranks = sys.argv[1], int(sys.argv[2])
rates, copies, stale, smax, bytes_, inter = [], 0, 0, 0, 0, 0
for r in range(ranks):
    s = json.load(open(f"{out}/rank-{r}/summary.json"))
    st = s["stats"]
    rates.append(st["local_steps"] / s["train_seconds"])
    copies += st.get("copies_averaged", 0)
    stale += st.get("staleness_steps_total", 0)
    smax = max(smax, st.get("staleness_steps_max", 0))
    bytes_ += st["bytes_read"] + st["bytes_written"]
    inter += st["interactions"]
print(f"{sum(rates)/len(rates):.3f} {stale/max(copies,1):.2f} {smax} {bytes_/max(inter,1):.0f} {inter}")
EOF
}

netns_set_rate 0
echo "bench-overlap: $ranks ranks, $model, H = $h, $interaction, $steps steps per rank" >&2
# The machine is shared and noisy: no-exchange runs before and after the others, and their mean
# is the reference.
read -r alone_before _ _ _ _ < <(run alone 1000000000)
echo "bench-overlap: alone (before): $alone_before steps/s per rank" >&2

rows=()
for rate in "${rates[@]}"; do
  netns_set_rate "$rate"
  read -r off off_mean off_max bpi off_inter < <(run "off-$rate" "$h" --overlap off)
  read -r on on_mean on_max _ on_inter < <(run "on-$rate" "$h" --overlap on)
  rows+=("$rate $off $off_mean $off_max $on $on_mean $on_max $bpi $off_inter $on_inter")
done
netns_set_rate 0
read -r alone_after _ _ _ _ < <(run alone-after 1000000000)
alone="$(python3 -c "print(($alone_before + $alone_after) / 2)")"
echo "bench-overlap: alone (after): $alone_after steps/s per rank; reference: the mean, $alone" >&2

printf '%-10s %-9s %12s %12s %14s %14s\n' "rate" "mode" "steps/s" "of alone" "stale mean" "stale max"
printf '%-10s %-9s %12.2f %12s %14s %14s\n' "-" "alone" "$alone" "1.00" "-" "-"
best=""
for row in "${rows[@]}"; do
  read -r rate off off_mean off_max on on_mean on_max bpi off_inter on_inter <<<"$row"
  for mode_row in "blocking $off $off_mean $off_max" "overlap $on $on_mean $on_max"; do
    set -- $mode_row
    printf '%-10s %-9s %12.2f %12.2f %14s %14s\n' "$rate Gb/s" "$1" "$2" \
      "$(python3 -c "print($2 / $alone)")" "$3" "$4"
  done
  # How far this rate is from link time per interaction == compute time of H steps.
  gap="$(python3 -c "
import math
link = $bpi * 8 / ($rate * 1e9)
compute = $h / $alone
print(abs(math.log(link / compute)))")"
  echo "bench-overlap: $rate Gbit/s: $bpi bytes per interaction take $(python3 -c "print(f'{$bpi * 8 / ($rate * 1e9) * 1000:.0f}')") ms on the link; $h steps take $(python3 -c "print(f'{$h / $alone * 1000:.0f}')") ms; interactions $off_inter (off) / $on_inter (on)" >&2
  line="$(python3 -c "print(f'overlap: {$on / $off:.2f}x blocking, {$on / $alone:.2f} of no-exchange (at $rate Gbit/s)')")"
  if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $gap < $best else 1)"; then
    best="$gap"
    last="$line"
  fi
done
echo "$last"
