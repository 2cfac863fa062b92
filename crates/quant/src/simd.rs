//! The crate's SIMD module: run-time selection of the SIMD width of the hot loops, and the
//! explicit `std::arch` kernels (non-temporal "streaming" stores of large outputs).
//!
//! The crate is built for the baseline target (x86-64: SSE2 only), so that one binary runs on
//! every node of a cluster. The codecs' arithmetic is plain safe Rust written to vectorize at
//! any width (fixed-size blocks, lane accumulators, no per-element branches or library calls);
//! [`run`] executes such a loop inside a function compiled with AVX2 or AVX-512 enabled when the
//! CPU has them, so that LLVM vectorizes the same source at 8 or 16 lanes instead of 4.
//! Where that source stays far from the hardware, explicit kernels take over: packing of full
//! vertical blocks (AVX2, AVX-512) and the lattice:8 encoder and decoder (SSE2, AVX2, AVX-512),
//! each in the scalar code's operation order.
//!
//! What LLVM cannot derive from safe code is *how* the results are stored. A plain store to a
//! line that is not in the cache first reads that line from memory (read-for-ownership), so a
//! decoder writing 64 MB moves 128 MB; `memcpy` avoids this with non-temporal stores. [`Stream`]
//! gives the codecs the same: values are produced into a small stack buffer (L1-resident) and
//! copied to the output with `_mm_stream_si128` / `_mm256_stream_si256` / `_mm512_stream_si512`
//! (module `x86`), whole aligned 64-byte lines only (the unaligned head and tail of each copy
//! use ordinary stores), and an `_mm_sfence` when the stream is dropped. Streaming is used only
//! for calls whose footprint exceeds the last-level cache ([`stream_threshold`]): below that the
//! output is better left in the cache.
//!
//! The crate's only `unsafe` is here (module-level `#![allow(unsafe_code)]`, a `// SAFETY:`
//! comment at every `unsafe` block): calling `#[target_feature]` functions once the feature is
//! detected, and the streaming copies on raw pointers derived from slices whose lengths are
//! checked. Every kernel has a safe scalar twin ([`Level::Scalar`], no intrinsics: what the
//! codecs computed before this module had intrinsics), and the tests below compare every level
//! with it bit for bit. Every level computes bit-identical results: the loops are element-wise
//! or integer reductions, float reductions are written with explicit lanes whose order the
//! compiler must keep (it never reassociates float additions nor contracts them into FMAs), and
//! a streaming copy moves bits, never values.
//!
//! `QUANT_SIMD=scalar|sse2|avx2|avx512` (read once) caps the level, for measurements;
//! `QUANT_STREAM_MIN=BYTES` sets the streaming threshold (`QUANT_STREAM=0` turns streaming off).
//! Under Miri the level is always [`Level::Scalar`].
//!
//! aarch64: NEON is the baseline there, so [`run`]'s loops are already vectorized with it; the
//! streaming copy has no `std::arch` counterpart (AArch64's non-temporal `STNP` has no
//! intrinsic), so aarch64 and every other architecture run the scalar path.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(all(target_arch = "x86_64", quant_avx512))]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// A SIMD level, in increasing width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// No intrinsics: safe Rust compiled for the build target's baseline, ordinary stores.
    /// The reference every other level is compared with.
    Scalar = 1,
    /// SSE2 (the x86-64 baseline): the baseline loops, plus streaming stores.
    Sse2 = 2,
    /// AVX2 (256-bit).
    Avx2 = 3,
    /// AVX-512 F/BW/VL (512-bit).
    Avx512 = 4,
}

/// The detected level (0 until the first call of [`level`]).
static DETECTED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// A per-thread cap, for tests comparing the levels.
    static CAP: Cell<Option<Level>> = const { Cell::new(None) };
    /// A per-thread streaming threshold, for tests.
    static STREAM_MIN: Cell<Option<usize>> = const { Cell::new(None) };
}

fn from_u8(v: u8) -> Level {
    match v {
        4 => Level::Avx512,
        3 => Level::Avx2,
        2 => Level::Sse2,
        _ => Level::Scalar,
    }
}

fn detect() -> Level {
    let cap = match std::env::var("QUANT_SIMD").as_deref() {
        Ok("scalar") | Ok("none") => Level::Scalar,
        Ok("sse2") | Ok("base") => Level::Sse2,
        Ok("avx2") => Level::Avx2,
        _ => Level::Avx512,
    };
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    let found = if cfg!(quant_avx512)
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
    {
        Level::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2") {
        Level::Avx2
    } else {
        Level::Sse2
    };
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let found = Level::Scalar;
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

/// Runs `f` at the level [`level`] gives, or at `max` if that is lower (everything inside `f`
/// behaves as on a CPU without the wider level: loop widths, explicit kernels, streaming
/// stores). For work measured faster at a narrower level; results are the same at every level.
pub(crate) fn at_most<R>(max: Level, f: impl FnOnce() -> R) -> R {
    let old = CAP.with(|c| c.replace(Some(c.get().map_or(max, |v| v.min(max)))));
    let r = f();
    CAP.with(|c| c.set(old));
    r
}

/// Runs `f` with the level capped at `cap` on this thread (tests).
#[cfg(test)]
pub(crate) fn with_cap<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let old = CAP.with(|c| c.replace(Some(cap)));
    let r = f();
    CAP.with(|c| c.set(old));
    r
}

/// Runs `f` with the streaming threshold set to `min` bytes on this thread (tests: 0 streams
/// every output, `usize::MAX` none).
#[cfg(test)]
pub(crate) fn with_stream_min<R>(min: usize, f: impl FnOnce() -> R) -> R {
    let old = STREAM_MIN.with(|c| c.replace(Some(min)));
    let r = f();
    STREAM_MIN.with(|c| c.set(old));
    r
}

/// Runs `f` compiled for the widest available level. `f` and everything it calls on the hot
/// path must be `#[inline(always)]` (or closures called once), so that it is compiled inside
/// the wrapper, with the wrapper's target features.
#[inline(always)]
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    run_max(Level::Avx512, f)
}

/// [`run`] with the width capped at `max` (for loops measured faster at a narrower width; the
/// results are the same at every width).
#[inline(always)]
pub(crate) fn run_max<R>(max: Level, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level().min(max) {
            // SAFETY: `level()` returns `Avx512` only when `is_x86_feature_detected!` found
            // avx512f, avx512bw, avx512vl and avx2 on this CPU, the features `avx512` enables.
            #[cfg(quant_avx512)]
            Level::Avx512 => unsafe { avx512(f) },
            // SAFETY: without AVX-512 support in the compiler `level()` never returns
            // `Avx512`; were it to, AVX2 is part of AVX-512's detection.
            #[cfg(not(quant_avx512))]
            Level::Avx512 => unsafe { avx2(f) },
            // SAFETY: `level()` returns `Avx2` only when `is_x86_feature_detected!` found avx2.
            Level::Avx2 => unsafe { avx2(f) },
            Level::Sse2 | Level::Scalar => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = max;
        f()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(all(target_arch = "x86_64", quant_avx512))]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Packs the leading full blocks of 64 `codes` into vertical blocks of `8 * B` bytes of `out`
/// (`B` in 1, 2, 4, 8, 16) with an explicit kernel, when this level has one; returns the number
/// of blocks packed (0: the caller packs everything). Same bytes as
/// [`crate::bits::pack_vertical`].
#[inline]
pub(crate) fn pack_vertical_blocks<const B: usize>(codes: &[u32], out: &mut [u8]) -> usize {
    let n = (codes.len() / 64).min(out.len() / (8 * B));
    if n == 0 || !matches!(B, 1 | 2 | 4 | 8 | 16) {
        return 0;
    }
    #[cfg(all(target_arch = "x86_64", quant_avx512))]
    if level() == Level::Avx512 {
        // SAFETY: `level()` found avx512f; `codes` holds at least `64 n` values and `out` at
        // least `8 B n` bytes (the definition of `n`); `B` is a vertical width (checked).
        unsafe { avx512::pack_vertical_avx512::<B>(codes.as_ptr(), out.as_mut_ptr(), n) };
        return n;
    }
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: `level()` found avx2 (every level above `Avx2` includes it); `codes` holds
        // at least `64 n` values and `out` at least `8 B n` bytes (the definition of `n`); `B`
        // is a vertical width (checked).
        unsafe { avx2::pack_vertical_avx2::<B>(codes.as_ptr(), out.as_mut_ptr(), n) };
        return n;
    }
    0
}

/// Unpacks the leading full vertical blocks of `bytes` (`8 * B` bytes each, `B` in 1, 2, 4, 8,
/// 16) into 64 codes each of `out` with an explicit kernel, when this level has one; returns
/// the number of blocks unpacked (0: the caller unpacks everything). Same codes as
/// [`crate::bits::unpack_vertical`].
#[inline]
pub(crate) fn unpack_vertical_blocks<const B: usize>(bytes: &[u8], out: &mut [u32]) -> usize {
    let n = (bytes.len() / (8 * B)).min(out.len() / 64);
    if n == 0 || !matches!(B, 1 | 2 | 4 | 8 | 16) {
        return 0;
    }
    #[cfg(all(target_arch = "x86_64", quant_avx512))]
    if level() == Level::Avx512 {
        // SAFETY: `level()` found avx512f; `bytes` holds at least `8 B n` bytes and `out` at
        // least `64 n` values (the definition of `n`); `B` is a vertical width (checked).
        unsafe { avx512::unpack_vertical_avx512::<B>(bytes.as_ptr(), out.as_mut_ptr(), n) };
        return n;
    }
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: `level()` found avx2 (every level above `Avx2` includes it); `bytes` holds
        // at least `8 B n` bytes and `out` at least `64 n` values (the definition of `n`); `B`
        // is a vertical width (checked).
        unsafe { avx2::unpack_vertical_avx2::<B>(bytes.as_ptr(), out.as_mut_ptr(), n) };
        return n;
    }
    0
}

/// Decodes every full block of 64 lattice codes of width 8 (`codes`, vertical layout) with an
/// explicit kernel, when this level has one: per coordinate the operations of
/// `crate::lattice`'s scalar kernel in the same order, so the values are bit-identical.
/// Buckets have `bucket` values (a multiple of 64), bucket `b` the dither offset `offsets[b]`;
/// `tables` are the dither and weight tables of a bucket; `k` = (1/eps, eps). Adds each
/// bucket's wrapping sum of check terms to `sums[b]` and returns the number of blocks done
/// (0: the caller does everything). With a stream, the AVX-512 kernel writes the output with
/// streaming stores straight from registers; the AVX2 and SSE2 kernels ignore it (below).
#[inline]
pub(crate) fn lattice8_decode(
    codes: &[u8],
    ys: &[f32],
    out: &mut [f32],
    tables: (&[f32], &[u32]),
    buckets: (usize, &[f32], &mut [u32]),
    k: [f32; 2],
    stream: Option<&mut Stream>,
) -> usize {
    let (dither, weights) = tables;
    let (bucket, offsets, sums) = buckets;
    let bucket_blocks = bucket / 64;
    let mut n = (codes.len() / 64).min(ys.len() / 64).min(out.len() / 64);
    if bucket_blocks == 0 || bucket % 64 != 0 {
        return 0;
    }
    // Whole buckets' offsets and sums, and the tables, must cover the blocks.
    n = n.min(offsets.len().min(sums.len()) * bucket_blocks);
    if (dither.len().min(weights.len()) / 64) < n.min(bucket_blocks) || n == 0 {
        return 0;
    }
    #[cfg(all(target_arch = "x86_64", quant_avx512))]
    if level() == Level::Avx512 {
        let streamed = match stream {
            Some(st) if st.level == Level::Avx512 => {
                st.used = true;
                true
            }
            _ => false,
        };
        // SAFETY: `level()` found avx512f; `codes`, `ys` and `out` hold at least `64 n`
        // elements, the tables `64 min(n, bucket_blocks)`, `offsets` and `sums` at least
        // `ceil(n / bucket_blocks)` (all checked above); the `Stream` whose `used` was set
        // fences the streaming stores.
        unsafe {
            avx512::lattice8_decode_avx512(
                codes.as_ptr(),
                ys.as_ptr(),
                (dither.as_ptr(), weights.as_ptr()),
                out.as_mut_ptr(),
                n,
                (bucket_blocks, offsets.as_ptr(), sums.as_mut_ptr()),
                k,
                streamed,
            )
        };
        return n;
    }
    // The AVX2 and SSE2 kernels write with ordinary stores, whatever the size: on the Zen 4 VM
    // of issue 16's fourth session (AVX2, no AVX-512), 16M values decoded at 0.78-0.93x memcpy
    // (median of 7 runs 0.87x) with ordinary stores, 0.55-0.92x (median 0.81x) streaming from
    // registers (256-bit stores; 128-bit ones 0.73-0.81x) and 0.67-0.80x through the stage;
    // the SSE2 kernel is bound by its arithmetic (0.56-0.64x either way).
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Sse2 {
        let (codes, ys, out) = (codes.as_ptr(), ys.as_ptr(), out.as_mut_ptr());
        let tables = (dither.as_ptr(), weights.as_ptr());
        let buckets = (bucket_blocks, offsets.as_ptr(), sums.as_mut_ptr());
        // SAFETY: `codes`, `ys` and `out` hold at least `64 n` elements, the tables
        // `64 min(n, bucket_blocks)`, `offsets` and `sums` at least `ceil(n / bucket_blocks)`
        // (all checked above); `level()` found avx2 for `Avx2` (every level above it includes
        // it), and SSE2 is part of the x86-64 baseline.
        unsafe {
            if level() >= Level::Avx2 {
                avx2::lattice8_decode_avx2(codes, ys, tables, out, n, buckets, k);
            } else {
                x86::lattice8_decode_sse2(codes, ys, tables, out, n, buckets, k);
            }
        }
        return n;
    }
    let _ = (stream, k);
    0
}

/// Whether [`lattice8_decode`] has an explicit kernel at this thread's level.
pub(crate) fn has_lattice8_decode() -> bool {
    cfg!(target_arch = "x86_64") && level() >= Level::Sse2
}

/// Whether [`lattice8_encode`] has an explicit kernel at this thread's level.
pub(crate) fn has_lattice8_encode() -> bool {
    cfg!(target_arch = "x86_64") && level() >= Level::Sse2
}

/// Encodes every full block of 64 values of `xs` into lattice codes of width 8 (vertical
/// layout, 64 bytes a block, into `out`) with an explicit kernel, when this level has one: per
/// coordinate the operations of `crate::lattice`'s scalar encode kernel in the same order, so
/// the codes are bit-identical. Buckets as in [`lattice8_decode`]; adds each bucket's check
/// terms to `sums[b]`. Returns the number of blocks done (0: the caller does everything) and
/// the or of every code word before masking (the range check).
#[inline]
pub(crate) fn lattice8_encode(
    xs: &[f32],
    out: &mut [u8],
    tables: (&[f32], &[u32]),
    buckets: (usize, &[f32], &mut [u32]),
    k: (f32, u32),
    stream: Option<&mut Stream>,
) -> (usize, u32) {
    let (dither, weights) = tables;
    let (bucket, offsets, sums) = buckets;
    let bucket_blocks = bucket / 64;
    if bucket_blocks == 0 || bucket % 64 != 0 {
        return (0, 0);
    }
    let mut n = (xs.len() / 64).min(out.len() / 64);
    n = n.min(offsets.len().min(sums.len()) * bucket_blocks);
    if (dither.len().min(weights.len()) / 64) < n.min(bucket_blocks) || n == 0 {
        return (0, 0);
    }
    #[cfg(all(target_arch = "x86_64", quant_avx512))]
    if level() == Level::Avx512 {
        let streamed = match stream {
            Some(st) if st.level == Level::Avx512 => {
                st.used = true;
                true
            }
            _ => false,
        };
        // SAFETY: `level()` found avx512f; `xs` holds at least `64 n` values and `out` `64 n`
        // bytes, the tables `64 min(n, bucket_blocks)`, `offsets` and `sums` at least
        // `ceil(n / bucket_blocks)` (all checked above); the `Stream` whose `used` was set
        // fences the streaming stores.
        let range = unsafe {
            avx512::lattice8_encode_avx512(
                xs.as_ptr(),
                (dither.as_ptr(), weights.as_ptr()),
                out.as_mut_ptr(),
                n,
                (bucket_blocks, offsets.as_ptr(), sums.as_mut_ptr()),
                k.0,
                k.1,
                streamed,
            )
        };
        return (n, range);
    }
    // Ordinary stores at AVX2 and SSE2, as for `lattice8_decode`.
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Sse2 {
        let (xs, out) = (xs.as_ptr(), out.as_mut_ptr());
        let tables = (dither.as_ptr(), weights.as_ptr());
        let buckets = (bucket_blocks, offsets.as_ptr(), sums.as_mut_ptr());
        // SAFETY: `xs` holds at least `64 n` values and `out` `64 n` bytes, the tables
        // `64 min(n, bucket_blocks)`, `offsets` and `sums` at least `ceil(n / bucket_blocks)`
        // (all checked above); `level()` found avx2 for `Avx2` (every level above it includes
        // it), and SSE2 is part of the x86-64 baseline.
        let range = unsafe {
            if level() >= Level::Avx2 {
                avx2::lattice8_encode_avx2(xs, tables, out, n, buckets, k.0, k.1)
            } else {
                x86::lattice8_encode_sse2(xs, tables, out, n, buckets, k.0, k.1)
            }
        };
        return (n, range);
    }
    let _ = (stream, k);
    (0, 0)
}

/// Default streaming threshold when the last-level cache size is unknown.
const DEFAULT_STREAM_MIN: usize = 32 << 20;

/// Process-wide threshold (0 until first read).
static STREAM_MIN_GLOBAL: AtomicUsize = AtomicUsize::new(0);

/// The last-level cache size from Linux sysfs, if readable.
fn llc_bytes() -> Option<usize> {
    if cfg!(miri) {
        return None; // no file system under Miri's isolation
    }
    let mut best = None;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Ok(size) = std::fs::read_to_string(format!("{dir}/size")) else {
            break;
        };
        let size = size.trim();
        let (num, mul) = match size.strip_suffix('K') {
            Some(n) => (n, 1usize << 10),
            None => match size.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (size, 1),
            },
        };
        if let Ok(n) = num.parse::<usize>() {
            best = Some(best.unwrap_or(0).max(n.saturating_mul(mul)));
        }
    }
    best
}

/// The footprint (bytes read plus bytes written by one codec call) from which outputs are
/// written with streaming stores: `QUANT_STREAM_MIN` if set (`QUANT_STREAM=0`: never), else
/// the last-level cache size (Linux sysfs), else 32 MiB. Below it, the output of a call is
/// likely to be still in the cache when the caller reads it, and streaming would evict it.
pub(crate) fn stream_threshold() -> usize {
    if let Some(t) = STREAM_MIN.with(Cell::get) {
        return t;
    }
    let mut t = STREAM_MIN_GLOBAL.load(Ordering::Relaxed);
    if t == 0 {
        t = if std::env::var("QUANT_STREAM").as_deref() == Ok("0") {
            usize::MAX
        } else if let Some(v) = std::env::var("QUANT_STREAM_MIN")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            v.max(1)
        } else {
            llc_bytes().unwrap_or(DEFAULT_STREAM_MIN).max(1)
        };
        STREAM_MIN_GLOBAL.store(t, Ordering::Relaxed);
    }
    t
}

/// Streaming (non-temporal) copies into a large output. Dropping it issues the store fence
/// that orders the streamed data before anything this thread does next (non-temporal stores
/// are weakly ordered, even on x86).
#[derive(Debug)]
pub(crate) struct Stream {
    level: Level,
    used: bool,
    /// Cache-resident stages the values and codes are produced into.
    stage_f32: [f32; 2 * CHUNK],
    stage_u32: [u32; 2 * CHUNK],
    stage_u8: [u8; 6 * CHUNK],
}

/// Values (or codes) per stage: `CHUNK` f32 are 4 KB, which stays in L1 between the kernel
/// that writes it and the streaming copy that reads it. A multiple of 64 (the codecs' block).
pub(crate) const CHUNK: usize = 1024;

impl Stream {
    /// A stream for a call that reads and writes `footprint` bytes in total, if the level has
    /// streaming stores and the footprint reaches [`stream_threshold`]; else `None` (ordinary
    /// stores).
    pub(crate) fn for_footprint(footprint: usize) -> Option<Stream> {
        let level = level();
        (level >= Level::Sse2 && footprint >= stream_threshold()).then(|| Stream {
            level,
            used: false,
            stage_f32: [0.0; 2 * CHUNK],
            stage_u32: [0; 2 * CHUNK],
            stage_u8: [0; 6 * CHUNK],
        })
    }

    /// Unpacks the leading full vertical blocks of `bytes` (`8 * B` bytes each) into `out` like
    /// [`unpack_vertical_blocks`], streaming straight from registers (no stage) when this level
    /// has such a kernel; returns the number of blocks done (0: the caller does everything).
    #[inline]
    pub(crate) fn unpack_vertical_stream<const B: usize>(
        &mut self,
        bytes: &[u8],
        out: &mut [u32],
    ) -> usize {
        let n = (bytes.len() / (8 * B)).min(out.len() / 64);
        if n == 0 || !matches!(B, 1 | 2 | 4 | 8 | 16) {
            return 0;
        }
        #[cfg(all(target_arch = "x86_64", quant_avx512))]
        if self.level == Level::Avx512 {
            // SAFETY: the stream has level `Avx512` only when `level()` found avx512f; `bytes`
            // holds at least `8 B n` bytes and `out` at least `64 n` values; `B` is a vertical
            // width (checked). `used` makes the drop fence the streaming stores.
            unsafe { avx512::unpack_vertical_nt_avx512::<B>(bytes.as_ptr(), out.as_mut_ptr(), n) };
            self.used = true;
            return n;
        }
        0
    }

    /// Lets `f` fill a stage of `dst.len()` values, then streams it to `dst`; with more than
    /// [`CHUNK`] values `f` writes `dst` directly.
    #[inline(always)]
    pub(crate) fn produce_f32<R>(&mut self, dst: &mut [f32], f: impl FnOnce(&mut [f32]) -> R) -> R {
        let n = dst.len();
        if n > CHUNK {
            return f(dst);
        }
        let o = skew(dst.as_ptr().addr(), self.stage_f32.as_ptr().addr()) / 4;
        let stage = &mut self.stage_f32[o..o + n];
        let r = f(stage);
        self.used = true;
        copy(
            self.level,
            dst.as_mut_ptr().cast(),
            stage.as_ptr().cast(),
            4 * n,
        );
        r
    }

    /// [`Stream::produce_f32`] for `u32` codes.
    #[inline(always)]
    pub(crate) fn produce_u32<R>(&mut self, dst: &mut [u32], f: impl FnOnce(&mut [u32]) -> R) -> R {
        let n = dst.len();
        if n > CHUNK {
            return f(dst);
        }
        let o = skew(dst.as_ptr().addr(), self.stage_u32.as_ptr().addr()) / 4;
        let stage = &mut self.stage_u32[o..o + n];
        let r = f(stage);
        self.used = true;
        copy(
            self.level,
            dst.as_mut_ptr().cast(),
            stage.as_ptr().cast(),
            4 * n,
        );
        r
    }

    /// [`Stream::produce_f32`] for bytes (up to `2 * CHUNK`).
    #[inline(always)]
    pub(crate) fn produce_u8<R>(&mut self, dst: &mut [u8], f: impl FnOnce(&mut [u8]) -> R) -> R {
        let n = dst.len();
        if n > 2 * CHUNK {
            return f(dst);
        }
        let o = skew(dst.as_ptr().addr(), self.stage_u8.as_ptr().addr());
        let stage = &mut self.stage_u8[o..o + n];
        let r = f(stage);
        self.used = true;
        copy(self.level, dst.as_mut_ptr(), stage.as_ptr(), n);
        r
    }
}

/// How far apart (modulo 4 KB) a stage and its destination are placed: if they share their
/// address bits below 4 KB, loads from the stage are falsely matched with the pending stores to
/// the destination (4K aliasing), and streaming ran up to 2x slower in some runs than others.
const STAGE_SKEW: usize = 2048;

/// Offset (bytes, a multiple of 4, below 4096) into a stage at address `stage` so that the
/// stage and the destination `dst` sit [`STAGE_SKEW`] bytes apart modulo 4 KB.
#[inline(always)]
fn skew(dst: usize, stage: usize) -> usize {
    (dst.wrapping_add(STAGE_SKEW).wrapping_sub(stage) & 4095) & !3
}

/// Copies `n` bytes from `src` to `dst` at `level`: the 64-byte lines of `dst` the copy covers
/// entirely with streaming stores, the rest with ordinary ones. The callers ([`Stream`]'s
/// methods) pass a slice and a stage of the same length `n` bytes, one of them borrowed
/// mutably, so they cannot overlap.
#[inline]
fn copy(level: Level, dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: `dst` and `src` are valid for `n` bytes and do not overlap (see above); a
        // `Stream` has level `Avx512` only when `level()` found avx512f on this CPU.
        #[cfg(quant_avx512)]
        Level::Avx512 => unsafe { avx512::stream_copy_avx512(dst, src, n) },
        // SAFETY: as above; without AVX-512 support in the compiler the level is never
        // `Avx512`, and AVX2 is part of its detection anyway.
        #[cfg(not(quant_avx512))]
        Level::Avx512 => unsafe { x86::stream_copy_avx2(dst, src, n) },
        // SAFETY: as above; level `Avx2` only when `level()` found avx2.
        Level::Avx2 => unsafe { x86::stream_copy_avx2(dst, src, n) },
        // SAFETY: as above; SSE2 is part of the x86-64 baseline.
        Level::Sse2 => unsafe { x86::stream_copy_sse2(dst, src, n) },
        // SAFETY: as above; `copy_nonoverlapping` needs nothing more.
        Level::Scalar => unsafe { std::ptr::copy_nonoverlapping(src, dst, n) },
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        // SAFETY: `dst` and `src` are valid for `n` bytes and do not overlap (see above).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.used && self.level >= Level::Sse2 {
            x86::sfence();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{with_cap, with_stream_min, Level, Stream, CHUNK};
    use crate::CodecSpec;

    /// xorshift64 test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / 16_777_216.0
        }
    }

    /// Every level other than the reference, each with streaming forced on and off.
    const MODES: [(Level, usize); 6] = [
        (Level::Sse2, 0),
        (Level::Sse2, usize::MAX),
        (Level::Avx2, 0),
        (Level::Avx2, usize::MAX),
        (Level::Avx512, 0),
        (Level::Avx512, usize::MAX),
    ];

    /// Runs `f` at the scalar reference and in every mode, asserting equal results.
    fn agree<R: PartialEq + std::fmt::Debug>(what: &str, f: impl Fn() -> R) {
        if cfg!(miri) {
            // Miri has the scalar level only: run it once, for undefined behaviour.
            f();
            return;
        }
        let base = with_cap(Level::Scalar, || with_stream_min(usize::MAX, &f));
        for (level, min) in MODES {
            let r = with_cap(level, || with_stream_min(min, &f));
            assert!(
                base == r,
                "{what}: {level:?} (stream from {min} bytes) differs from the scalar path"
            );
        }
    }

    /// Streaming copies move bits exactly (NaN payloads, infinities, subnormals: random bit
    /// patterns), at every length 0..=1024 and beyond a stage, into every alignment, and
    /// write nothing outside the destination.
    #[test]
    fn streaming_copies_are_exact() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let src: Vec<u32> = (0..3 * CHUNK).map(|_| rng.next() as u32).collect();
        let srcf: Vec<f32> = src.iter().map(|&b| f32::from_bits(b)).collect();
        let srcb: Vec<u8> = src.iter().map(|&b| b as u8).collect();
        let lens: Vec<usize> = (0..=1024).chain([1500, 2047, 2048, 2049, 3000]).collect();
        for (level, _) in MODES {
            with_cap(level, || {
                with_stream_min(0, || {
                    // Under Miri only the scalar level exists, which has no streaming.
                    let Some(mut st) = Stream::for_footprint(1) else {
                        return;
                    };
                    for &n in &lens {
                        for off in 0..17 {
                            let mut dst = vec![0xDEAD_BEEFu32; n + 40];
                            st.produce_u32(&mut dst[off..off + n], |s| {
                                s.copy_from_slice(&src[..n])
                            });
                            assert_eq!(&dst[off..off + n], &src[..n], "{level:?} u32 {n}+{off}");
                            assert!(dst[..off].iter().all(|&v| v == 0xDEAD_BEEF));
                            assert!(dst[off + n..].iter().all(|&v| v == 0xDEAD_BEEF));
                            let mut dstf = vec![f32::from_bits(0x7FC0_1234); n + 40];
                            st.produce_f32(&mut dstf[off..off + n], |s| {
                                s.copy_from_slice(&srcf[..n])
                            });
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(&dstf[off..off + n]),
                                &src[..n],
                                "{level:?} f32 {n}+{off}"
                            );
                            assert!(bits(&dstf[..off]).iter().all(|&v| v == 0x7FC0_1234));
                            assert!(bits(&dstf[off + n..]).iter().all(|&v| v == 0x7FC0_1234));
                        }
                        for off in 0..65 {
                            let mut dst = vec![0xA5u8; n + 130];
                            st.produce_u8(&mut dst[off..off + n], |s| {
                                s.copy_from_slice(&srcb[..n])
                            });
                            assert_eq!(&dst[off..off + n], &srcb[..n], "{level:?} u8 {n}+{off}");
                            assert!(dst[..off].iter().all(|&v| v == 0xA5));
                            assert!(dst[off + n..].iter().all(|&v| v == 0xA5));
                        }
                    }
                })
            });
        }
    }

    /// The explicit packing kernels (plain and streaming) give the scalar path's bytes and
    /// codes, for every width, every length 0..=1024 and larger ones, unaligned starts of the
    /// codes, the bytes and the output, and codes with garbage above their width.
    #[test]
    fn packing_kernels_match_scalar() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let big = if cfg!(miri) { 200 } else { 64 * CHUNK + 77 };
        let codes: Vec<u32> = (0..big + 8).map(|_| rng.next() as u32).collect();
        let lens: Vec<usize> = if cfg!(miri) {
            // Miri runs the scalar path only, slowly: a few lengths around a block.
            vec![0, 1, 63, 64, 65, 129, big]
        } else {
            (0..=1024).chain([4096, 4160, big]).collect()
        };
        for bits in 1..=16u32 {
            for &n in &lens {
                for off in [0usize, 1, 3] {
                    let c = &codes[off..off + n];
                    agree(&format!("pack {bits} bits, {n}+{off}"), || {
                        let mut b = Vec::new();
                        crate::pack_bits(c, bits, &mut b).unwrap();
                        // Unpack from an unaligned copy into an unaligned output.
                        let mut shifted = vec![0u8; off];
                        shifted.extend_from_slice(&b);
                        let mut back = vec![7u32; n + 2 * off + 1];
                        crate::unpack_bits(&shifted[off..], bits, &mut back[off..off + n]).unwrap();
                        (b, back)
                    });
                    if n > 1024 && off > 0 {
                        break;
                    }
                }
            }
        }
    }

    /// The lattice:8 encoder's and decoder's explicit kernels (with the call's streaming
    /// forced on and off) give the scalar path's payload bytes or error, decoded bits and
    /// bucket checks: every length 0..=1024 and larger ones, one and many buckets (64 and 1024
    /// values), the input and the output at every 4-byte offset modulo a cache line,
    /// subnormal, NaN and infinite values and references, values that force the encoder's
    /// retry, and references far from the encoded vector (failed buckets must agree too).
    #[test]
    fn lattice8_kernels_match_scalar() {
        use crate::lattice::LatticeCodec;
        use crate::Codec;
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let lens: Vec<usize> = if cfg!(miri) {
            vec![0, 1, 64, 65, 200]
        } else {
            (0..=1024)
                .chain([4096, 5000, 70_001, 64 * CHUNK + 77])
                .collect()
        };
        for &d in &lens {
            let kinds = vectors(&mut rng, d);
            // Far references: the decode fails in some buckets.
            let far: Vec<f32> = kinds[0].1.iter().map(|v| v * 40.0 + 0.3).collect();
            let cases = kinds
                .iter()
                .map(|(x, y)| (x.clone(), y.clone()))
                .chain([(kinds[0].0.clone(), far)]);
            for (kind, (x, y)) in cases.enumerate() {
                for log2 in [6, 10] {
                    let mut c = LatticeCodec::new(8, 11)
                        .unwrap()
                        .with_bucket_log2(log2)
                        .unwrap();
                    c.observe_distance(0.002);
                    let offs = if d > 1024 || d % 97 == 0 {
                        0..17
                    } else {
                        d % 17..d % 17 + 1
                    };
                    for off in offs {
                        let what = format!("lattice:8 d={d} kind {kind} bucket 2^{log2} +{off}");
                        // The input, too, at every 4-byte offset.
                        let mut xb = vec![0f32; off];
                        xb.extend_from_slice(&x);
                        agree(&what, || {
                            // A fresh copy of the codec: the same nonce at every level.
                            let mut c = c.clone();
                            let mut bytes = Vec::new();
                            let enc = c.encode(&xb[off..], &mut bytes);
                            let mut out = vec![f32::from_bits(0x7FC0_0001); d + off + 3];
                            let rep = c.decode(&bytes, &y, &mut out[off..off + d]);
                            (
                                bytes,
                                format!("{enc:?} {rep:?}"),
                                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            )
                        });
                    }
                }
            }
        }
    }

    /// Test vectors of `d` values: ordinary values, values with subnormals, NaN and infinities
    /// in the input or in the reference, and values too large for the codec's step.
    fn vectors(rng: &mut Rng, d: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let x: Vec<f32> = (0..d).map(|_| (rng.unit() - 0.5) * 0.2).collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % 5) as f32 * 1e-4)
            .collect();
        let sub: Vec<f32> = (0..d)
            .map(|i| match i % 4 {
                0 => f32::from_bits(1 + (rng.next() as u32 & 0x7F_FFFF)),
                1 => -f32::from_bits(rng.next() as u32 & 0x7F_FFFF),
                2 => 0.0,
                _ => (rng.unit() - 0.5) * 1e-30,
            })
            .collect();
        let mut special = x.clone();
        let mut yspecial = y.clone();
        if d > 0 {
            let specials = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::from_bits(0x7FA0_0001),
            ];
            special[rng.next() as usize % d] = specials[rng.next() as usize % 4];
            yspecial[rng.next() as usize % d] = specials[rng.next() as usize % 4];
        }
        let large: Vec<f32> = x.iter().map(|v| v * 1e4).collect();
        vec![
            (x, y.clone()),
            (sub.clone(), sub),
            (special, y),
            (x_or(&yspecial), yspecial),
            // Values far beyond the step the codecs were told to use: the lattice encoder
            // retries with a larger step.
            (large.clone(), large),
        ]
    }

    fn x_or(y: &[f32]) -> Vec<f32> {
        y.iter()
            .map(|v| if v.is_finite() { v - 1e-4 } else { 0.0 })
            .collect()
    }

    const SPECS: [&str; 18] = [
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

    /// Encodes and decodes `x` (at `off` in its buffer) twice with a fresh codec: payloads,
    /// reports or errors, and the decoded bits.
    fn round_trip(
        spec: &str,
        x: &[f32],
        y: &[f32],
        off: usize,
    ) -> Vec<(Vec<u8>, String, Vec<u32>)> {
        let d = x.len();
        let mut c = spec.parse::<CodecSpec>().unwrap().build(5).unwrap();
        c.observe_distance(0.001);
        let mut bytes = Vec::new();
        let mut out = vec![0f32; d + off];
        let mut all = Vec::new();
        for _ in 0..2 {
            let e = c.encode(x, &mut bytes);
            let rep = c.decode(&bytes, y, &mut out[off..]);
            all.push((
                bytes.clone(),
                format!("{e:?} {rep:?}"),
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            ));
        }
        all
    }

    /// Decoders given corrupted payloads (random byte mutations, truncations) return the same
    /// errors or the same values at every level, streaming or not.
    #[test]
    fn levels_agree_on_corrupted_payloads() {
        let mut rng = Rng(0xC0FF_EE00_1234_5678);
        let muts = if cfg!(miri) { 3 } else { 60 };
        let sizes: &[usize] = if cfg!(miri) {
            &[1, 65]
        } else {
            &[1, 64, 65, 1100, 3000]
        };
        for &d in sizes {
            let (x, y) = vectors(&mut rng, d).swap_remove(0);
            for spec in SPECS {
                let mut c = spec.parse::<CodecSpec>().unwrap().build(3).unwrap();
                c.observe_distance(0.001);
                let mut good = Vec::new();
                c.encode(&x, &mut good).unwrap();
                for m in 0..muts {
                    let mut bad = good.clone();
                    if m % 10 == 9 {
                        bad.truncate(rng.next() as usize % (bad.len() + 1));
                    } else {
                        for _ in 0..1 + m % 3 {
                            let i = rng.next() as usize % bad.len();
                            bad[i] ^= 1 << (rng.next() % 8);
                        }
                    }
                    agree(&format!("{spec} d={d} mutation {m}"), || {
                        let mut out = vec![0f32; d];
                        let r = c.decode(&bad, &y, &mut out);
                        (
                            format!("{r:?}"),
                            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        )
                    });
                }
            }
        }
    }

    /// Every SIMD level, streaming or not, must produce the same bytes and the same decoded
    /// bits as the scalar path (payloads cross nodes with different CPUs), for every codec at
    /// every length 0..=1024 (and larger ones), from unaligned starts, with subnormal, NaN and
    /// infinite inputs and references.
    #[test]
    fn levels_agree_bit_for_bit() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let lens: Vec<usize> = if cfg!(miri) {
            // Miri runs the scalar path only, slowly: a few sizes around a block.
            vec![0, 1, 65, 130]
        } else {
            (0..=1024).chain([5000, 70_001]).collect()
        };
        for &d in &lens {
            let off = d % 3;
            for (i, (x, y)) in vectors(&mut rng, d).into_iter().enumerate() {
                // Every kind of vector at large and selected sizes; the ordinary one at all.
                if i > 0 && d % 7 != 0 && d < 1024 {
                    continue;
                }
                let mut xb = vec![0f32; off];
                xb.extend_from_slice(&x);
                let mut yb = vec![0f32; off];
                yb.extend_from_slice(&y);
                for spec in SPECS {
                    agree(&format!("{spec} d={d} kind {i}"), || {
                        round_trip(spec, &xb[off..], &yb[off..], off)
                    });
                }
            }
        }
    }
}
