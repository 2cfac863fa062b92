/// Everything that can go wrong while encoding or decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantError {
    /// The payload ended before the data its header announced.
    #[error("payload truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header implies.
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// The payload does not start with a header this version understands.
    #[error("bad payload header: {0}")]
    BadHeader(String),
    /// The payload describes a vector of a different length than the caller expects.
    #[error("length mismatch: payload holds {payload} values, caller expects {expected}")]
    LengthMismatch {
        /// Values in the payload.
        payload: usize,
        /// Values the caller's buffers hold.
        expected: usize,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The payload's header is well formed but its body holds values no encoder produces.
    #[error("corrupt payload: {0}")]
    Corrupt(String),
    /// The input vector holds a NaN or an infinity, which no quantizer can represent.
    #[error("input holds a non-finite value")]
    NonFinite,
    /// A codec specification string could not be parsed.
    #[error("bad codec spec {spec:?}: {reason}")]
    BadSpec {
        /// The offending specification (or the part of it that failed).
        spec: String,
        /// Why it was rejected.
        reason: String,
    },
}
