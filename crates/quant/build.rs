//! Enables the AVX-512 kernels (`cfg(quant_avx512)`) when the compiler has stable AVX-512
//! intrinsics and target features (Rust 1.89); older compilers (the workspace's MSRV is 1.85)
//! build the SSE2 and AVX2 paths only.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(quant_avx512)");
    println!("cargo::rerun-if-changed=build.rs");
    // `QUANT_NO_AVX512=1` builds without the AVX-512 kernels, as an older compiler would.
    println!("cargo::rerun-if-env-changed=QUANT_NO_AVX512");
    if std::env::var_os("QUANT_NO_AVX512").is_some() {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor >= 89 {
        println!("cargo::rustc-cfg=quant_avx512");
    }
}
