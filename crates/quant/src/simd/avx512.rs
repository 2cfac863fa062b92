//! AVX-512 kernels (compiled with Rust 1.89 or later, `cfg(quant_avx512)`, set by `build.rs`:
//! AVX-512 intrinsics and target features are stable from 1.89, the workspace's MSRV is 1.85):
//! the 512-bit streaming copy, a streaming writer for 16-lane vectors at any alignment, packing
//! and unpacking of full vertical blocks (see `crate::bits`) at widths 1, 2, 4, 8 and 16, and
//! the lattice decoder of width 8.
#![allow(clippy::incompatible_msrv)] // compiled only by compilers that have these intrinsics

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;
use std::ptr::copy_nonoverlapping;

use super::x86::{split, LINE};

/// Streaming copy of `n` bytes with 512-bit stores.
///
/// # Safety
/// The CPU supports AVX-512F; `src` is valid for reads and `dst` for writes of `n` bytes, and
/// the two ranges do not overlap.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stream_copy_avx512(dst: *mut u8, src: *const u8, n: usize) {
    let (head, end) = split(dst, n);
    // SAFETY: `head <= n`, both ranges valid for `n` bytes and disjoint (caller).
    unsafe { copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i < end {
        // SAFETY: `i + 64 <= end <= n`, so both 64-byte accesses are in bounds; `dst + i` is
        // 64-byte aligned (`head` reaches the boundary and `i - head` is a multiple of 64), as
        // `_mm512_stream_si512` requires; the load is unaligned (`loadu`); AVX-512F is
        // available (caller).
        unsafe {
            let v = _mm512_loadu_si512(src.add(i).cast::<__m512i>());
            _mm512_stream_si512(dst.add(i).cast::<__m512i>(), v);
        }
        i += LINE;
    }
    // SAFETY: `end <= n`: the last `n - end` bytes of both ranges.
    unsafe { copy_nonoverlapping(src.add(end), dst.add(end), n - end) };
}

/// Writes a run of 16-lane vectors (elements `0, 16, 32, ...` of a `u32`/`f32` output) with
/// streaming stores of whole aligned lines, whatever the output's alignment: each aligned line
/// is assembled from two consecutive vectors by one permute, and the partial lines at both
/// ends are written with ordinary masked stores.
pub(super) struct NtWriter {
    dst: *mut u32,
    /// Elements before the first 64-byte boundary of `dst` (0..16).
    head: usize,
    /// Permute indices `head + t` into (previous, current).
    idx: __m512i,
    prev: __m512i,
    /// Elements pushed.
    pos: usize,
}

impl NtWriter {
    /// A writer to `dst`, a 4-byte aligned pointer valid for writing as many elements as
    /// will be pushed.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn new(dst: *mut u32) -> NtWriter {
        let head = (LINE - (dst.addr() & (LINE - 1))) % LINE / 4;
        let h = head as i32;
        let (idx, prev) = {
            (
                _mm512_add_epi32(
                    _mm512_set1_epi32(h),
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                ),
                _mm512_setzero_si512(),
            )
        };
        NtWriter {
            dst,
            head,
            idx,
            prev,
            pos: 0,
        }
    }

    /// Appends elements `pos .. pos + 16`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `dst` is valid for writing `pos + 16` elements.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn push(&mut self, v: __m512i) {
        // SAFETY: every store below lies within elements `0 .. pos + 16` of `dst` (caller);
        // streamed addresses are 64-byte aligned: `dst + head` is, and they advance by 16
        // elements (64 bytes); masked stores have no alignment requirement.
        unsafe {
            if self.head == 0 {
                _mm512_stream_si512(self.dst.add(self.pos).cast::<__m512i>(), v);
            } else if self.pos == 0 {
                let m: __mmask16 = (1u16 << self.head) - 1;
                _mm512_mask_storeu_epi32(self.dst.cast::<i32>(), m, v);
            } else {
                let line = _mm512_permutex2var_epi32(self.prev, self.idx, v);
                let at = self.dst.add(self.pos - 16 + self.head);
                _mm512_stream_si512(at.cast::<__m512i>(), line);
            }
        }
        self.prev = v;
        self.pos += 16;
    }

    /// Writes the last partial line. The streaming stores still need a fence (the owning
    /// `Stream` issues it when dropped).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `dst` is valid for writing `pos` elements.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn finish(self) {
        if self.head != 0 && self.pos != 0 {
            let m: __mmask16 = !((1u16 << self.head) - 1);
            // SAFETY: lanes `head..16` of the last vector are elements `pos - 16 + head ..
            // pos`, within bounds (caller).
            unsafe {
                _mm512_mask_storeu_epi32(self.dst.add(self.pos - 16).cast::<i32>(), m, self.prev)
            };
        }
    }
}

/// Decodes the full blocks of 64 lattice codes of width 8 (vertical layout) of consecutive
/// buckets of `bucket_blocks` blocks: `nblocks` blocks in all, bucket `b` with dither offset
/// `offsets[b]`; the dither and weight tables restart at every bucket. Per coordinate exactly
/// the operations of `crate::lattice`'s scalar kernel, in the same order (IEEE single-precision
/// multiplies and adds, never fused), so the values are bit-identical. Adds each bucket's
/// wrapping sum of check terms to `sums[b]`. With `stream`, the whole output goes through one
/// [`NtWriter`] (unfenced: the caller's `Stream` fences).
///
/// # Safety
/// The CPU supports AVX-512F; `codes` is valid for reading `64 * nblocks` bytes, `ys` for
/// `64 * nblocks` values, `dither` and `weights` for `64 * min(nblocks, bucket_blocks)`,
/// `offsets` and `sums` for `ceil(nblocks / bucket_blocks)` (`bucket_blocks > 0`), and `out`
/// for writing `64 * nblocks` values.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn lattice8_decode_avx512(
    codes: *const u8,
    ys: *const f32,
    tables: (*const f32, *const u32),
    out: *mut f32,
    nblocks: usize,
    buckets: (usize, *const f32, *mut u32),
    k: [f32; 2],
    stream: bool,
) {
    let (dither, weights) = tables;
    let (bucket_blocks, offsets, sums) = buckets;
    let [inv_eps, eps] = k;
    let inv = _mm512_set1_ps(inv_eps);
    let epsv = _mm512_set1_ps(eps);
    let q = 256.0f32;
    let invq = _mm512_set1_ps(1.0 / q);
    let qv = _mm512_set1_ps(q);
    let magic = _mm512_set1_ps(crate::stats::MAGIC);
    let one = _mm512_set1_epi32(1);
    let zero = _mm512_setzero_si512();
    let byte = _mm512_set1_epi32(0xff);
    // SAFETY: AVX-512F is available (caller).
    let mut w = unsafe { NtWriter::new(out.cast::<u32>()) };
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let end = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let offv = _mm512_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm512_setzero_si512();
        for t in 0..end - blk {
            let i0 = 64 * (blk + t);
            // SAFETY: `blk + t < nblocks`: the block's 64 code bytes and its 64 values of `ys`
            // and `out` are in bounds, and `t < min(nblocks, bucket_blocks)` for the tables
            // (caller); accesses are unaligned (`loadu` / `storeu`) or go through the writer.
            unsafe {
                let cw = _mm512_loadu_si512(codes.add(i0).cast::<__m512i>());
                for j in 0..4 {
                    let i = i0 + 16 * j;
                    let ti = 64 * t + 16 * j;
                    let c = match j {
                        0 => _mm512_and_si512(cw, byte),
                        1 => _mm512_and_si512(_mm512_srli_epi32::<8>(cw), byte),
                        2 => _mm512_and_si512(_mm512_srli_epi32::<16>(cw), byte),
                        _ => _mm512_srli_epi32::<24>(cw),
                    };
                    let v = _mm512_add_ps(_mm512_loadu_ps(dither.add(ti)), offv);
                    let cf = _mm512_cvtepi32_ps(c);
                    let zy = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(ys.add(i)), inv), v);
                    let rm = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(zy, cf), invq), magic);
                    let h = _mm512_castps_si512(rm);
                    let odd = _mm512_sub_epi32(zero, _mm512_and_si512(h, one));
                    let wt = _mm512_loadu_si512(weights.add(ti).cast::<__m512i>());
                    sum = _mm512_add_epi32(sum, _mm512_add_epi32(h, _mm512_and_si512(wt, odd)));
                    let kk = _mm512_add_ps(cf, _mm512_mul_ps(_mm512_sub_ps(rm, magic), qv));
                    let o = _mm512_mul_ps(_mm512_sub_ps(kk, v), epsv);
                    if stream {
                        w.push(_mm512_castps_si512(o));
                    } else {
                        _mm512_storeu_ps(out.add(i), o);
                    }
                }
            }
        }
        // SAFETY: as for `offsets`.
        unsafe {
            let s = sums.add(b);
            *s = (*s).wrapping_add(_mm512_reduce_add_epi32(sum) as u32);
        }
        blk = end;
        b += 1;
    }
    if stream {
        // SAFETY: `64 nblocks` elements were pushed, within bounds (caller).
        unsafe { w.finish() };
    }
}

/// Shift counts `base + t / 4` for lane `t`, times `mul` (lane `t` of a 16-code vector of a
/// width-1 or width-2 block is code `4j + t % 4` of word `t % 4`, `j = 4k + t / 4`).
#[inline(always)]
fn quarter_shifts(k: i32, mul: i32) -> __m512i {
    let b = 4 * k;
    // SAFETY: `_mm512_setr_epi32` only builds a register (AVX-512F: every caller enables it).
    unsafe {
        _mm512_setr_epi32(
            mul * b,
            mul * b,
            mul * b,
            mul * b,
            mul * (b + 1),
            mul * (b + 1),
            mul * (b + 1),
            mul * (b + 1),
            mul * (b + 2),
            mul * (b + 2),
            mul * (b + 2),
            mul * (b + 2),
            mul * (b + 3),
            mul * (b + 3),
            mul * (b + 3),
            mul * (b + 3),
        )
    }
}

/// Shift counts of a width-4 block: `8k` in the low 8 lanes, `8k + 4` in the high 8.
#[inline(always)]
fn half_shifts(k: i32) -> __m512i {
    let (a, b) = (8 * k, 8 * k + 4);
    // SAFETY: builds a register only (AVX-512F: every caller enables it).
    unsafe { _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b) }
}

/// Packs `nblocks` full blocks of 64 codes from `src` into vertical blocks of `8 * B` bytes at
/// `dst` (`B` in 1, 2, 4, 8, 16), keeping the low `B` bits of each code: the same bytes as
/// `crate::bits::pack_vertical`.
///
/// # Safety
/// The CPU supports AVX-512F; `src` is valid for reading `64 * nblocks` `u32` and `dst` for
/// writing `8 * B * nblocks` bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pack_vertical_avx512<const B: usize>(
    src: *const u32,
    dst: *mut u8,
    nblocks: usize,
) {
    for blk in 0..nblocks {
        // SAFETY (whole block): `blk < nblocks`, so the 64 codes at `src + 64 blk` and the
        // `8 B` bytes at `dst + 8 B blk` are in bounds (caller); every access is unaligned
        // (`loadu` / `storeu`); AVX-512F is available (caller).
        unsafe {
            let s = src.add(64 * blk);
            let d = dst.add(8 * B * blk);
            let v: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_loadu_si512(s.add(16 * k).cast::<__m512i>()));
            let mask = _mm512_set1_epi32(((1u64 << B) - 1) as i32);
            let m: [__m512i; 4] = std::array::from_fn(|k| _mm512_and_si512(v[k], mask));
            match B {
                1 | 2 => {
                    let mul = B as i32;
                    let mut acc = _mm512_sllv_epi32(m[0], quarter_shifts(0, mul));
                    for (k, mk) in m.iter().enumerate().skip(1) {
                        let sh = _mm512_sllv_epi32(*mk, quarter_shifts(k as i32, mul));
                        acc = _mm512_or_si512(acc, sh);
                    }
                    let lo = _mm512_castsi512_si256(acc);
                    let hi = _mm512_extracti64x4_epi64::<1>(acc);
                    let a = _mm256_or_si256(lo, hi);
                    let w =
                        _mm_or_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
                    if B == 1 {
                        // Four 16-bit words (the values fit: 16 codes of 1 bit each).
                        _mm_storel_epi64(d.cast::<__m128i>(), _mm_packus_epi32(w, w));
                    } else {
                        _mm_storeu_si128(d.cast::<__m128i>(), w);
                    }
                }
                4 => {
                    let mut acc = _mm512_sllv_epi32(m[0], half_shifts(0));
                    for (k, mk) in m.iter().enumerate().skip(1) {
                        acc = _mm512_or_si512(acc, _mm512_sllv_epi32(*mk, half_shifts(k as i32)));
                    }
                    let lo = _mm512_castsi512_si256(acc);
                    let hi = _mm512_extracti64x4_epi64::<1>(acc);
                    _mm256_storeu_si256(d.cast::<__m256i>(), _mm256_or_si256(lo, hi));
                }
                8 => {
                    let w = _mm512_or_si512(
                        _mm512_or_si512(m[0], _mm512_slli_epi32::<8>(m[1])),
                        _mm512_or_si512(
                            _mm512_slli_epi32::<16>(m[2]),
                            _mm512_slli_epi32::<24>(m[3]),
                        ),
                    );
                    _mm512_storeu_si512(d.cast::<__m512i>(), w);
                }
                16 => {
                    let w0 = _mm512_or_si512(m[0], _mm512_slli_epi32::<16>(m[2]));
                    let w1 = _mm512_or_si512(m[1], _mm512_slli_epi32::<16>(m[3]));
                    _mm512_storeu_si512(d.cast::<__m512i>(), w0);
                    _mm512_storeu_si512(d.add(64).cast::<__m512i>(), w1);
                }
                _ => unreachable!("only vertical widths reach the AVX-512 packer"),
            }
        }
    }
}

/// Unpacks `nblocks` full vertical blocks of `8 * B` bytes at `src` (`B` in 1, 2, 4, 8, 16)
/// into 64 codes each at `dst`: the same codes as `crate::bits::unpack_vertical`.
///
/// # Safety
/// The CPU supports AVX-512F; `src` is valid for reading `8 * B * nblocks` bytes and `dst` for
/// writing `64 * nblocks` `u32`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn unpack_vertical_avx512<const B: usize>(
    src: *const u8,
    dst: *mut u32,
    nblocks: usize,
) {
    for blk in 0..nblocks {
        // SAFETY (whole block): `blk < nblocks`, so the `8 B` bytes at `src + 8 B blk` and the
        // 64 codes at `dst + 64 blk` are in bounds (caller); every access is unaligned;
        // AVX-512F is available (caller).
        unsafe {
            let s = src.add(8 * B * blk);
            let d = dst.add(64 * blk);
            let out = unpack_block_avx512::<B>(s);
            for (k, v) in out.iter().enumerate() {
                _mm512_storeu_si512(d.add(16 * k).cast::<__m512i>(), *v);
            }
        }
    }
}

/// [`unpack_vertical_avx512`] writing with streaming stores through an [`NtWriter`] (the
/// output of a large call).
///
/// # Safety
/// As [`unpack_vertical_avx512`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn unpack_vertical_nt_avx512<const B: usize>(
    src: *const u8,
    dst: *mut u32,
    nblocks: usize,
) {
    // SAFETY: AVX-512F is available (caller).
    let mut w = unsafe { NtWriter::new(dst) };
    for blk in 0..nblocks {
        // SAFETY: `blk < nblocks`: the block's bytes are in bounds, and the writer writes
        // elements below `64 (blk + 1)` (caller).
        unsafe {
            for v in unpack_block_avx512::<B>(src.add(8 * B * blk)) {
                w.push(v);
            }
        }
    }
    // SAFETY: `64 nblocks` elements were pushed, within bounds (caller).
    unsafe { w.finish() };
}

/// The 64 codes of the vertical block at `s`, as four vectors of 16.
///
/// # Safety
/// The CPU supports AVX-512F; `s` is valid for reading `8 * B` bytes; `B` is 1, 2, 4, 8 or 16.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn unpack_block_avx512<const B: usize>(s: *const u8) -> [__m512i; 4] {
    // SAFETY: loads of `8 B` bytes at most from `s` (caller), unaligned; AVX-512F (caller).
    unsafe {
        let mask = _mm512_set1_epi32(((1u64 << B) - 1) as i32);
        match B {
            1 | 2 => {
                let w = if B == 1 {
                    _mm_cvtepu16_epi32(_mm_loadl_epi64(s.cast::<__m128i>()))
                } else {
                    _mm_loadu_si128(s.cast::<__m128i>())
                };
                let w = _mm512_broadcast_i32x4(w);
                std::array::from_fn(|k| {
                    let sh = _mm512_srlv_epi32(w, quarter_shifts(k as i32, B as i32));
                    _mm512_and_si512(sh, mask)
                })
            }
            4 => {
                let w = _mm512_broadcast_i64x4(_mm256_loadu_si256(s.cast::<__m256i>()));
                std::array::from_fn(|k| {
                    _mm512_and_si512(_mm512_srlv_epi32(w, half_shifts(k as i32)), mask)
                })
            }
            8 => {
                let w = _mm512_loadu_si512(s.cast::<__m512i>());
                [
                    _mm512_and_si512(w, mask),
                    _mm512_and_si512(_mm512_srli_epi32::<8>(w), mask),
                    _mm512_and_si512(_mm512_srli_epi32::<16>(w), mask),
                    _mm512_srli_epi32::<24>(w),
                ]
            }
            16 => {
                let w0 = _mm512_loadu_si512(s.cast::<__m512i>());
                let w1 = _mm512_loadu_si512(s.add(64).cast::<__m512i>());
                [
                    _mm512_and_si512(w0, mask),
                    _mm512_and_si512(w1, mask),
                    _mm512_srli_epi32::<16>(w0),
                    _mm512_srli_epi32::<16>(w1),
                ]
            }
            _ => unreachable!("only vertical widths reach the AVX-512 unpacker"),
        }
    }
}

/// Encodes the full blocks of 64 values of consecutive buckets of `bucket_blocks` blocks into
/// lattice codes of width 8 (vertical layout, 64 bytes a block): `nblocks` blocks in all,
/// bucket `b` with dither offset `offsets[b]`; the dither and weight tables restart at every
/// bucket. Per coordinate exactly the operations of `crate::lattice`'s scalar encode kernel in
/// the same order (`t = (x * (1/eps) + (dither + offset) + MAGIC).to_bits() + BIAS`), so the
/// codes are bit-identical. Adds each bucket's check terms to `sums[b]` and returns the or of
/// every `t` (the range check). With `stream` (and a 4-byte aligned `dst`), the codes go
/// through an [`NtWriter`] (unfenced: the caller's `Stream` fences).
///
/// # Safety
/// The CPU supports AVX-512F; `xs` is valid for reading `64 * nblocks` values, `dither` and
/// `weights` for `64 * min(nblocks, bucket_blocks)`, `offsets` and `sums` for
/// `ceil(nblocks / bucket_blocks)` (`bucket_blocks > 0`), and `dst` for writing `64 * nblocks`
/// bytes.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn lattice8_encode_avx512(
    xs: *const f32,
    tables: (*const f32, *const u32),
    dst: *mut u8,
    nblocks: usize,
    buckets: (usize, *const f32, *mut u32),
    inv_eps: f32,
    bias: u32,
    stream: bool,
) -> u32 {
    let (dither, weights) = tables;
    let (bucket_blocks, offsets, sums) = buckets;
    let inv = _mm512_set1_ps(inv_eps);
    let magic = _mm512_set1_ps(crate::stats::MAGIC);
    let biasv = _mm512_set1_epi32(bias as i32);
    let one = _mm512_set1_epi32(1);
    let zero = _mm512_setzero_si512();
    let byte = _mm512_set1_epi32(0xff);
    let stream = stream && dst.addr() % 4 == 0;
    let mut range = _mm512_setzero_si512();
    // SAFETY: AVX-512F is available (caller); the writer is used only when `dst` is 4-byte
    // aligned (checked above).
    let mut w = unsafe { NtWriter::new(dst.cast::<u32>()) };
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let end = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let offv = _mm512_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm512_setzero_si512();
        for t in 0..end - blk {
            let i0 = 64 * (blk + t);
            // SAFETY: `blk + t < nblocks`: the block's 64 values of `xs` and 64 bytes of `dst`
            // are in bounds, and `t < min(nblocks, bucket_blocks)` for the tables (caller);
            // accesses are unaligned (`loadu` / `storeu`) or go through the writer.
            unsafe {
                let mut word = _mm512_setzero_si512();
                for j in 0..4 {
                    let ti = 64 * t + 16 * j;
                    let v = _mm512_add_ps(_mm512_loadu_ps(dither.add(ti)), offv);
                    let z =
                        _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(xs.add(i0 + 16 * j)), inv), v);
                    let tt = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(z, magic)), biasv);
                    range = _mm512_or_si512(range, tt);
                    let h = _mm512_srli_epi32::<8>(tt);
                    let odd = _mm512_sub_epi32(zero, _mm512_and_si512(h, one));
                    let wt = _mm512_loadu_si512(weights.add(ti).cast::<__m512i>());
                    sum = _mm512_add_epi32(sum, _mm512_add_epi32(h, _mm512_and_si512(wt, odd)));
                    let c = _mm512_and_si512(tt, byte);
                    word = _mm512_or_si512(
                        word,
                        match j {
                            0 => c,
                            1 => _mm512_slli_epi32::<8>(c),
                            2 => _mm512_slli_epi32::<16>(c),
                            _ => _mm512_slli_epi32::<24>(c),
                        },
                    );
                }
                if stream {
                    w.push(word);
                } else {
                    _mm512_storeu_si512(dst.add(i0).cast::<__m512i>(), word);
                }
            }
        }
        // SAFETY: as for `offsets`.
        unsafe {
            let s = sums.add(b);
            *s = (*s).wrapping_add(_mm512_reduce_add_epi32(sum) as u32);
        }
        blk = end;
        b += 1;
    }
    if stream {
        // SAFETY: `16 nblocks` words were pushed, within the `64 nblocks` bytes (caller).
        unsafe { w.finish() };
    }
    _mm512_reduce_or_epi32(range) as u32
}
