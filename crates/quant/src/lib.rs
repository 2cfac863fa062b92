//! Bit-packed quantization codecs for model averaging and gradient compression.
//!
//! Every codec turns a `&[f32]` into a self-describing byte payload and back. Decoding treats its
//! input as untrusted: malformed bytes give a [`QuantError`], never a panic.

mod bits;
mod codec;
mod error;
pub mod lattice;
mod rng;
mod stats;
mod wire;

pub use bits::{pack_bits, packed_len, unpack_bits};
pub use codec::{Codec, DecodeReport, IdentityCodec};
pub use error::QuantError;
pub use lattice::LatticeCodec;
