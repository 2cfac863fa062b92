//! AVX2 kernels: packing and unpacking of full vertical blocks (see `crate::bits`) at widths
//! 1, 2, 4, 8 and 16, eight 32-bit lanes at a time; and the lattice decoder of width 8.
//!
//! Word `w` of a block of `L` words holds codes `w, w + L, w + 2L, ...`, so eight consecutive
//! codes always land in eight consecutive words (or, at widths 1 and 2, where `L = 4`, in the
//! same four words at two neighbouring fields): every packing step is a whole-vector shift and
//! or, with constant counts.

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

/// Wrapping sum of the eight 32-bit lanes of `v`.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sum_lanes(v: __m256i) -> u32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s) as u32
}

/// Decodes `nblocks` full blocks of 64 lattice codes of width 8 (vertical layout) of
/// consecutive buckets of `bucket_blocks` blocks: block `g` lies in bucket `g / bucket_blocks`
/// (dither offset `offsets[b]`) and uses the tables at block `g % bucket_blocks`. Per
/// coordinate exactly the operations of `crate::lattice`'s scalar kernel, in the same order
/// (IEEE single-precision multiplies and adds, never fused), so the values are bit-identical.
/// Adds each bucket's wrapping sum of check terms to `sums[b]`. Ordinary stores (see
/// `super::lattice8_decode` for why not streaming ones).
///
/// # Safety
/// The CPU supports AVX2; `codes` is valid for reading `64 * nblocks` bytes, `ys` for
/// `64 * nblocks` values, `dither` and `weights` for `64 * min(nblocks, bucket_blocks)`,
/// `offsets` and `sums` for `ceil(nblocks / bucket_blocks)` (`bucket_blocks > 0`), and `out`
/// for writing `64 * nblocks` values.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn lattice8_decode_avx2(
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
    let q = 256.0f32;
    let c = DecodeConsts {
        inv: _mm256_set1_ps(inv_eps),
        eps: _mm256_set1_ps(eps),
        invq: _mm256_set1_ps(1.0 / q),
        q: _mm256_set1_ps(q),
        magic: _mm256_set1_ps(crate::stats::MAGIC),
    };
    let byte = _mm256_set1_epi32(0xff);
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let stop = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let off = _mm256_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm256_setzero_si256();
        for g in blk..stop {
            let i0 = 64 * g;
            let t0 = 64 * (g - blk);
            // SAFETY: `g < nblocks`: the block's 64 code bytes and its 64 values of `ys` and
            // `out` are in bounds, and `g - blk < min(nblocks, bucket_blocks)` for the tables
            // (caller); every access is unaligned (`loadu` / `storeu`).
            unsafe {
                let cw0 = _mm256_loadu_si256(codes.add(i0).cast::<__m256i>());
                let cw1 = _mm256_loadu_si256(codes.add(i0 + 32).cast::<__m256i>());
                // Codes `8m ..` (`m = 2j + h`): byte `j` of words `8h ..` (vertical layout).
                let cs = [
                    _mm256_and_si256(cw0, byte),
                    _mm256_and_si256(cw1, byte),
                    _mm256_and_si256(_mm256_srli_epi32::<8>(cw0), byte),
                    _mm256_and_si256(_mm256_srli_epi32::<8>(cw1), byte),
                    _mm256_and_si256(_mm256_srli_epi32::<16>(cw0), byte),
                    _mm256_and_si256(_mm256_srli_epi32::<16>(cw1), byte),
                    _mm256_srli_epi32::<24>(cw0),
                    _mm256_srli_epi32::<24>(cw1),
                ];
                for (m, cm) in cs.into_iter().enumerate() {
                    let d = 8 * m;
                    let v = _mm256_add_ps(_mm256_loadu_ps(dither.add(t0 + d)), off);
                    let wt = _mm256_loadu_si256(weights.add(t0 + d).cast::<__m256i>());
                    let y = _mm256_loadu_ps(ys.add(i0 + d));
                    _mm256_storeu_ps(out.add(i0 + d), decode8(&c, cm, y, v, wt, &mut sum));
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
}

/// The lattice:8 decoder's constants, broadcast.
struct DecodeConsts {
    inv: __m256,
    eps: __m256,
    invq: __m256,
    q: __m256,
    magic: __m256,
}

/// Eight coordinates of the lattice:8 decoder: codes `c`, references `y`, dithers `v` (offset
/// included), check weights `wt`; adds the check terms to `sum`. The scalar kernel's
/// operations in its order.
#[inline(always)]
fn decode8(
    k: &DecodeConsts,
    c: __m256i,
    y: __m256,
    v: __m256,
    wt: __m256i,
    sum: &mut __m256i,
) -> __m256 {
    // SAFETY: register operations only; AVX2 is enabled in every caller
    // (`lattice8_decode_avx2`, into which this is inlined).
    unsafe {
        let cf = _mm256_cvtepi32_ps(c);
        let zy = _mm256_add_ps(_mm256_mul_ps(y, k.inv), v);
        let rm = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(zy, cf), k.invq), k.magic);
        let h = _mm256_castps_si256(rm);
        // `h + (wt & -(h & 1))`: the weight where `h` is odd.
        let odd = _mm256_srai_epi32::<31>(_mm256_slli_epi32::<31>(h));
        *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(h, _mm256_and_si256(wt, odd)));
        let kk = _mm256_add_ps(cf, _mm256_mul_ps(_mm256_sub_ps(rm, k.magic), k.q));
        _mm256_mul_ps(_mm256_sub_ps(kk, v), k.eps)
    }
}

/// Encodes `nblocks` full blocks of 64 values of consecutive buckets of `bucket_blocks` blocks
/// into lattice codes of width 8 (vertical layout, 64 bytes a block): block `g` lies in bucket
/// `g / bucket_blocks` (dither offset `offsets[b]`) and uses the tables at block
/// `g % bucket_blocks`. Per coordinate exactly the operations of `crate::lattice`'s scalar
/// encode kernel in the same order (`t = (x * (1/eps) + (dither + offset) + MAGIC).to_bits() +
/// BIAS`), so the codes are bit-identical. Adds each bucket's check terms to `sums[b]` and
/// returns the or of every `t` (the range check). Ordinary stores.
///
/// # Safety
/// The CPU supports AVX2; `xs` is valid for reading `64 * nblocks` values, `dither` and
/// `weights` for `64 * min(nblocks, bucket_blocks)`, `offsets` and `sums` for
/// `ceil(nblocks / bucket_blocks)` (`bucket_blocks > 0`), and `dst` for writing `64 * nblocks`
/// bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn lattice8_encode_avx2(
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
    let inv = _mm256_set1_ps(inv_eps);
    let magic = _mm256_set1_ps(crate::stats::MAGIC);
    let biasv = _mm256_set1_epi32(bias as i32);
    let byte = _mm256_set1_epi32(0xff);
    let mut range = _mm256_setzero_si256();
    let mut blk = 0;
    let mut b = 0;
    while blk < nblocks {
        let stop = (blk + bucket_blocks).min(nblocks);
        // SAFETY: `b < ceil(nblocks / bucket_blocks)` (caller).
        let off = _mm256_set1_ps(unsafe { *offsets.add(b) });
        let mut sum = _mm256_setzero_si256();
        for g in blk..stop {
            let i0 = 64 * g;
            let t0 = 64 * (g - blk);
            // SAFETY: `g < nblocks`: the block's 64 values of `xs` and 64 bytes of `dst` are in
            // bounds, and `g - blk < min(nblocks, bucket_blocks)` for the tables (caller);
            // every access is unaligned (`loadu` / `storeu`).
            unsafe {
                // Codes `8m ..` (`m = 2j + h`) go to byte `j` of words `8h ..`.
                let mut words = [_mm256_setzero_si256(); 2];
                for m in 0..8 {
                    let d = 8 * m;
                    let v = _mm256_add_ps(_mm256_loadu_ps(dither.add(t0 + d)), off);
                    let z = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xs.add(i0 + d)), inv), v);
                    let t = _mm256_add_epi32(_mm256_castps_si256(_mm256_add_ps(z, magic)), biasv);
                    range = _mm256_or_si256(range, t);
                    let h = _mm256_srli_epi32::<8>(t);
                    // `h + (wt & -(h & 1))`: the weight where `h` is odd.
                    let odd = _mm256_srai_epi32::<31>(_mm256_slli_epi32::<31>(h));
                    let wt = _mm256_loadu_si256(weights.add(t0 + d).cast::<__m256i>());
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(h, _mm256_and_si256(wt, odd)));
                    let c = _mm256_and_si256(t, byte);
                    let c = match m / 2 {
                        0 => c,
                        1 => _mm256_slli_epi32::<8>(c),
                        2 => _mm256_slli_epi32::<16>(c),
                        _ => _mm256_slli_epi32::<24>(c),
                    };
                    words[m % 2] = _mm256_or_si256(words[m % 2], c);
                }
                _mm256_storeu_si256(dst.add(i0).cast::<__m256i>(), words[0]);
                _mm256_storeu_si256(dst.add(i0 + 32).cast::<__m256i>(), words[1]);
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
    let r = _mm_or_si128(
        _mm256_castsi256_si128(range),
        _mm256_extracti128_si256::<1>(range),
    );
    let r = _mm_or_si128(r, _mm_shuffle_epi32::<0b01_00_11_10>(r));
    let r = _mm_or_si128(r, _mm_shuffle_epi32::<0b10_11_00_01>(r));
    _mm_cvtsi128_si32(r) as u32
}
