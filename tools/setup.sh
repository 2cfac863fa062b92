#!/usr/bin/env bash
# Installs what swarm needs on a fresh Debian machine, idempotently:
#   - system packages: build tools, pkg-config, hwloc/udev headers, Fashion-MNIST (dataset-fashion-mnist)
#   - libtorch 2.13 into third_party/libtorch, unpacked from the PyPI wheels: the CPU part by
#     default; the CUDA one (into third_party/libtorch-cuda, linked as third_party/libtorch) where
#     `nvidia-smi` works or SWARM_CUDA=1 is set (SWARM_CUDA=0 forces the CPU one)
# Safe to run again: every step is skipped when its result is already present.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
libtorch="$root/third_party/libtorch"
TORCH_VERSION=2.13.0

# CUDA libtorch: the torch wheel's CUDA libraries plus the NVIDIA wheels libtorch_cuda.so loads
# (its DT_NEEDED entries, and theirs), at the versions torch 2.13.0's Requires-Dist pins (through
# cuda-toolkit==13.0.3). Left out: cuSOLVER (only libtorch_cuda_linalg.so, loaded lazily by
# torch.linalg), NVTX, Triton and cuda-bindings (Python only). Download ~2.3 GB.
cuda_wheels=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.1.3 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35
  nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 nvidia-cudnn-cu13==9.20.0.48
  nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.29.7 nvidia-nvshmem-cu13==3.4.5)
case "${SWARM_CUDA:-auto}" in
  1) want_cuda=1 ;;
  0) want_cuda=0 ;;
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want_cuda=1; else want_cuda=0; fi ;;
  *) echo "setup: SWARM_CUDA must be 1 (CUDA libtorch), 0 (CPU libtorch) or unset (CUDA where nvidia-smi works)" >&2; exit 2 ;;
esac

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(build-essential pkg-config libhwloc-dev libudev-dev dataset-fashion-mnist unzip python3-pip
  libfontconfig1-dev libfreetype-dev fonts-dejavu-core)  # the last three: PNG plots (plotters)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$want_cuda" = 1 ]; then
  libtorch_cuda="$root/third_party/libtorch-cuda"
  if [ ! -f "$libtorch_cuda/lib/libtorch_cuda.so" ]; then
    echo "setup: fetching libtorch $TORCH_VERSION with CUDA 13 (torch wheel + NVIDIA runtime wheels, ~2.3 GB download, 3.4 GB unpacked)"
    wheels="${SWARM_WHEEL_DIR:-$(mktemp -d)}"
    [ -n "${SWARM_WHEEL_DIR:-}" ] || trap 'rm -rf "$wheels"' EXIT
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "torch==$TORCH_VERSION" "${cuda_wheels[@]}"
    staging="$libtorch_cuda.partial"
    rm -rf "$staging" && mkdir -p "$staging/lib"
    unzip -q -o "$wheels"/torch-"$TORCH_VERSION"-*.whl 'torch/include/*' 'torch/lib/*.so*' -x 'torch/lib/libtorch_python.so' -d "$staging/wheel"
    mv "$staging/wheel/torch/include" "$staging/include"
    mv "$staging/wheel/torch/lib/"*.so* "$staging/lib/"
    rm -rf "$staging/wheel"
    # Every NVIDIA wheel keeps its libraries in nvidia/<part>/lib; libtorch finds them next to
    # itself ($ORIGIN is in its run path).
    for spec in "${cuda_wheels[@]}"; do
      name="${spec%%==*}" version="${spec#*==}"
      whl=("$wheels/${name//-/_}-$version-"*.whl)
      unzip -q -o -j "${whl[0]}" 'nvidia/*/lib/*.so*' -d "$staging/lib"
    done
    missing_libs="$(LD_LIBRARY_PATH="$staging/lib" ldd "$staging/lib/libtorch_cuda.so" | grep 'not found' | grep -v 'libcuda\.so' || true)"
    if [ -n "$missing_libs" ]; then
      echo "setup: the CUDA libtorch lacks libraries it loads:" >&2; echo "$missing_libs" >&2; exit 1
    fi
    rm -rf "$libtorch_cuda" && mv "$staging" "$libtorch_cuda"
  fi
  # third_party/libtorch (what .cargo/config.toml points the build at) becomes the CUDA one; a
  # CPU libtorch that was there moves to third_party/libtorch-cpu.
  if [ -d "$libtorch" ] && [ ! -L "$libtorch" ]; then
    rm -rf "$root/third_party/libtorch-cpu" && mv "$libtorch" "$root/third_party/libtorch-cpu"
  fi
  if [ "$(readlink "$libtorch" 2>/dev/null)" != libtorch-cuda ]; then
    ln -sfn libtorch-cuda "$libtorch"
    echo "setup: third_party/libtorch -> libtorch-cuda; run \`cargo clean -p torch-sys\` before the next build if this checkout was built with the CPU libtorch"
  fi
  echo "setup: CUDA libtorch ready in $libtorch_cuda"
elif [ "${SWARM_CUDA:-auto}" = 0 ] && [ "$(readlink "$libtorch" 2>/dev/null)" = libtorch-cuda ]; then
  # SWARM_CUDA=0 after a CUDA setup: back to the CPU libtorch kept in libtorch-cpu, or a fresh one.
  # (Without SWARM_CUDA, a CUDA setup made on purpose stays.)
  rm "$libtorch"
  if [ -d "$root/third_party/libtorch-cpu" ]; then mv "$root/third_party/libtorch-cpu" "$libtorch"; fi
  echo "setup: third_party/libtorch is the CPU libtorch again; run \`cargo clean -p torch-sys\` before the next build"
fi
if [ "$want_cuda" = 0 ] && [ ! -f "$libtorch/lib/libtorch_cpu.so" ]; then
  echo "setup: fetching libtorch $TORCH_VERSION (CPU part of the PyPI wheel, ~0.5 GB download)"
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  staging="$libtorch.partial"
  rm -rf "$staging" && mkdir -p "$staging/lib"
  unzip -q -o "$wheels"/torch-*.whl 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' \
    'torch/lib/libc10.so' 'torch/lib/libgomp.so.1' -d "$staging/wheel"
  unzip -q -o -j "$wheels"/nvidia_cuda_runtime-*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$staging/lib"
  unzip -q -o -j "$wheels"/nvidia_cuda_cupti-*.whl 'nvidia/cu13/lib/libcupti.so.13' -d "$staging/lib"
  mv "$staging/wheel/torch/include" "$staging/include"
  mv "$staging/wheel/torch/lib/"* "$staging/lib/"
  rm -rf "$staging/wheel"
  rm -rf "$libtorch" && mv "$staging" "$libtorch"
  echo "setup: libtorch ready in $libtorch"
fi

# RDMA (crates/rdma-transport, tools/rxe-vm): cmake/clang build sideway's verbs bindings; qemu,
# busybox, kmod and the verbs userspace (+ perftest) run the soft-RoCE VM tests. The guest kernel
# (Debian's linux-image .deb) is fetched by tools/rxe-vm/run.sh with `apt-get download` on first use.
rdma_packages=(cmake clang libclang-dev qemu-system-x86 busybox-static kmod rdma-core ibverbs-providers
  ibverbs-utils libibverbs-dev perftest iproute2 zstd xz-utils cpio)
missing=()
for p in "${rdma_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages for RDMA: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Multi-process launcher (tools/launcher, tools/slurm-localhost.sh): a real one-node Slurm
# (slurmctld, slurmd, srun; munge for its authentication) and Open MPI's mpirun for the
# launcher's `slurm` and `mpirun` modes.
launcher_packages=(slurm-wlm munge openmpi-bin)
missing=()
for p in "${launcher_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages for the launcher: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
