#!/usr/bin/env bash
# Installs what swarm needs on a fresh Debian machine, idempotently:
#   - system packages: build tools, pkg-config, hwloc/udev headers, Fashion-MNIST (dataset-fashion-mnist)
#   - libtorch 2.13 (CPU) into third_party/libtorch, unpacked from the PyPI wheels (no CUDA needed)
# Safe to run again: every step is skipped when its result is already present.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
libtorch="$root/third_party/libtorch"
TORCH_VERSION=2.13.0

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

if [ ! -f "$libtorch/lib/libtorch_cpu.so" ]; then
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
