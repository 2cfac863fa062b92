//! The common payload header and a bounds-checked reader for untrusted bytes.
//!
//! Every codec except [`IdentityCodec`](crate::IdentityCodec) starts its payload with the same
//! 8 bytes: `b"SQ"`, a codec kind byte, a format version byte, and the vector length as a
//! little-endian `u32`.

use crate::QuantError;

/// Format version written by this crate.
pub(crate) const VERSION: u8 = 2;
/// Size of the common header.
pub(crate) const COMMON_HEADER: usize = 8;

/// Codec kinds as written in byte 2 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Lattice = 1,
    Qsgd = 2,
    MinMax = 3,
    Sign = 4,
    TernGrad = 5,
    TopK = 6,
    RandK = 7,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lattice => "lattice",
            Kind::Qsgd => "qsgd",
            Kind::MinMax => "minmax",
            Kind::Sign => "sign",
            Kind::TernGrad => "terngrad",
            Kind::TopK => "topk",
            Kind::RandK => "randk",
        }
    }
}

/// Converts a vector length to the `u32` the header holds.
pub(crate) fn len_u32(len: usize) -> Result<u32, QuantError> {
    u32::try_from(len)
        .map_err(|_| QuantError::InvalidParameter(format!("{len} values exceed u32::MAX")))
}

/// Writes the common header into the first [`COMMON_HEADER`] bytes of `out`.
pub(crate) fn put_header(out: &mut [u8], kind: Kind, len: u32) {
    out[..2].copy_from_slice(b"SQ");
    out[2] = kind as u8;
    out[3] = VERSION;
    out[4..8].copy_from_slice(&len.to_le_bytes());
}

/// Checks the common header of `bytes` against the expected kind and the caller's length, and
/// returns a reader positioned after it.
pub(crate) fn check_header(
    bytes: &[u8],
    kind: Kind,
    expected_len: usize,
) -> Result<Reader<'_>, QuantError> {
    let mut r = Reader::new(bytes);
    let head = r.take(COMMON_HEADER)?;
    if head[..2] != *b"SQ" {
        return Err(QuantError::BadHeader("missing SQ magic".into()));
    }
    if head[2] != kind as u8 {
        return Err(QuantError::BadHeader(format!(
            "payload kind {} is not {}",
            head[2],
            kind.name()
        )));
    }
    if head[3] != VERSION {
        return Err(QuantError::BadHeader(format!(
            "unsupported format version {} (this build reads {VERSION})",
            head[3]
        )));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len != expected_len {
        return Err(QuantError::LengthMismatch {
            payload: len,
            expected: expected_len,
        });
    }
    Ok(r)
}

/// A cursor over untrusted bytes: every read is bounds-checked and fails with
/// [`QuantError::Truncated`].
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], QuantError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(QuantError::Truncated {
                needed: self.pos.saturating_add(n),
                available: self.bytes.len(),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, QuantError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, QuantError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, QuantError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// The unread bytes.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    /// Takes exactly the remaining `n` bytes: fewer is truncation, more is an oversized payload.
    pub(crate) fn take_exact_rest(&mut self, n: usize) -> Result<&'a [u8], QuantError> {
        let rest = self.rest().len();
        if rest > n {
            return Err(QuantError::BadHeader(format!(
                "payload has {} trailing bytes beyond the {} its header announces",
                rest - n,
                self.pos + n
            )));
        }
        self.take(n)
    }
}

/// Reads a little-endian f32 at `i` of a slice known to hold it.
#[inline(always)]
pub(crate) fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let b = &bytes[4 * i..4 * i + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes a little-endian f32 at `i`.
#[inline(always)]
pub(crate) fn put_f32_at(bytes: &mut [u8], i: usize, v: f32) {
    bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

/// Resizes `out` to `total` bytes, zeroing only bytes it did not already have: callers overwrite
/// every byte, so reusing a buffer costs no extra pass over memory.
pub(crate) fn size_output(out: &mut Vec<u8>, total: usize) {
    out.truncate(total);
    out.resize(total, 0);
}
