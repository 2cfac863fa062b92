//! Run-time selection of the SIMD width of the hot loops.
//!
//! The crate is built for the baseline target (x86-64: SSE2 only), so that one binary runs on
//! every node of a cluster. The codecs' loops are plain safe Rust written to vectorize at any
//! width (fixed-size blocks, lane accumulators, no per-element branches or library calls);
//! [`run`] executes such a loop inside a function compiled with AVX2 or AVX-512 enabled when the
//! CPU has them, so that LLVM vectorizes the same source at 8 or 16 lanes instead of 4.
//!
//! The only `unsafe` of the crate is here: calling a `#[target_feature]` function, which is
//! sound once the feature has been detected on the running CPU. No intrinsics, no pointers.
//! Every level computes bit-identical results: the loops are element-wise or integer
//! reductions, and float reductions are written with explicit lanes whose order the compiler
//! must keep (it never reassociates float additions nor contracts them into FMAs).
//!
//! `QUANT_SIMD=sse2|avx2|avx512` (read once) caps the level, for measurements.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// A SIMD level, in increasing width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// The build target's baseline (SSE2 on x86-64).
    Base = 1,
    /// AVX2 (256-bit).
    Avx2 = 2,
    /// AVX-512 F/BW/VL (512-bit).
    Avx512 = 3,
}

/// The detected level (0 until the first call of [`level`]).
static DETECTED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// A per-thread cap, for tests comparing the levels.
    static CAP: Cell<Option<Level>> = const { Cell::new(None) };
}

fn from_u8(v: u8) -> Level {
    match v {
        3 => Level::Avx512,
        2 => Level::Avx2,
        _ => Level::Base,
    }
}

fn detect() -> Level {
    let cap = match std::env::var("QUANT_SIMD").as_deref() {
        Ok("sse2") | Ok("base") => Level::Base,
        Ok("avx2") => Level::Avx2,
        _ => Level::Avx512,
    };
    #[cfg(target_arch = "x86_64")]
    let found = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
    {
        Level::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2") {
        Level::Avx2
    } else {
        Level::Base
    };
    #[cfg(not(target_arch = "x86_64"))]
    let found = Level::Base;
    found.min(cap)
}

/// The level [`run`] uses on this thread: the widest the CPU supports, capped by `QUANT_SIMD`
/// and by [`with_cap`].
pub(crate) fn level() -> Level {
    let mut v = DETECTED.load(Ordering::Relaxed);
    if v == 0 {
        v = detect() as u8;
        DETECTED.store(v, Ordering::Relaxed);
    }
    let l = from_u8(v);
    match CAP.with(Cell::get) {
        Some(c) => l.min(c),
        None => l,
    }
}

/// Runs `f` with the level capped at `cap` on this thread (tests).
#[cfg(test)]
pub(crate) fn with_cap<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let old = CAP.with(|c| c.replace(Some(cap)));
    let r = f();
    CAP.with(|c| c.set(old));
    r
}

/// Runs `f` compiled for the widest available level. `f` and everything it calls on the hot
/// path must be `#[inline(always)]` (or closures called once), so that it is compiled inside
/// the wrapper, with the wrapper's target features.
#[inline(always)]
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            // SAFETY: `level()` returns `Avx512` only when `is_x86_feature_detected!` found
            // avx512f, avx512bw, avx512vl and avx2 on this CPU, the features `avx512` enables.
            Level::Avx512 => unsafe { avx512(f) },
            // SAFETY: `level()` returns `Avx2` only when `is_x86_feature_detected!` found avx2.
            Level::Avx2 => unsafe { avx2(f) },
            Level::Base => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{with_cap, Level};
    use crate::CodecSpec;

    /// Every SIMD level must produce the same bytes and the same decoded bits: payloads cross
    /// nodes with different CPUs.
    #[test]
    fn levels_agree_bit_for_bit() {
        let specs = [
            "lattice:8",
            "lattice:16",
            "lattice:4",
            "lattice:2",
            "lattice:5",
            "lattice:13",
            "minmax:8",
            "minmax:4",
            "minmax:2",
            "minmax:1",
            "minmax:3",
            "minmax:4:stochastic",
            "sign",
            "terngrad",
            "qsgd:7",
            "qsgd:127",
            "topk:0.05+minmax:4",
            "ef(sign)",
        ];
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for d in [1usize, 64, 65, 777, 5000, 70_001] {
            let x: Vec<f32> = (0..d)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / 16_777_216.0 - 0.5) * 0.2
                })
                .collect();
            let y: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + (i % 5) as f32 * 1e-4)
                .collect();
            for spec in specs {
                let run = |level| {
                    with_cap(level, || {
                        let mut c = spec.parse::<CodecSpec>().unwrap().build(5).unwrap();
                        c.observe_distance(0.001);
                        let mut bytes = Vec::new();
                        let mut out = vec![0f32; d];
                        let mut all = Vec::new();
                        for _ in 0..2 {
                            c.encode(&x, &mut bytes).unwrap();
                            let rep = c.decode(&bytes, &y, &mut out).unwrap();
                            all.push((
                                bytes.clone(),
                                rep,
                                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            ));
                        }
                        all
                    })
                };
                let base = run(Level::Base);
                assert!(
                    base == run(Level::Avx2),
                    "{spec} d={d}: AVX2 differs from baseline"
                );
                assert!(
                    base == run(Level::Avx512),
                    "{spec} d={d}: AVX-512 differs from baseline"
                );
            }
            for bits in 1..=16u32 {
                let codes: Vec<u32> = x.iter().map(|v| v.to_bits() >> (32 - bits)).collect();
                let pack = |level| {
                    with_cap(level, || {
                        let mut b = Vec::new();
                        crate::pack_bits(&codes, bits, &mut b).unwrap();
                        let mut back = vec![0u32; d];
                        crate::unpack_bits(&b, bits, &mut back).unwrap();
                        assert_eq!(back, codes);
                        b
                    })
                };
                let base = pack(Level::Base);
                assert_eq!(base, pack(Level::Avx2), "pack {bits} bits");
                assert_eq!(base, pack(Level::Avx512), "pack {bits} bits");
            }
        }
    }
}
