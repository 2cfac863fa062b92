#!/usr/bin/env bash
# Runs the authors' one-sided pull protocol (our re-implementation, pull_protocol.py, 8 MPI ranks)
# beside `swarm train --interaction pull` at the same settings, for H in {1, 4} and 2 seeds, and
# prints a table of final test accuracies (the mean of the 8 models). See README.md.
#
#   tools/compare-authors/run.sh                    # everything: venv, build, 8 runs, table
#   H_VALUES="4" SEEDS="1" tools/compare-authors/run.sh
#   SWARM_ARGS="--max-lead off" tools/compare-authors/run.sh   # extra flags for swarm only
#   ONLY=swarm tools/compare-authors/run.sh         # or ONLY=authors: one side only;
#                                                   # ONLY=table: print the table of OUT only
#
# Not part of CI: it downloads ~0.6 GB once and takes ~25 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
out="${OUT:-$here/runs}"
H_VALUES="${H_VALUES:-1 4}"
SEEDS="${SEEDS:-1 2}"
EPOCHS="${EPOCHS:-10}"
RANKS=8
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
SWARM_ARGS="${SWARM_ARGS:-}"
ONLY="${ONLY:-both}"
TORCH_VERSION=2.13.0

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Open MPI (mpirun, and mpicc for building mpi4py) -------------------------------------------
missing=()
for p in openmpi-bin libopenmpi-dev python3-venv dataset-fashion-mnist; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "compare-authors: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv: torch (CPU part of the PyPI wheel), numpy, mpi4py built against Open MPI ---------
if ! "$venv/bin/python" -c "import torch, mpi4py, numpy" 2>/dev/null; then
  echo "compare-authors: building $venv (torch $TORCH_VERSION without its CUDA wheels, mpi4py)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" numpy
  # The PyPI wheel's dependencies include ~2.7 GB of NVIDIA libraries that a CPU run never uses:
  # install torch alone, then its small pure-Python dependencies.
  "${pip[@]}" --no-deps --only-binary=:all: "torch==$TORCH_VERSION"
  "${pip[@]}" filelock typing-extensions sympy networkx jinja2 fsspec
  # libtorch_cuda.so is linked by libtorch.so but never used on CPU; without the NVIDIA wheels its
  # dependencies cannot load. We give the loader empty stand-ins (see README: "torch without CUDA").
  "$venv/bin/python" "$here/cpu_only_torch.py" "$venv"
  MPICC="$(command -v mpicc)" "${pip[@]}" --no-binary=mpi4py mpi4py
  "$venv/bin/python" -c "import torch, mpi4py.MPI as M; assert not torch.cuda.is_available(); print('compare-authors: torch', torch.__version__, '|', M.Get_library_version().splitlines()[0])"
fi

# --- swarm ------------------------------------------------------------------------------------------
swarm="${SWARM_BIN:-}"
if [ -z "$swarm" ] && [ "$ONLY" != authors ] && [ "$ONLY" != table ]; then
  (cd "$root" && nice -n 10 cargo build --release -q -p trainer)
  swarm="${CARGO_TARGET_DIR:-$root/target}/release/swarm"
fi

mpirun_flags=(--oversubscribe -n "$RANKS")
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)

mkdir -p "$out"
for h in $H_VALUES; do
  for seed in $SEEDS; do
    [ "$ONLY" = table ] && continue
    if [ "$ONLY" != swarm ]; then
      echo "compare-authors: authors' protocol H=$h seed=$seed"
      OMP_NUM_THREADS=1 mpirun "${mpirun_flags[@]}" "$venv/bin/python" "$here/pull_protocol.py" \
        --local-steps "$h" --seed "$seed" --epochs "$EPOCHS" --data "$DATA" \
        --out "$out/authors-h$h-s$seed.json" >"$out/authors-h$h-s$seed.log" 2>&1 ||
        { tail -20 "$out/authors-h$h-s$seed.log"; exit 1; }
    fi
    if [ "$ONLY" != authors ]; then
      echo "compare-authors: swarm pull H=$h seed=$seed $SWARM_ARGS"
      # shellcheck disable=SC2086  # SWARM_ARGS is a list of flags
      "$swarm" train --nodes "$RANKS" --topology complete --model mlp:256 --batch-size 32 \
        --lr 0.1 --lr-schedule constant --momentum 0 --epochs "$EPOCHS" --interaction pull \
        --local-steps "$h" --seed "$seed" --data "$DATA" --quiet --out "$out/swarm-h$h-s$seed" \
        $SWARM_ARGS >"$out/swarm-h$h-s$seed.log" 2>&1 ||
        { tail -20 "$out/swarm-h$h-s$seed.log"; exit 1; }
    fi
  done
done

"$venv/bin/python" - "$out" "$H_VALUES" "$SEEDS" <<'EOF'
import json, os, sys
out, hs, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def acc(path):
    try:
        with open(path) as f:
            return 100.0 * json.load(f)["final_test_accuracy"]
    except (OSError, KeyError, ValueError):
        return None
print()
print("| run | H | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
print("|---|---|" + "---|" * (len(seeds) + 1))
gaps = {}
for h in hs:
    for name, fmt in (("authors' protocol (8 MPI ranks)", "authors-h{h}-s{s}.json"),
                      ("swarm train --interaction pull", "swarm-h{h}-s{s}/summary.json")):
        vals = [acc(os.path.join(out, fmt.format(h=h, s=s))) for s in seeds]
        got = [v for v in vals if v is not None]
        mean = sum(got) / len(got) if got else None
        gaps.setdefault(h, []).append(mean)
        cells = ["-" if v is None else f"{v:.2f}" for v in vals]
        print(f"| {name} | {h} | " + " | ".join(cells) + f" | {'-' if mean is None else f'{mean:.2f}'} |")
print()
for h, (a, s) in gaps.items():
    if a is not None and s is not None:
        print(f"H={h}: swarm pull - authors' protocol = {s - a:+.2f} points (mean of {len(seeds)} seeds)")
EOF
