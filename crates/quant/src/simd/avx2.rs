//! AVX2 kernels: packing and unpacking of full vertical blocks (see `crate::bits`) at widths
//! 1, 2, 4, 8 and 16, eight 32-bit lanes at a time. Word `w` of a block of `L` words holds
//! codes `w, w + L, w + 2L, ...`, so eight consecutive codes always land in eight consecutive
//! words (or, at widths 1 and 2, where `L = 4`, in the same four words at two neighbouring
//! fields): every step is a whole-vector shift and or, with constant counts.

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

/// Codes `8k .. 8k + 8` of the block at `s`, low `B` bits kept.
///
/// # Safety
/// The CPU supports AVX2; `s` is valid for reading `8k + 8` `u32`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn codes8<const B: usize>(s: *const u32, k: usize) -> __m256i {
    let mask = _mm256_set1_epi32(((1u64 << B) - 1) as i32);
    // SAFETY: an unaligned 32-byte load within the first `8k + 8` codes (caller).
    let v = unsafe { _mm256_loadu_si256(s.add(8 * k).cast::<__m256i>()) };
    _mm256_and_si256(v, mask)
}

/// `v` shifted left by `n` bits in every lane.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn shl(v: __m256i, n: usize) -> __m256i {
    _mm256_sll_epi32(v, _mm_cvtsi32_si128(n as i32))
}

/// `v` shifted right by `n` bits in every lane.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn shr(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi32(v, _mm_cvtsi32_si128(n as i32))
}

/// Packs `nblocks` full blocks of 64 codes from `src` into vertical blocks of `8 * B` bytes at
/// `dst` (`B` in 1, 2, 4, 8, 16), keeping the low `B` bits of each code: the same bytes as
/// `crate::bits::pack_vertical`.
///
/// # Safety
/// The CPU supports AVX2; `src` is valid for reading `64 * nblocks` `u32` and `dst` for writing
/// `8 * B * nblocks` bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_vertical_avx2<const B: usize>(
    src: *const u32,
    dst: *mut u8,
    nblocks: usize,
) {
    for blk in 0..nblocks {
        // SAFETY (whole block): `blk < nblocks`, so the 64 codes at `src + 64 blk` and the
        // `8 B` bytes at `dst + 8 B blk` are in bounds (caller); every store is unaligned.
        unsafe {
            let s = src.add(64 * blk);
            let d = dst.add(8 * B * blk);
            match B {
                1 | 2 => {
                    // Lane t of codes 8k.. is code 8k + t: word t % 4, field 2k + t / 4.
                    let mut acc = codes8::<B>(s, 0);
                    for k in 1..8 {
                        acc = _mm256_or_si256(acc, shl(codes8::<B>(s, k), 2 * k * B));
                    }
                    let lo = _mm256_castsi256_si128(acc);
                    let hi = _mm256_extracti128_si256::<1>(acc);
                    let hi = _mm_sll_epi32(hi, _mm_cvtsi32_si128(B as i32));
                    let words = _mm_or_si128(lo, hi);
                    if B == 1 {
                        // Four 16-bit words (the values fit: 16 codes of 1 bit each).
                        _mm_storel_epi64(d.cast::<__m128i>(), _mm_packus_epi32(words, words));
                    } else {
                        _mm_storeu_si128(d.cast::<__m128i>(), words);
                    }
                }
                4 => {
                    // Codes 8k.. are field k of words 0..8.
                    let mut acc = codes8::<4>(s, 0);
                    for k in 1..8 {
                        acc = _mm256_or_si256(acc, shl(codes8::<4>(s, k), 4 * k));
                    }
                    _mm256_storeu_si256(d.cast::<__m256i>(), acc);
                }
                8 => {
                    // Words 8h..8h + 8, field j: codes 16j + 8h.., the (2j + h)-th eight.
                    for h in 0..2 {
                        let mut acc = codes8::<8>(s, h);
                        for j in 1..4 {
                            acc = _mm256_or_si256(acc, shl(codes8::<8>(s, 2 * j + h), 8 * j));
                        }
                        _mm256_storeu_si256(d.add(32 * h).cast::<__m256i>(), acc);
                    }
                }
                16 => {
                    // Words 8q..8q + 8: codes 8q.. and 32 + 8q...
                    for q in 0..4 {
                        let w =
                            _mm256_or_si256(codes8::<16>(s, q), shl(codes8::<16>(s, 4 + q), 16));
                        _mm256_storeu_si256(d.add(32 * q).cast::<__m256i>(), w);
                    }
                }
                _ => unreachable!("only vertical widths reach the AVX2 packer"),
            }
        }
    }
}

/// Unpacks `nblocks` full vertical blocks of `8 * B` bytes at `src` (`B` in 1, 2, 4, 8, 16)
/// into 64 codes each at `dst`: the same codes as `crate::bits::unpack_vertical`.
///
/// # Safety
/// The CPU supports AVX2; `src` is valid for reading `8 * B * nblocks` bytes and `dst` for
/// writing `64 * nblocks` `u32`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_vertical_avx2<const B: usize>(
    src: *const u8,
    dst: *mut u32,
    nblocks: usize,
) {
    let mask = _mm256_set1_epi32(((1u64 << B) - 1) as i32);
    for blk in 0..nblocks {
        // SAFETY (whole block): `blk < nblocks`, so the `8 B` bytes at `src + 8 B blk` and the
        // 64 codes at `dst + 64 blk` are in bounds (caller); every access is unaligned.
        unsafe {
            let s = src.add(8 * B * blk);
            let d = dst.add(64 * blk);
            // Codes 8k.. from `v`, masked.
            macro_rules! put {
                ($k:expr, $v:expr) => {
                    _mm256_storeu_si256(d.add(8 * $k).cast::<__m256i>(), _mm256_and_si256($v, mask))
                };
            }
            match B {
                1 | 2 => {
                    let words = if B == 1 {
                        _mm_cvtepu16_epi32(_mm_loadl_epi64(s.cast::<__m128i>()))
                    } else {
                        _mm_loadu_si128(s.cast::<__m128i>())
                    };
                    // Lanes 4..8 read the odd fields: the words shifted by one field.
                    let odd = _mm_srl_epi32(words, _mm_cvtsi32_si128(B as i32));
                    let base = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(words), odd);
                    for k in 0..8 {
                        put!(k, shr(base, 2 * k * B));
                    }
                }
                4 => {
                    let w = _mm256_loadu_si256(s.cast::<__m256i>());
                    for k in 0..8 {
                        put!(k, shr(w, 4 * k));
                    }
                }
                8 => {
                    for h in 0..2 {
                        let w = _mm256_loadu_si256(s.add(32 * h).cast::<__m256i>());
                        for j in 0..4 {
                            put!(2 * j + h, shr(w, 8 * j));
                        }
                    }
                }
                16 => {
                    for q in 0..4 {
                        let w = _mm256_loadu_si256(s.add(32 * q).cast::<__m256i>());
                        put!(q, w);
                        put!(4 + q, shr(w, 16));
                    }
                }
                _ => unreachable!("only vertical widths reach the AVX2 unpacker"),
            }
        }
    }
}
