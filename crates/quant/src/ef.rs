//! Error feedback (residual memory): the part of each input that the inner codec lost is added
//! to the next input, so that over time nothing is lost (Seide et al. 2014; Karimireddy et al.
//! 2019).

use crate::{Codec, DecodeReport, QuantError};

/// Wraps a codec with error feedback. Encoding `x` encodes `c = x + e` and keeps
/// `e' = c - decode(encode(c))`; so after `T` encodes, the sum of the decoded vectors equals the
/// sum of the inputs minus the current residual. Decoding is the inner codec's.
pub struct ErrorFeedback {
    inner: Box<dyn Codec>,
    residual: Vec<f32>,
    corrected: Vec<f32>,
    decoded: Vec<f32>,
}

impl std::fmt::Debug for ErrorFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorFeedback")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl ErrorFeedback {
    /// Wraps `inner`; the residual starts at zero.
    pub fn new(inner: Box<dyn Codec>) -> Self {
        ErrorFeedback {
            inner,
            residual: Vec::new(),
            corrected: Vec::new(),
            decoded: Vec::new(),
        }
    }

    /// The current residual (what has been fed in but not yet sent).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Forgets the residual.
    pub fn reset(&mut self) {
        self.residual.clear();
    }
}

impl Codec for ErrorFeedback {
    fn name(&self) -> String {
        format!("ef({})", self.inner.name())
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        if self.residual.len() != x.len() {
            self.residual.clear();
            self.residual.resize(x.len(), 0.0);
        }
        self.corrected.clear();
        self.corrected
            .extend(x.iter().zip(&self.residual).map(|(a, e)| a + e));
        self.inner.encode(&self.corrected, out)?;
        self.decoded.resize(x.len(), 0.0);
        self.inner.decode(out, &self.corrected, &mut self.decoded)?;
        for ((e, c), d) in self
            .residual
            .iter_mut()
            .zip(&self.corrected)
            .zip(&self.decoded)
        {
            *e = c - d;
        }
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        self.inner.decode(bytes, reference, out)
    }

    fn observe_distance(&mut self, linf: f32) {
        self.inner.observe_distance(linf);
    }
}
