//! Bit packing: codes of width `B` bits, least-significant bit first.
//!
//! Codes are packed in blocks of [`BLOCK`] = 64 codes, `8*B` bytes each (the last block of a
//! vector is zero-padded and cut to `ceil(n*B/8)` bytes in total). Inside a block:
//! - widths 1, 2, 4, 8 and 16 use a *vertical* layout: `L = max(4, 2B)` little-endian words of
//!   `64B/L` bits (16-bit words for `B = 1`, 32-bit words otherwise), word `w` holding codes
//!   `w, w + L, w + 2L, ...` from its low bits up. Every word gathers codes a fixed stride
//!   apart, so packing is in-lane shifts and ors at 4 lanes or more (SSE2; up to 16 with
//!   AVX-512), like `bitpacking`'s lane-interleaved layouts;
//! - every other width, and the last partial block of a vector at any width, is sequential:
//!   code `i` occupies bits `i*B .. (i+1)*B` of the block read as one little-endian integer.
//!
//! Codec kernels implement [`EncodeKernel`] / [`DecodeKernel`] (one block of 64 per call, as
//! plain loops) and run through [`encode_map`] / [`decode_map`]: a block's codes stay in
//! registers between the kernel and the packing. Everything is monomorphized per width and
//! runs inside [`crate::simd::run`], which picks the SIMD width at run time.

use crate::simd::{Level, Stream, CHUNK};
use crate::QuantError;

/// Codes per kernel block.
pub(crate) const BLOCK: usize = 64;

/// Whether full blocks of width `B` use the vertical layout.
#[inline(always)]
pub(crate) const fn is_vertical(b: usize) -> bool {
    matches!(b, 1 | 2 | 4 | 8 | 16)
}

/// Words of a vertical block: `max(4, 2B)`; each holds `64 / lanes` codes (16 bits of codes for
/// `B = 1`, 32 bits otherwise).
#[inline(always)]
const fn lanes(b: usize) -> usize {
    if b < 2 {
        4
    } else {
        2 * b
    }
}

/// Packs a full vertical block (`B` in {1, 2, 4, 8, 16}) of `codes` (only their low `B` bits
/// are kept) into `out` (`8*B` bytes): word `w` gathers codes `w, w + L, w + 2L, ...` (`L` the
/// number of words) from its low bits up. Every word gathers codes a fixed stride apart, so
/// packing is `64 / L` in-lane shift-and-or steps over `L` contiguous codes (one vector
/// instruction each at `L` lanes), and nothing crosses lanes.
#[inline(always)]
pub(crate) fn pack_vertical<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    let l = lanes(B);
    let mask = ((1u64 << B) - 1) as u32;
    let mut words = [0u32; 32];
    for j in 0..BLOCK / l {
        for w in 0..l {
            words[w] |= (codes[j * l + w] & mask) << (j * B);
        }
    }
    if B == 1 {
        for (o, w) in out[..8].chunks_exact_mut(2).zip(&words[..4]) {
            o.copy_from_slice(&(*w as u16).to_le_bytes());
        }
    } else {
        for (o, w) in out[..8 * B].chunks_exact_mut(4).zip(&words[..l]) {
            o.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Inverse of [`pack_vertical`].
#[inline(always)]
pub(crate) fn unpack_vertical<const B: usize>(bytes: &[u8], codes: &mut [u32; BLOCK]) {
    let l = lanes(B);
    let mask = ((1u64 << B) - 1) as u32;
    let mut words = [0u32; 32];
    if B == 1 {
        for (w, b) in words[..4].iter_mut().zip(bytes[..8].chunks_exact(2)) {
            *w = u16::from_le_bytes([b[0], b[1]]) as u32;
        }
    } else {
        for (w, b) in words[..l].iter_mut().zip(bytes[..8 * B].chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    for j in 0..BLOCK / l {
        for w in 0..l {
            codes[j * l + w] = (words[w] >> (j * B)) & mask;
        }
    }
}

/// Sequential layout for any width (used for every vector's last, partial block).
#[inline(always)]
pub(crate) fn pack_block_seq<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    let mask = ((1u64 << B) - 1) as u32;
    for (o, c) in out[..8 * B].chunks_exact_mut(B).zip(codes.chunks_exact(8)) {
        let mut acc = 0u128;
        for (j, &v) in c.iter().enumerate() {
            acc |= ((v & mask) as u128) << (j * B);
        }
        o.copy_from_slice(&acc.to_le_bytes()[..B]);
    }
}

/// Inverse of [`pack_block_seq`].
#[inline(always)]
pub(crate) fn unpack_block_seq<const B: usize>(bytes: &[u8], codes: &mut [u32; BLOCK]) {
    let mask = (1u128 << B) - 1;
    for (c, b) in codes
        .chunks_exact_mut(8)
        .zip(bytes[..8 * B].chunks_exact(B))
    {
        let mut a = [0u8; 16];
        a[..B].copy_from_slice(b);
        let acc = u128::from_le_bytes(a);
        for (j, v) in c.iter_mut().enumerate() {
            *v = ((acc >> (j * B)) & mask) as u32;
        }
    }
}

/// Packs one (full) block of codes (only their low `B` bits are kept) into `out` (`8*B` bytes).
#[inline(always)]
pub(crate) fn pack_block<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    if is_vertical(B) {
        pack_vertical::<B>(codes, out);
    } else {
        pack_block_seq::<B>(codes, out);
    }
}

/// Unpacks one block of codes from `bytes` (`8*B` bytes).
#[inline(always)]
pub(crate) fn unpack_block<const B: usize>(bytes: &[u8], codes: &mut [u32; BLOCK]) {
    if is_vertical(B) {
        unpack_vertical::<B>(bytes, codes);
    } else {
        unpack_block_seq::<B>(bytes, codes);
    }
}

/// Number of bytes `n` codes of `bits` bits occupy.
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n as u128 * bits as u128).div_ceil(8) as usize
}

/// Calls `$f::<B>($args)` for the run-time width `$b` in `1..=16`, or evaluates `$default`.
macro_rules! dispatch_width {
    ($b:expr, $f:ident ( $($arg:expr),* $(,)? ), $default:expr) => {
        match $b {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            14 => $f::<14>($($arg),*),
            15 => $f::<15>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => $default,
        }
    };
}
pub(crate) use dispatch_width;

/// Runs `f` on every block of `x`, packing the codes it produces into `out`
/// (`packed_len(x.len(), B)` bytes). The last partial block is zero-padded; its padding codes
/// are dropped. `f` gets the block index.
#[inline(always)]
pub(crate) fn encode_blocks<const B: usize>(
    x: &[f32],
    out: &mut [u8],
    mut f: impl FnMut(usize, &[f32; BLOCK], &mut [u32; BLOCK]),
) {
    let mut codes = [0u32; BLOCK];
    for (i, (xc, oc)) in x.chunks(BLOCK).zip(out.chunks_mut(8 * B)).enumerate() {
        if let (Ok(xs), true) = (<&[f32; BLOCK]>::try_from(xc), oc.len() == 8 * B) {
            f(i, xs, &mut codes);
            pack_block::<B>(&codes, oc);
        } else {
            let mut xs = [0f32; BLOCK];
            xs[..xc.len()].copy_from_slice(xc);
            f(i, &xs, &mut codes);
            let mut tmp = [0u8; 8 * 16];
            pack_block_seq::<B>(&codes, &mut tmp);
            let n = oc.len();
            oc.copy_from_slice(&tmp[..n]);
        }
    }
}

/// Runs `f` on every block of codes in `bytes` (`packed_len(out.len(), B)` bytes), together with
/// the matching block of `reference` (zero-padded; pass an empty slice when unused), writing
/// the values it produces to `out`.
#[inline(always)]
pub(crate) fn decode_blocks<const B: usize>(
    bytes: &[u8],
    reference: &[f32],
    out: &mut [f32],
    mut f: impl FnMut(usize, &[u32; BLOCK], &[f32; BLOCK], &mut [f32; BLOCK]),
) {
    let mut codes = [0u32; BLOCK];
    let zeros = [0f32; BLOCK];
    let mut refs = reference.chunks(BLOCK);
    for (i, (oc, bc)) in out.chunks_mut(BLOCK).zip(bytes.chunks(8 * B)).enumerate() {
        let rc = refs.next().unwrap_or(&[]);
        let full_ref = <&[f32; BLOCK]>::try_from(rc).ok();
        let n = oc.len();
        if n == BLOCK && bc.len() == 8 * B {
            if let Ok(os) = <&mut [f32; BLOCK]>::try_from(oc) {
                unpack_block::<B>(bc, &mut codes);
                f(i, &codes, full_ref.unwrap_or(&zeros), os);
            }
        } else {
            let mut tmp = [0u8; 8 * 16];
            tmp[..bc.len()].copy_from_slice(bc);
            unpack_block_seq::<B>(&tmp, &mut codes);
            let mut rs = [0f32; BLOCK];
            rs[..rc.len()].copy_from_slice(rc);
            let mut os = [0f32; BLOCK];
            f(i, &codes, &rs, &mut os);
            oc.copy_from_slice(&os[..n]);
        }
    }
}

/// A block encoder run by [`encode_map`].
pub(crate) trait EncodeKernel {
    /// Called before block `blk` (of 64 coordinates) of the slice being encoded.
    fn begin(&mut self, blk: usize);
    /// The codes of one block (only their low `B` bits are kept). Kernels write this as a plain
    /// loop over the block, which LLVM vectorizes at the width of the enclosing
    /// [`crate::simd::run`].
    fn code_block(&mut self, xs: &[f32; BLOCK], codes: &mut [u32; BLOCK]);
}

/// A block decoder run by [`decode_map`].
pub(crate) trait DecodeKernel {
    /// Called before block `blk` (of 64 coordinates) of the slice being decoded.
    fn begin(&mut self, blk: usize);
    /// The values of one block from its codes and the reader's reference values `ys` (zeros
    /// when there are none).
    fn value_block(&mut self, codes: &[u32; BLOCK], ys: &[f32; BLOCK], os: &mut [f32; BLOCK]);
}

/// Encodes `x` with `k` into `out` (`packed_len(x.len(), B)` bytes), one block of 64 at a time:
/// the kernel's codes stay in registers and are packed at once. The last partial block is
/// zero-padded and its padding codes dropped.
///
/// `ahead` (the next bucket, or `&[]`) is touched one value per cache line along the way, so
/// that its reads from memory overlap this bucket's arithmetic instead of waiting for the next
/// statistics pass (a software prefetch without `unsafe`).
///
/// With a [`Stream`], the codes of every [`CHUNK`] values are packed into its cache-resident
/// stage and streamed to `out` (same bytes, no read-for-ownership of `out`).
#[inline(always)]
pub(crate) fn encode_map<const B: usize, K: EncodeKernel>(
    x: &[f32],
    out: &mut [u8],
    ahead: &[f32],
    k: &mut K,
    stream: Option<&mut Stream>,
) {
    match stream {
        None => encode_map_at::<B, K>(x, out, ahead, k, 0),
        Some(st) => {
            for (c, (xc, oc)) in x
                .chunks(CHUNK)
                .zip(out.chunks_mut(CHUNK * B / 8))
                .enumerate()
            {
                let ahead = ahead.get(c * CHUNK..).unwrap_or(&[]);
                st.produce_u8(
                    oc,
                    #[inline(always)]
                    |s| encode_map_at::<B, K>(xc, s, ahead, k, c * (CHUNK / BLOCK)),
                );
            }
        }
    }
}

/// [`encode_map`] without a stream, from block `blk0` of the bucket.
#[inline(always)]
fn encode_map_at<const B: usize, K: EncodeKernel>(
    x: &[f32],
    out: &mut [u8],
    ahead: &[f32],
    k: &mut K,
    blk0: usize,
) {
    let mut touched = 0u32;
    let mut codes = [0u32; BLOCK];
    for (blk, (xc, oc)) in x.chunks(BLOCK).zip(out.chunks_mut(8 * B)).enumerate() {
        for line in 0..BLOCK / 16 {
            if let Some(v) = ahead.get(blk * BLOCK + 16 * line) {
                touched ^= v.to_bits();
            }
        }
        k.begin(blk0 + blk);
        match <&[f32; BLOCK]>::try_from(xc) {
            Ok(xs) if oc.len() == 8 * B => {
                k.code_block(xs, &mut codes);
                pack_block::<B>(&codes, oc);
            }
            _ => {
                let mut xs = [0f32; BLOCK];
                xs[..xc.len()].copy_from_slice(xc);
                k.code_block(&xs, &mut codes);
                let mut tmp = [0u8; 8 * 16];
                pack_block_seq::<B>(&codes, &mut tmp);
                let n = oc.len();
                oc.copy_from_slice(&tmp[..n]);
            }
        }
    }
    std::hint::black_box(touched);
}

/// Values decoded into a cache-resident stage before one copy to the output (32 KB).
pub(crate) const STAGE: usize = 8192;

fn staging_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QUANT_STAGE").as_deref() != Ok("0"))
}

/// Runs `f(first_bucket, piece)` over consecutive pieces of `out` made of whole buckets.
///
/// A decoder's output is usually far larger than the caches, and plain stores to it read every
/// line from memory before overwriting it (read-for-ownership). Decoding each piece into a
/// stack buffer that stays in L1/L2 and copying it out with one `copy_from_slice` lets the
/// C library's `memcpy` write whole lines (`rep movsb`), which skips those reads.
#[inline(always)]
pub(crate) fn staged<E>(
    out: &mut [f32],
    bucket: usize,
    mut f: impl FnMut(usize, &mut [f32]) -> Result<(), E>,
) -> Result<(), E> {
    if bucket == 0 || bucket > STAGE || out.len() < 2 * STAGE || !staging_enabled() {
        return f(0, out);
    }
    let per = STAGE / bucket * bucket;
    let mut stage = [0f32; STAGE];
    for (i, oc) in out.chunks_mut(per).enumerate() {
        let s = &mut stage[..oc.len()];
        f(i * (per / bucket), s)?;
        oc.copy_from_slice(s);
    }
    Ok(())
}

/// Decodes `out.len()` values from `bytes` (`packed_len(out.len(), B)` bytes) with `k`, passing
/// the matching coordinates of `reference` (zero beyond its end; pass `&[]` when unused).
///
/// With a [`Stream`], every [`CHUNK`] values are decoded into its cache-resident stage and
/// streamed to `out` (same values, no read-for-ownership of `out`).
#[inline(always)]
pub(crate) fn decode_map<const B: usize, K: DecodeKernel>(
    bytes: &[u8],
    reference: &[f32],
    out: &mut [f32],
    k: &mut K,
    stream: Option<&mut Stream>,
) {
    match stream {
        None => decode_map_at::<B, K>(bytes, reference, out, k, 0),
        Some(st) => {
            for (c, oc) in out.chunks_mut(CHUNK).enumerate() {
                let start = c * (CHUNK * B / 8);
                let bc = bytes.get(start..).unwrap_or(&[]);
                let bc = &bc[..bc.len().min(packed_len(oc.len(), B as u32))];
                let rc = reference.get(c * CHUNK..).unwrap_or(&[]);
                let rc = &rc[..rc.len().min(oc.len())];
                st.produce_f32(
                    oc,
                    #[inline(always)]
                    |s| decode_map_at::<B, K>(bc, rc, s, k, c * (CHUNK / BLOCK)),
                );
            }
        }
    }
}

/// [`decode_map`] without a stream, from block `blk0` of the bucket.
#[inline(always)]
fn decode_map_at<const B: usize, K: DecodeKernel>(
    bytes: &[u8],
    reference: &[f32],
    out: &mut [f32],
    k: &mut K,
    blk0: usize,
) {
    let zeros = [0f32; BLOCK];
    let mut codes = [0u32; BLOCK];
    let mut refs = reference.chunks(BLOCK);
    for (blk, (oc, bc)) in out.chunks_mut(BLOCK).zip(bytes.chunks(8 * B)).enumerate() {
        k.begin(blk0 + blk);
        let rc = refs.next().unwrap_or(&[]);
        let n = oc.len();
        if n == BLOCK && bc.len() == 8 * B {
            if let Ok(os) = <&mut [f32; BLOCK]>::try_from(oc) {
                unpack_block::<B>(bc, &mut codes);
                let ys = <&[f32; BLOCK]>::try_from(rc).unwrap_or(&zeros);
                k.value_block(&codes, ys, os);
            }
        } else {
            let mut tmp = [0u8; 8 * 16];
            tmp[..bc.len()].copy_from_slice(bc);
            unpack_block_seq::<B>(&tmp, &mut codes);
            let mut ys = [0f32; BLOCK];
            ys[..rc.len()].copy_from_slice(rc);
            // The padding coordinates are decoded too (and dropped), as they were encoded.
            let mut os = [0f32; BLOCK];
            k.value_block(&codes, &ys, &mut os);
            oc.copy_from_slice(&os[..n]);
        }
    }
}

fn pack_all<const B: usize>(codes: &[u32], out: &mut [u8]) {
    // Packing reads 32 / B times the bytes it writes, so streaming saves little (the output's
    // read-for-ownership) and leaves the payload out of the cache its next reader (a
    // transport) reads it from; measured slower than ordinary stores at 16M codes (AVX2,
    // widths 1, 4, 8). The output streams only once it alone reaches the threshold.
    crate::simd::run(
        #[inline(always)]
        || match Stream::for_footprint(out.len()) {
            None => pack_run::<B>(codes, out),
            Some(mut st) => {
                for (cc, oc) in codes.chunks(CHUNK).zip(out.chunks_mut(CHUNK * B / 8)) {
                    st.produce_u8(
                        oc,
                        #[inline(always)]
                        |s| pack_run::<B>(cc, s),
                    );
                }
            }
        },
    )
}

#[inline(always)]
fn pack_run<const B: usize>(codes: &[u32], out: &mut [u8]) {
    let done = crate::simd::pack_vertical_blocks::<B>(codes, out);
    let (codes, out) = (&codes[BLOCK * done..], &mut out[8 * B * done..]);
    for (cc, oc) in codes.chunks(BLOCK).zip(out.chunks_mut(8 * B)) {
        match <&[u32; BLOCK]>::try_from(cc) {
            Ok(cs) if oc.len() == 8 * B => pack_block::<B>(cs, oc),
            _ => {
                let mut buf = [0u32; BLOCK];
                buf[..cc.len()].copy_from_slice(cc);
                let mut tmp = [0u8; 8 * 16];
                pack_block_seq::<B>(&buf, &mut tmp);
                let n = oc.len();
                oc.copy_from_slice(&tmp[..n]);
            }
        }
    }
}

fn unpack_all<const B: usize>(bytes: &[u8], out: &mut [u32]) {
    // A streamed unpack at the AVX2 level runs as at SSE2 (loop width, stage, streaming
    // copy): on the Zen 4 VM of issue 16's third session, 16M codes unpacked at 20-22 GB/s
    // through the SSE2 path and at 11-13 through the AVX2 one, in every run (cause not found).
    if crate::simd::level() == Level::Avx2
        && bytes.len() + 4 * out.len() >= crate::simd::stream_threshold()
    {
        return crate::simd::at_most(Level::Sse2, || unpack_all_at_level::<B>(bytes, out));
    }
    unpack_all_at_level::<B>(bytes, out)
}

fn unpack_all_at_level<const B: usize>(bytes: &[u8], out: &mut [u32]) {
    crate::simd::run(
        #[inline(always)]
        || match Stream::for_footprint(bytes.len() + 4 * out.len()) {
            None => unpack_run::<B>(bytes, out),
            Some(mut st) => {
                let done = st.unpack_vertical_stream::<B>(bytes, out);
                let (bytes, out) = (&bytes[8 * B * done..], &mut out[BLOCK * done..]);
                for (oc, bc) in out.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK * B / 8)) {
                    st.produce_u32(
                        oc,
                        #[inline(always)]
                        |s| unpack_run::<B>(bc, s),
                    );
                }
            }
        },
    )
}

#[inline(always)]
fn unpack_run<const B: usize>(bytes: &[u8], out: &mut [u32]) {
    let done = crate::simd::unpack_vertical_blocks::<B>(bytes, out);
    let (bytes, out) = (&bytes[8 * B * done..], &mut out[BLOCK * done..]);
    for (oc, bc) in out.chunks_mut(BLOCK).zip(bytes.chunks(8 * B)) {
        let n = oc.len();
        if n == BLOCK && bc.len() == 8 * B {
            if let Ok(os) = <&mut [u32; BLOCK]>::try_from(oc) {
                unpack_block::<B>(bc, os);
            }
        } else {
            let mut tmp = [0u8; 8 * 16];
            tmp[..bc.len()].copy_from_slice(bc);
            let mut buf = [0u32; BLOCK];
            unpack_block_seq::<B>(&tmp, &mut buf);
            oc.copy_from_slice(&buf[..n]);
        }
    }
}

/// Packs `codes` at `bits` bits each (1..=16; higher bits of each code are ignored) into `out`,
/// replacing its contents with `packed_len(codes.len(), bits)` bytes.
///
/// See the module documentation for the layout: widths 1, 2, 4, 8 and 16 are vertical in full
/// blocks of 64, everything else (and every last partial block) sequential.
///
/// ```
/// let mut bytes = Vec::new();
/// swarmsgd_quant::pack_bits(&[1, 2, 3, 3], 2, &mut bytes).unwrap();
/// assert_eq!(bytes, [0b11_11_10_01]);
/// swarmsgd_quant::pack_bits(&[1, 2, 3, 15], 4, &mut bytes).unwrap();
/// assert_eq!(bytes, [0x21, 0xf3]); // a partial block: sequential
/// let mut back = [0u32; 4];
/// swarmsgd_quant::unpack_bits(&bytes, 4, &mut back).unwrap();
/// assert_eq!(back, [1, 2, 3, 15]);
/// let codes: Vec<u32> = (0..64).map(|i| i % 16).collect();
/// swarmsgd_quant::pack_bits(&codes, 4, &mut bytes).unwrap();
/// // A full block: word 0 holds codes 0, 8, 16, ... from its low nibble up.
/// assert_eq!(&bytes[..4], &[0x80u8, 0x80, 0x80, 0x80]);
/// ```
pub fn pack_bits(codes: &[u32], bits: u32, out: &mut Vec<u8>) -> Result<(), QuantError> {
    if !(1..=16).contains(&bits) {
        return Err(QuantError::InvalidParameter(format!(
            "bit width {bits} not in 1..=16"
        )));
    }
    crate::wire::size_output(out, packed_len(codes.len(), bits));
    dispatch_width!(bits, pack_all(codes, out), ());
    Ok(())
}

/// Unpacks `out.len()` codes of `bits` bits (1..=16) from `bytes`, which must hold exactly
/// `packed_len(out.len(), bits)` bytes.
pub fn unpack_bits(bytes: &[u8], bits: u32, out: &mut [u32]) -> Result<(), QuantError> {
    if !(1..=16).contains(&bits) {
        return Err(QuantError::InvalidParameter(format!(
            "bit width {bits} not in 1..=16"
        )));
    }
    let need = packed_len(out.len(), bits);
    if bytes.len() != need {
        return Err(QuantError::Truncated {
            needed: need,
            available: bytes.len(),
        });
    }
    dispatch_width!(bits, unpack_all(bytes, out), ());
    Ok(())
}

/// Sequential bit writer for any width `1..=32` (used for sparse indices; LSB first, the same
/// layout as the block kernels).
#[derive(Debug)]
pub(crate) struct BitWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
    acc: u64,
    nacc: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        BitWriter {
            out,
            pos: 0,
            acc: 0,
            nacc: 0,
        }
    }

    /// Appends the low `bits` bits of `v`. The caller sized the buffer.
    pub(crate) fn put(&mut self, v: u32, bits: u32) {
        let v = (v as u64) & ((1u64 << bits) - 1);
        self.acc |= v << self.nacc;
        self.nacc += bits;
        while self.nacc >= 8 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
            self.acc >>= 8;
            self.nacc -= 8;
        }
    }

    /// Writes the last partial byte.
    pub(crate) fn finish(self) {
        if self.nacc > 0 {
            self.out[self.pos] = self.acc as u8;
        }
    }
}

/// Sequential bit reader, the inverse of [`BitWriter`]; reading past the end yields zeros (the
/// caller checked the length).
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u64,
    nacc: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        BitReader {
            bytes,
            pos: 0,
            acc: 0,
            nacc: 0,
        }
    }

    pub(crate) fn get(&mut self, bits: u32) -> u32 {
        while self.nacc < bits {
            let b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            self.acc |= (b as u64) << self.nacc;
            self.nacc += 8;
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.nacc -= bits;
        v
    }
}
