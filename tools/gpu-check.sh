#!/usr/bin/env bash
# The GPU check of issue 15, for a fresh machine with one NVIDIA GPU, after `bash tools/setup.sh`
# (which fetches the CUDA libtorch where `nvidia-smi` works). Builds, then:
#   (a) the default 8-node Fashion-MNIST run on cuda:0: goal >= 87.5% test accuracy; its s/epoch
#   (b) the same with --algo allreduce: goal >= 87.5%
#   (c) ResNet-20, 8 nodes sharing the GPU, one epoch on synthetic CIFAR-shaped data: images/s
#       beside a plain single-model loop (examples/plain_loop.rs) on the same GPU: goal >= 0.8x
#   (d) a 2-rank `launcher local` run over tcp with --device cuda: both ranks ok, each on the GPU
#       of its local rank (cuda:LOCAL_RANK modulo the visible GPUs)
# Prints one line per check and, last, `gpu-check: K/4 passed`; exits non-zero unless all pass.
# GPU_CHECK_DEVICE=cpu runs the same checks on the CPU (what could be exercised without a GPU;
# the CPU build is slower, so also set GPU_CHECK_EPOCHS and GPU_CHECK_CIFAR_TRAIN smaller there).
# Knobs: GPU_CHECK_EPOCHS (default 10, the default run's), GPU_CHECK_CIFAR_TRAIN (synthetic
# training images, default 20000), GPU_CHECK_BATCH (per node and for the loop, default 32),
# GPU_CHECK_BUILD=0 (use SWARM_BIN, LAUNCHER_BIN, PLAIN_LOOP_BIN or the release binaries as built).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device="${GPU_CHECK_DEVICE:-cuda:0}"
epochs="${GPU_CHECK_EPOCHS:-10}"
cifar_train="${GPU_CHECK_CIFAR_TRAIN:-20000}"
batch="${GPU_CHECK_BATCH:-32}"
rank_device=cuda
[ "$device" = cpu ] && rank_device=cpu
started=$SECONDS

if [ "$device" != cpu ]; then
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi finds no GPU here; run this on a machine with an NVIDIA GPU and its driver" >&2
    echo "gpu-check: (GPU_CHECK_DEVICE=cpu runs the checks on the CPU)" >&2
    exit 2
  fi
  if [ ! -f "$root/third_party/libtorch/lib/libtorch_cuda.so" ]; then
    echo "gpu-check: third_party/libtorch is the CPU libtorch; run: SWARM_CUDA=1 bash tools/setup.sh" >&2
    exit 2
  fi
fi

target="${CARGO_TARGET_DIR:-$root/target}"
build() {
  (cd "$root" && cargo build --release -q -p trainer -p launcher --bins --example plain_loop)
}
if [ "${GPU_CHECK_BUILD:-1}" = 1 ]; then
  echo "gpu-check: building (release)"
  build || { echo "gpu-check: build failed" >&2; exit 1; }
fi
swarm="${SWARM_BIN:-$target/release/swarm}"
launcher="${LAUNCHER_BIN:-$target/release/launcher}"
plain_loop="${PLAIN_LOOP_BIN:-$target/release/examples/plain_loop}"
for b in "$swarm" "$launcher" "$plain_loop"; do
  [ -x "$b" ] || { echo "gpu-check: $b missing (GPU_CHECK_BUILD=0 skips the build)" >&2; exit 2; }
done
if [ "$device" != cpu ] && ! ldd "$swarm" | grep -q libtorch_cuda; then
  # Built earlier against the CPU libtorch: torch-sys only looks for libtorch_cuda.so when it builds.
  echo "gpu-check: swarm does not link libtorch_cuda; rebuilding torch-sys against the CUDA libtorch"
  (cd "$root" && cargo clean --release -q -p torch-sys) && build || exit 1
  ldd "$swarm" | grep -q libtorch_cuda || { echo "gpu-check: swarm still does not link libtorch_cuda" >&2; exit 1; }
fi

work="$(mktemp -d /tmp/gpu-check.XXXXXX)"
trap 'rm -rf "$work"' EXIT
passed=0

# field FILE KEY: a number from a summary.json
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# at_least A B: A >= B
at_least() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$1" "$2"; }
report() {  # report NAME OK DETAILS
  if [ "$2" = 1 ]; then passed=$((passed + 1)); echo "gpu-check: $1: PASS $3"; else echo "gpu-check: $1: FAIL $3"; fi
}

accuracy_check() {  # accuracy_check NAME OUT ARGS...
  local name="$1" out="$2"; shift 2
  if ! "$swarm" train --device "$device" --epochs "$epochs" --quiet --out "$out" "$@" >"$out.log" 2>&1; then
    report "$name" 0 "(swarm failed: $(tail -n 1 "$out.log"))"; return
  fi
  local acc spe ok=0
  acc="$(field "$out/summary.json" final_test_accuracy)"
  spe="$(field "$out/summary.json" seconds_per_epoch)"
  at_least "$acc" 0.875 && ok=1
  report "$name" "$ok" "$(python3 -c "print(f'test accuracy {100*$acc:.2f}% (goal >= 87.5%), {$spe:.2f} s/epoch')")"
}

accuracy_check "(a) default 8-node Fashion-MNIST run on $device" "$work/a"
accuracy_check "(b) the same with --algo allreduce" "$work/b" --algo allreduce

# (c) Synthetic CIFAR-10 (binary format: a label byte, then 3x32x32 pixel bytes per record).
python3 - "$work/cifar" "$cifar_train" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
rng = random.Random(1)
for name, count in (("data_batch_1.bin", n), ("test_batch.bin", 1000)):
    with open(os.path.join(d, name), "wb") as f:
        for _ in range(count):
            f.write(bytes([rng.randrange(10)]) + rng.randbytes(3072))
PY
c_ok=0 c_detail=""
if "$swarm" train --data "$work/cifar" --model resnet20 --nodes 8 --device "$device" --epochs 1 \
    --batch-size "$batch" --quiet --out "$work/c" >"$work/c.log" 2>&1; then
  swarm_ips="$(python3 -c "import json; s=json.load(open('$work/c/summary.json')); print($cifar_train / s['seconds_per_epoch'])")"
  steps=$(( cifar_train / batch / 4 > 50 ? cifar_train / batch / 4 : 50 ))
  if loop_line="$("$plain_loop" "$work/cifar" resnet20 "$device" "$batch" "$steps" 2>&1)"; then
    loop_ips="$(echo "$loop_line" | sed -n 's/^plain-loop: \([0-9.]*\) images\/s.*/\1/p')"
    ratio="$(python3 -c "print(f'{$swarm_ips / $loop_ips:.2f}')")"
    at_least "$ratio" 0.8 && c_ok=1
    c_detail="$(python3 -c "print(f'8 nodes: {$swarm_ips:.0f} images/s, plain loop: {$loop_ips:.0f} images/s, ratio $ratio (goal >= 0.8)')")"
  else
    c_detail="(plain loop failed: $loop_line)"
  fi
else
  c_detail="(swarm failed: $(tail -n 1 "$work/c.log"))"
fi
report "(c) ResNet-20, 8 nodes sharing $device, synthetic CIFAR" "$c_ok" "$c_detail"

# (d) Two ranks on this host over tcp, --device cuda: rank r on cuda:(r mod GPUs).
d_ok=0 d_detail=""
if "$launcher" local -n 2 --timeout 300 --summary "$work/d.json" -- \
    "$swarm" train --transport tcp --device "$rank_device" --epochs 1 --train-subset 10000 \
    --out "$work/d" >"$work/d.log" 2>&1; then
  gpus="$( [ "$device" = cpu ] && echo 1 || nvidia-smi -L | wc -l)"
  d_detail="$(python3 - "$work/d.json" "$work/d.log" "$rank_device" "$gpus" <<'PY'
import json, re, sys
s = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
problems = []
if s["world_size"] != 2 or s["failed_ranks"] or any(r.get("status") != "ok" for r in s["ranks"]):
    problems.append(f"ranks {[(r['rank'], r.get('status')) for r in s['ranks']]}")
for rank in (0, 1):
    want = "cpu" if sys.argv[3] == "cpu" else f"cuda:{rank % int(sys.argv[4])}"
    device_pattern = "cpu" if want == "cpu" else r"cuda:\d+"
    m = re.search(rf"rank {rank}/2: .* on ({device_pattern}),", log)
    if not m or m.group(1) != want:
        problems.append(f"rank {rank} on {m.group(1) if m else '?'}, not {want}")
acc = s.get("final_test_accuracy")
print(("ok " if not problems else "") + (f"2 ranks ok, test accuracy {100*acc:.2f}% after 1 epoch" if not problems else "; ".join(problems)))
PY
)"
  case "$d_detail" in ok*) d_ok=1; d_detail="${d_detail#ok }" ;; esac
else
  d_detail="(launcher failed: $(tail -n 2 "$work/d.log" | tr '\n' ' '))"
fi
report "(d) launcher local -n 2, tcp, --device $rank_device" "$d_ok" "$d_detail"

echo "gpu-check: $passed/4 passed ($((SECONDS - started)) s)"
[ "$passed" = 4 ]
