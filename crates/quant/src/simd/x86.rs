//! x86-64 kernels with `std::arch` intrinsics: streaming (non-temporal) copies with SSE2 and
//! AVX2 stores, and the store fence that ends a stream (the AVX-512 kernels are in
//! `super::avx512`).
//!
//! Each copy writes the bytes before the first 64-byte boundary of `dst` and after the last one
//! with ordinary stores (`copy_nonoverlapping`), and every whole line in between with
//! non-temporal stores from unaligned loads of `src` (a small, cache-resident stage in every
//! caller). A non-temporal store of a whole line skips the read-for-ownership an ordinary store
//! pays; a partial line would be flushed from the write-combining buffer as a partial write, so
//! partial lines are never streamed. Moves of 128/256/512-bit integer vectors copy bits exactly
//! (NaN payloads, signalling NaNs and subnormals included).

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;
use std::ptr::copy_nonoverlapping;

/// Cache line size.
pub(super) const LINE: usize = 64;

/// Bytes from `dst` to its next 64-byte boundary.
#[inline(always)]
fn head_len(dst: *mut u8) -> usize {
    (LINE - (dst.addr() & (LINE - 1))) % LINE
}

/// Splits a copy of `n` bytes to `dst` into (head, end of the streamed lines).
#[inline(always)]
pub(super) fn split(dst: *mut u8, n: usize) -> (usize, usize) {
    let head = head_len(dst).min(n);
    let body = (n - head) / LINE * LINE;
    (head, head + body)
}

/// Streaming copy of `n` bytes with 256-bit stores.
///
/// # Safety
/// The CPU supports AVX2 (AVX is enough); `src` is valid for reads and `dst` for writes of `n`
/// bytes, and the two ranges do not overlap.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn stream_copy_avx2(dst: *mut u8, src: *const u8, n: usize) {
    let (head, end) = split(dst, n);
    // SAFETY: `head <= n`, both ranges valid for `n` bytes and disjoint (caller).
    unsafe { copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i < end {
        // SAFETY: `i + 64 <= end <= n`; `dst + i` and `dst + i + 32` are 32-byte aligned
        // (`dst + i` is 64-byte aligned, as above), as `_mm256_stream_si256` requires; the
        // loads are unaligned; AVX is available (caller).
        unsafe {
            let a = _mm256_loadu_si256(src.add(i).cast::<__m256i>());
            let b = _mm256_loadu_si256(src.add(i + 32).cast::<__m256i>());
            _mm256_stream_si256(dst.add(i).cast::<__m256i>(), a);
            _mm256_stream_si256(dst.add(i + 32).cast::<__m256i>(), b);
        }
        i += LINE;
    }
    // SAFETY: `end <= n`: the last `n - end` bytes of both ranges.
    unsafe { copy_nonoverlapping(src.add(end), dst.add(end), n - end) };
}

/// Streaming copy of `n` bytes with 128-bit stores (SSE2, the x86-64 baseline).
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `n` bytes, and the two ranges do not
/// overlap.
#[target_feature(enable = "sse2")]
pub(super) unsafe fn stream_copy_sse2(dst: *mut u8, src: *const u8, n: usize) {
    let (head, end) = split(dst, n);
    // SAFETY: `head <= n`, both ranges valid for `n` bytes and disjoint (caller).
    unsafe { copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i < end {
        // SAFETY: `i + 64 <= end <= n`; `dst + i + 16k` is 16-byte aligned (`dst + i` is
        // 64-byte aligned, as above), as `_mm_stream_si128` requires; the loads are unaligned;
        // SSE2 is part of the x86-64 baseline.
        unsafe {
            let a = _mm_loadu_si128(src.add(i).cast::<__m128i>());
            let b = _mm_loadu_si128(src.add(i + 16).cast::<__m128i>());
            let c = _mm_loadu_si128(src.add(i + 32).cast::<__m128i>());
            let d = _mm_loadu_si128(src.add(i + 48).cast::<__m128i>());
            _mm_stream_si128(dst.add(i).cast::<__m128i>(), a);
            _mm_stream_si128(dst.add(i + 16).cast::<__m128i>(), b);
            _mm_stream_si128(dst.add(i + 32).cast::<__m128i>(), c);
            _mm_stream_si128(dst.add(i + 48).cast::<__m128i>(), d);
        }
        i += LINE;
    }
    // SAFETY: `end <= n`: the last `n - end` bytes of both ranges.
    unsafe { copy_nonoverlapping(src.add(end), dst.add(end), n - end) };
}

/// Orders every earlier streaming store before every later store (`sfence`).
#[inline]
pub(super) fn sfence() {
    // SAFETY: `sfence` (SSE) is part of the x86-64 baseline and has no memory operands.
    unsafe { _mm_sfence() }
}
