//! Bit-packed quantization codecs for model averaging and gradient compression.
//!
//! Every codec turns a `&[f32]` into a self-describing byte payload and back. Decoding treats its
//! input as untrusted: malformed bytes give a [`QuantError`], never a panic.

mod codec;
mod error;

pub use codec::{Codec, DecodeReport, IdentityCodec};
pub use error::QuantError;
