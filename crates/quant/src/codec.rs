use crate::QuantError;

/// What a decode found besides the values themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeReport {
    /// Buckets whose decoded values failed the codec's integrity check (for the lattice codec: the
    /// writer's vector was too far from the reader's). The caller must not use such a decode; it
    /// should fall back to a full-precision copy.
    pub failed_buckets: usize,
}

impl DecodeReport {
    /// True when every bucket decoded correctly.
    pub fn is_ok(&self) -> bool {
        self.failed_buckets == 0
    }
}

/// A vector codec: `&[f32]` to a self-describing byte payload and back.
pub trait Codec: Send {
    /// Short name with parameters, e.g. `lattice:8`.
    fn name(&self) -> String;

    /// Encodes `x`, replacing the contents of `out`.
    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError>;

    /// Decodes `bytes` into `out` (whose length must equal the encoded vector's).
    ///
    /// `reference` is the decoder's own vector, of the same length as `out`; codecs that decode
    /// relative to the reader (the lattice codec) use it, the others ignore it.
    fn decode(
        &self,
        bytes: &[u8],
        reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError>;

    /// Tells the codec the largest coordinate-wise distance (`||x - y||_inf`) recently observed between
    /// this node's model and a peer's, so that distance-adaptive codecs can scale their step.
    fn observe_distance(&mut self, _linf: f32) {}
}

/// Full-precision little-endian f32 with an 8-byte header: the baseline every codec is compared to.
#[derive(Debug, Default, Clone)]
pub struct IdentityCodec;

const IDENTITY_MAGIC: [u8; 4] = *b"QF32";

impl Codec for IdentityCodec {
    fn name(&self) -> String {
        "none".to_string()
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = u32::try_from(x.len())
            .map_err(|_| QuantError::InvalidParameter(format!("{} values exceed u32", x.len())))?;
        // Every byte is overwritten below: resizing without clearing avoids zero-filling.
        out.resize(8 + 4 * x.len(), 0);
        out[..4].copy_from_slice(&IDENTITY_MAGIC);
        out[4..8].copy_from_slice(&len.to_le_bytes());
        for (chunk, v) in out[8..].chunks_exact_mut(4).zip(x) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        _reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        if bytes.len() < 8 {
            return Err(QuantError::Truncated {
                needed: 8,
                available: bytes.len(),
            });
        }
        if bytes[..4] != IDENTITY_MAGIC {
            return Err(QuantError::BadHeader(
                "not a full-precision (QF32) payload".into(),
            ));
        }
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if len != out.len() {
            return Err(QuantError::LengthMismatch {
                payload: len,
                expected: out.len(),
            });
        }
        let body = &bytes[8..];
        if body.len() != 4 * len {
            return Err(QuantError::Truncated {
                needed: 8 + 4 * len,
                available: bytes.len(),
            });
        }
        for (o, chunk) in out.iter_mut().zip(body.chunks_exact(4)) {
            *o = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Ok(DecodeReport::default())
    }
}
