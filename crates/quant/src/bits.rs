//! Bit packing: codes of width `B` bits, least-significant bit first.
//!
//! Codes are packed in blocks of [`BLOCK`] = 64 codes, `8*B` bytes each (the last block of a
//! vector is zero-padded and cut to `ceil(n*B/8)` bytes in total). Inside a block:
//! - widths 4, 8 and 16 use a *vertical* layout: `2*B` little-endian 32-bit words, word `w`
//!   holding codes `w, w + 2B, w + 4B, ...` from its low bits up (so it vectorizes with SSE2
//!   shifts and ors, like `bitpacking`'s lane-interleaved layouts);
//! - every other width, and the last partial block of a vector at any width, is sequential:
//!   code `i` occupies bits `i*B .. (i+1)*B` of the block read as one little-endian integer.
//!
//! Widths 1, 2, 4, 8 and 16 have dedicated loops; the others a generic 8-codes-at-a-time loop,
//! all monomorphized per width.

use crate::QuantError;

/// Codes per kernel block.
pub(crate) const BLOCK: usize = 64;

/// Vertical layout for `B` in {4, 8, 16}: the block's `8*B` bytes are `2*B` little-endian
/// 32-bit words, and word `w` holds codes `w, w + 2B, w + 4B, ...` from its low bits up. Each
/// word gathers codes a fixed stride apart, so packing is in-lane shifts and ors (no byte
/// shuffles, which SSE2 lacks).
#[inline(always)]
fn pack_vertical<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    let lanes = 2 * B;
    let mut words = [0u32; 32];
    for j in 0..32 / B {
        for (w, word) in words[..lanes].iter_mut().enumerate() {
            *word |= codes[w + j * lanes] << (j * B);
        }
    }
    for (o, w) in out.chunks_exact_mut(4).zip(&words[..lanes]) {
        o.copy_from_slice(&w.to_le_bytes());
    }
}

#[inline(always)]
fn unpack_vertical<const B: usize>(bytes: &[u8], codes: &mut [u32; BLOCK]) {
    let lanes = 2 * B;
    let mask = ((1u64 << B) - 1) as u32;
    let mut words = [0u32; 32];
    for (w, b) in words[..lanes].iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    for j in 0..32 / B {
        for (w, word) in words[..lanes].iter().enumerate() {
            codes[w + j * lanes] = (word >> (j * B)) & mask;
        }
    }
}

/// Sequential layout for any width (used for every vector's last, partial block).
#[inline(always)]
pub(crate) fn pack_block_seq<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    for (o, c) in out[..8 * B].chunks_exact_mut(B).zip(codes.chunks_exact(8)) {
        let mut acc = 0u128;
        for (j, &v) in c.iter().enumerate() {
            acc |= (v as u128) << (j * B);
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

/// Packs one (full) block of codes (each already `< 2^B`) into `out` (`8*B` bytes).
#[inline(always)]
pub(crate) fn pack_block<const B: usize>(codes: &[u32; BLOCK], out: &mut [u8]) {
    let out = &mut out[..8 * B];
    match B {
        4 | 8 | 16 => pack_vertical::<B>(codes, out),
        2 => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(4)) {
                *o = (c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)) as u8;
            }
        }
        1 => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(8)) {
                let mut b = 0u32;
                for (j, &v) in c.iter().enumerate() {
                    b |= v << j;
                }
                *o = b as u8;
            }
        }
        _ => {
            for (o, c) in out.chunks_exact_mut(B).zip(codes.chunks_exact(8)) {
                let mut acc = 0u128;
                for (j, &v) in c.iter().enumerate() {
                    acc |= (v as u128) << (j * B);
                }
                o.copy_from_slice(&acc.to_le_bytes()[..B]);
            }
        }
    }
}

/// Unpacks one block of codes from `bytes` (`8*B` bytes).
#[inline(always)]
pub(crate) fn unpack_block<const B: usize>(bytes: &[u8], codes: &mut [u32; BLOCK]) {
    let bytes = &bytes[..8 * B];
    match B {
        4 | 8 | 16 => unpack_vertical::<B>(bytes, codes),
        2 => {
            for (c, b) in codes.chunks_exact_mut(4).zip(bytes.iter()) {
                let b = *b as u32;
                c[0] = b & 3;
                c[1] = (b >> 2) & 3;
                c[2] = (b >> 4) & 3;
                c[3] = b >> 6;
            }
        }
        1 => {
            for (c, b) in codes.chunks_exact_mut(8).zip(bytes.iter()) {
                let b = *b as u32;
                for (j, v) in c.iter_mut().enumerate() {
                    *v = (b >> j) & 1;
                }
            }
        }
        _ => {
            let mask = (1u128 << B) - 1;
            for (c, b) in codes.chunks_exact_mut(8).zip(bytes.chunks_exact(B)) {
                let mut a = [0u8; 16];
                a[..B].copy_from_slice(b);
                let acc = u128::from_le_bytes(a);
                for (j, v) in c.iter_mut().enumerate() {
                    *v = ((acc >> (j * B)) & mask) as u32;
                }
            }
        }
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

fn pack_all<const B: usize>(codes: &[u32], out: &mut [u8]) {
    let mask = if B == 32 { u32::MAX } else { (1u32 << B) - 1 };
    let mut buf = [0u32; BLOCK];
    for (cc, oc) in codes.chunks(BLOCK).zip(out.chunks_mut(8 * B)) {
        buf[..cc.len()].copy_from_slice(cc);
        buf[cc.len()..].fill(0);
        for b in buf.iter_mut() {
            *b &= mask;
        }
        if cc.len() == BLOCK {
            pack_block::<B>(&buf, oc);
        } else {
            let mut tmp = [0u8; 8 * 16];
            pack_block_seq::<B>(&buf, &mut tmp);
            let n = oc.len();
            oc.copy_from_slice(&tmp[..n]);
        }
    }
}

fn unpack_all<const B: usize>(bytes: &[u8], out: &mut [u32]) {
    let mut buf = [0u32; BLOCK];
    for (oc, bc) in out.chunks_mut(BLOCK).zip(bytes.chunks(8 * B)) {
        if oc.len() == BLOCK {
            unpack_block::<B>(bc, &mut buf);
        } else {
            let mut tmp = [0u8; 8 * 16];
            tmp[..bc.len()].copy_from_slice(bc);
            unpack_block_seq::<B>(&tmp, &mut buf);
        }
        let n = oc.len();
        oc.copy_from_slice(&buf[..n]);
    }
}

/// Packs `codes` at `bits` bits each (1..=16; higher bits of each code are ignored) into `out`,
/// replacing its contents with `packed_len(codes.len(), bits)` bytes.
///
/// See the module documentation for the layout: 2-bit codes are sequential; 4-bit codes are
/// vertical in full blocks of 64.
///
/// ```
/// let mut bytes = Vec::new();
/// quant::pack_bits(&[1, 2, 3, 3], 2, &mut bytes).unwrap();
/// assert_eq!(bytes, [0b11_11_10_01]);
/// quant::pack_bits(&[1, 2, 3, 15], 4, &mut bytes).unwrap();
/// assert_eq!(bytes, [0x21, 0xf3]); // a partial block: sequential
/// let mut back = [0u32; 4];
/// quant::unpack_bits(&bytes, 4, &mut back).unwrap();
/// assert_eq!(back, [1, 2, 3, 15]);
/// let codes: Vec<u32> = (0..64).map(|i| i % 16).collect();
/// quant::pack_bits(&codes, 4, &mut bytes).unwrap();
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
