"""Makes a `pip install --no-deps torch` importable on a machine without the NVIDIA wheels.

PyPI's Linux torch wheel is a CUDA build: libtorch_python.so links libtorch_cuda.so, libc10_cuda.so
and the CUDA runtime, cuDNN, NCCL and cuFile, which come as ~2.7 GB of separate wheels that a CPU
run never calls. This script replaces those libraries in the venv's torch/lib with small stand-ins
built here with gcc: each defines exactly the symbols torch's CPU libraries import from it
(functions return 0; objects are zero-filled), under the same symbol versions, so the loader is
satisfied. The CPU code path (libtorch_cpu.so) is untouched; torch.cuda.is_available() is False.

    python cpu_only_torch.py VENV
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

# Libraries that the CPU build needs only because it was linked with CUDA support.
CUDA_LIBS = ["libtorch_cuda.so", "libc10_cuda.so"]
SYSTEM_LIBS = ["libstdc++.so.6", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
               "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2"]


def dyn_syms(path):
    """(name, version or None, type, size, defined, weak) for each dynamic symbol."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", path], check=True, capture_output=True,
                         text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue
        _, _, size, kind, bind, _, ndx = parts[:7]
        name = parts[7]
        version = None
        m = re.match(r"([^@]+)@@?([^ ]+)", name)
        if m:
            name, version = m.group(1), m.group(2)
        size = int(size, 16) if size.startswith("0x") else int(size)
        rows.append((name, version, kind, size, ndx != "UND", bind == "WEAK"))
    return rows


def needed(path):
    out = subprocess.run(["readelf", "-d", "-W", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.+)\]", out)


def system_lib(name):
    out = subprocess.run(["ldconfig", "-p"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith(name + " ") and "x86-64" in line:
            return line.split("=> ")[-1]
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    venv = sys.argv[1]
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "torch"))
    if not found:
        sys.exit(f"no torch package under {venv}: install torch first")
    torch_dir = found[0]
    lib = os.path.join(torch_dir, "lib")
    marker = os.path.join(lib, ".cpu-only-stubs")
    if os.path.exists(marker):
        return
    # What gets loaded by `import torch`: the extension module and the libraries it pulls in.
    loaded = [p for p in glob.glob(os.path.join(torch_dir, "_C*.so"))]
    loaded += [os.path.join(lib, n) for n in ("libtorch_python.so", "libtorch.so",
                                                 "libtorch_global_deps.so", "libshm.so",
                                                 "libtorch_cpu.so", "libc10.so")]
    real = {n: os.path.join(lib, n) for n in ("libtorch_cuda.so", "libc10_cuda.so")}

    providers = [os.path.join(lib, n) for n in ("libtorch_cpu.so", "libc10.so", "libgomp.so.1",
                                                 "libtorch_python.so", "libtorch.so", "libshm.so")]
    providers += [p for p in (system_lib(n) for n in SYSTEM_LIBS) if p]
    defined = set()
    for p in providers:
        if os.path.exists(p):
            defined.update(s[0] for s in dyn_syms(p) if s[4])
    real_defs = {}
    for n, p in real.items():
        real_defs[n] = {s[0]: s for s in dyn_syms(p) if s[4]} if os.path.exists(p) else {}

    # Each stand-in library: {symbol: (kind, size)} and the versions its symbols carry.
    stubs = {n: {} for n in CUDA_LIBS}
    versions = {n: set() for n in CUDA_LIBS}
    for path in loaded:
        for dep in needed(path):
            if dep not in stubs and not os.path.exists(os.path.join(lib, dep)) and not system_lib(dep):
                stubs[dep], versions[dep] = {}, set()
        for name, version, kind, size, is_def, weak in dyn_syms(path):
            if is_def or weak or name in defined or not name:
                continue
            owner = None
            if version and version in stubs:
                owner = version
            else:
                for n, defs in real_defs.items():
                    if name in defs:
                        owner, kind, size = n, defs[name][2], defs[name][3]
                        break
            owner = owner or "libtorch_cuda.so"
            stubs[owner][name] = (kind, max(size, 8))
            if version:
                versions[owner].add(version)

    with tempfile.TemporaryDirectory() as tmp:
        for soname, symbols in stubs.items():
            src = os.path.join(tmp, "stub.c")
            # C++ functions (torch's own CUDA libraries) may return references: they get a zeroed,
            # page-aligned area (so integers read from the low bits are 0, e.g. no devices). The C
            # APIs (CUDA runtime, cuDNN, CUPTI, ...) return 100, cudaErrorNoDevice.
            cxx = soname in CUDA_LIBS
            with open(src, "w") as f:
                f.write("static char stub_zeros[1 << 16] __attribute__((aligned(4096)));\n"
                        'extern const char class_type_info_vtable[] '
                        '__asm__("_ZTVN10__cxxabiv117__class_type_infoE");\n')
                result = "(long)stub_zeros" if cxx else "100"
                for k, (name, (kind, size)) in enumerate(sorted(symbols.items())):
                    if name.startswith("_ZTI"):
                        # A std::type_info (pybind11 hashes its name): vtable of a plain class
                        # type_info, and the mangled type name.
                        f.write(f'struct type_info_{k} {{ const char *vtable; const char *name; }} '
                                f'stub_obj_{k} __asm__("{name}") = {{ class_type_info_vtable + 16, '
                                f'"{name[4:]}" }};\n')
                    elif name.startswith("_ZTS"):
                        f.write(f'const char stub_obj_{k}[] __asm__("{name}") = "{name[4:]}";\n')
                    elif kind in ("OBJECT", "TLS"):
                        f.write(f'char stub_obj_{k}[{size}] __asm__("{name}") __attribute__((aligned(16)));\n')
                    else:
                        f.write(f'long stub_fn_{k}(void) __asm__("{name}");\n'
                                f"long stub_fn_{k}(void) {{ return {result}; }}\n")
            args = ["gcc", "-shared", "-fPIC", "-O0", "-o", os.path.join(tmp, soname), src,
                    f"-Wl,-soname,{soname}", "-lstdc++"]
            if versions[soname]:
                vs = os.path.join(tmp, "versions.map")
                with open(vs, "w") as f:
                    vlist = sorted(versions[soname])
                    for v in vlist[:-1]:
                        f.write(f"{v} {{ }};\n")
                    f.write(f"{vlist[-1]} {{ global: *; }};\n")
                args.append(f"-Wl,--version-script={vs}")
            subprocess.run(args, check=True)
            os.replace(os.path.join(tmp, soname), os.path.join(lib, soname))
            print(f"cpu_only_torch: {soname}: {len(symbols)} stand-in symbols")
    # torch.distributed's bindings construct NCCL objects at import; this tool uses MPI, not
    # torch.distributed, so its packages report themselves unavailable (as in builds without it).
    probe = re.compile(r'hasattr\(torch\._C, "_(c10d|rpc|dist_autograd)_init"\)')
    switched = 0
    for path in glob.glob(os.path.join(torch_dir, "**", "*.py"), recursive=True):
        with open(path) as f:
            text = f.read()
        text, count = probe.subn("False", text)
        if count:
            switched += count
            with open(path, "w") as f:
                f.write(text)
    if not switched:
        sys.exit("torch.distributed changed: cannot switch it off (see cpu_only_torch.py)")
    open(marker, "w").close()


if __name__ == "__main__":
    main()
