//! torch-sys links libtorch but adds no run-time search path: add one so `swarm` runs without
//! LD_LIBRARY_PATH. With a CUDA libtorch (tools/setup.sh with SWARM_CUDA=1), also link
//! libtorch_cuda.so for good: nothing calls into it (it registers the CUDA kernels when it
//! loads), so the linker's --as-needed would drop it and libtorch would see no CUDA device.
fn main() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // crate::device says, when no GPU is visible, whether this build could use one.
    println!("cargo:rustc-env=SWARM_LIBTORCH_CUDA={}", u8::from(cuda));
}
