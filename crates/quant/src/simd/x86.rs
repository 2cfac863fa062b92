//! x86-64 kernels with `std::arch` intrinsics: streaming (non-temporal) copies with SSE2 and
//! AVX2 stores, the store fence that ends a stream, and the SSE2 lattice decoder of width 8
//! (the AVX2 kernels are in `super::avx2`, the AVX-512 ones in `super::avx512`).
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

/// Wrapping sum of the four 32-bit lanes of `v`.
#[inline(always)]
fn sum_lanes(v: __m128i) -> u32 {
    // SAFETY: SSE2 register operations only (the x86-64 baseline).
    unsafe {
        let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s) as u32
    }
}

/// The SSE2 twin of `super::avx2::lattice8_decode_avx2`, four lanes at a time: decodes
/// `nblocks` full blocks of 64 lattice codes of width 8 (vertical layout) of consecutive
/// buckets of `bucket_blocks` blocks, per coordinate with the scalar kernel's operations in its
/// order, so the values are bit-identical; adds each bucket's wrapping sum of check terms to
/// `sums[b]`. Ordinary stores.
///
/// # Safety
/// `codes` is valid for reading `64 * nblocks` bytes, `ys` for `64 * nblocks` values, `dither`
/// and `weights` for `64 * min(nblocks, bucket_blocks)`, `offsets` and `sums` for
/// `ceil(nblocks / bucket_blocks)` (`bucket_blocks > 0`), and `out` for writing `64 * nblocks`
/// values.
#[target_feature(enable = "sse2")]
pub(super) unsafe fn lattice8_decode_sse2(
    codes: *const u8,
    ys: *const f32,
    tables: (*const f32, *const u32),
    out: *mut f32,
    nblocks: usize,
    buckets: (usize, *const f32, *mut u32),
    k: [f32; 2],
) {
    let (dither, weights) = tables;
    let (bucket_blocks, offsets, sums) = buckets;
    let [inv_eps, eps] = k;
    let inv = _mm_set1_ps(inv_eps);
    let epsv = _mm_set1_ps(eps);
    let q = 256.0f32;
    let invq = _mm_set1_ps(1.0 / q);
    let qv = _mm_set1_ps(q);
    let magic = _mm_set1_ps(crate::stats::MAGIC);
    let byte = _mm_set1_epi32(0xff);
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let stop = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let offv = _mm_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm_setzero_si128();
        for g in blk..stop {
            let i0 = 64 * g;
            let t0 = 64 * (g - blk);
            // SAFETY: `g < nblocks`: the block's 64 code bytes and its 64 values of `ys` and
            // `out` are in bounds, and `g - blk < min(nblocks, bucket_blocks)` for the tables
            // (caller); every access is unaligned.
            unsafe {
                let cw: [__m128i; 4] =
                    std::array::from_fn(|r| _mm_loadu_si128(codes.add(i0 + 16 * r).cast()));
                // Codes `16j + 4r ..`: byte `j` of words `4r ..` (vertical layout).
                macro_rules! step {
                    ($j:literal, $r:literal) => {{
                        let d = 16 * $j + 4 * $r;
                        let c = match $j {
                            0 => _mm_and_si128(cw[$r], byte),
                            1 => _mm_and_si128(_mm_srli_epi32::<8>(cw[$r]), byte),
                            2 => _mm_and_si128(_mm_srli_epi32::<16>(cw[$r]), byte),
                            _ => _mm_srli_epi32::<24>(cw[$r]),
                        };
                        let v = _mm_add_ps(_mm_loadu_ps(dither.add(t0 + d)), offv);
                        let cf = _mm_cvtepi32_ps(c);
                        let zy = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(ys.add(i0 + d)), inv), v);
                        let rm = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(zy, cf), invq), magic);
                        let h = _mm_castps_si128(rm);
                        let odd = _mm_srai_epi32::<31>(_mm_slli_epi32::<31>(h));
                        let wt = _mm_loadu_si128(weights.add(t0 + d).cast());
                        sum = _mm_add_epi32(sum, _mm_add_epi32(h, _mm_and_si128(wt, odd)));
                        let kk = _mm_add_ps(cf, _mm_mul_ps(_mm_sub_ps(rm, magic), qv));
                        _mm_storeu_ps(out.add(i0 + d), _mm_mul_ps(_mm_sub_ps(kk, v), epsv));
                    }};
                }
                step!(0, 0);
                step!(0, 1);
                step!(0, 2);
                step!(0, 3);
                step!(1, 0);
                step!(1, 1);
                step!(1, 2);
                step!(1, 3);
                step!(2, 0);
                step!(2, 1);
                step!(2, 2);
                step!(2, 3);
                step!(3, 0);
                step!(3, 1);
                step!(3, 2);
                step!(3, 3);
            }
        }
        // SAFETY: as for `offsets`.
        unsafe {
            let s = sums.add(b);
            *s = (*s).wrapping_add(sum_lanes(sum));
        }
        blk = stop;
        b += 1;
    }
}

/// The SSE2 twin of `super::avx2::lattice8_encode_avx2`, four lanes at a time: encodes
/// `nblocks` full blocks of 64 values into lattice codes of width 8 (vertical layout), per
/// coordinate with the scalar encode kernel's operations in its order, so the codes are
/// bit-identical; adds each bucket's check terms to `sums[b]` and returns the or of every code
/// word before masking (the range check). Ordinary stores.
///
/// # Safety
/// `xs` is valid for reading `64 * nblocks` values, `dither` and `weights` for
/// `64 * min(nblocks, bucket_blocks)`, `offsets` and `sums` for `ceil(nblocks / bucket_blocks)`
/// (`bucket_blocks > 0`), and `dst` for writing `64 * nblocks` bytes.
#[target_feature(enable = "sse2")]
pub(super) unsafe fn lattice8_encode_sse2(
    xs: *const f32,
    tables: (*const f32, *const u32),
    dst: *mut u8,
    nblocks: usize,
    buckets: (usize, *const f32, *mut u32),
    inv_eps: f32,
    bias: u32,
) -> u32 {
    let (dither, weights) = tables;
    let (bucket_blocks, offsets, sums) = buckets;
    let inv = _mm_set1_ps(inv_eps);
    let magic = _mm_set1_ps(crate::stats::MAGIC);
    let biasv = _mm_set1_epi32(bias as i32);
    let byte = _mm_set1_epi32(0xff);
    let mut range = _mm_setzero_si128();
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let stop = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let off = _mm_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm_setzero_si128();
        for g in blk..stop {
            let i0 = 64 * g;
            let t0 = 64 * (g - blk);
            // SAFETY: `g < nblocks`: the block's 64 values of `xs` and 64 bytes of `dst` are in
            // bounds, and `g - blk < min(nblocks, bucket_blocks)` for the tables (caller);
            // every access is unaligned.
            unsafe {
                // Codes `16j + 4r ..` go to byte `j` of words `4r ..`.
                let mut words = [_mm_setzero_si128(); 4];
                macro_rules! step {
                    ($j:literal, $r:literal) => {{
                        let d = 16 * $j + 4 * $r;
                        let v = _mm_add_ps(_mm_loadu_ps(dither.add(t0 + d)), off);
                        let z = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(xs.add(i0 + d)), inv), v);
                        let t = _mm_add_epi32(_mm_castps_si128(_mm_add_ps(z, magic)), biasv);
                        range = _mm_or_si128(range, t);
                        let h = _mm_srli_epi32::<8>(t);
                        let odd = _mm_srai_epi32::<31>(_mm_slli_epi32::<31>(h));
                        let wt = _mm_loadu_si128(weights.add(t0 + d).cast());
                        sum = _mm_add_epi32(sum, _mm_add_epi32(h, _mm_and_si128(wt, odd)));
                        let c = _mm_slli_epi32::<{ 8 * $j }>(_mm_and_si128(t, byte));
                        words[$r] = _mm_or_si128(words[$r], c);
                    }};
                }
                step!(0, 0);
                step!(0, 1);
                step!(0, 2);
                step!(0, 3);
                step!(1, 0);
                step!(1, 1);
                step!(1, 2);
                step!(1, 3);
                step!(2, 0);
                step!(2, 1);
                step!(2, 2);
                step!(2, 3);
                step!(3, 0);
                step!(3, 1);
                step!(3, 2);
                step!(3, 3);
                for (r, w) in words.iter().enumerate() {
                    _mm_storeu_si128(dst.add(i0 + 16 * r).cast(), *w);
                }
            }
        }
        // SAFETY: as for `offsets`.
        unsafe {
            let s = sums.add(b);
            *s = (*s).wrapping_add(sum_lanes(sum));
        }
        blk = stop;
        b += 1;
    }
    let r = _mm_or_si128(range, _mm_shuffle_epi32::<0b01_00_11_10>(range));
    let r = _mm_or_si128(r, _mm_shuffle_epi32::<0b10_11_00_01>(r));
    _mm_cvtsi128_si32(r) as u32
}
