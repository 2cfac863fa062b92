//! Bit-packed quantization codecs for model averaging and gradient compression.
//!
//! Every codec turns a `&[f32]` into a self-describing, versioned byte payload and back
//! ([`Codec`]). Decoding treats its input as untrusted: malformed bytes give a [`QuantError`],
//! never a panic, an out-of-bounds read or an allocation larger than the caller's buffers.
//!
//! | spec | codec | bits/coord | unbiased |
//! |---|---|---|---|
//! | `none` | [`IdentityCodec`] | 32 | exact |
//! | `lattice:B` (2..=16) | [`LatticeCodec`], decodes relative to the reader's vector | B | yes (dithered) |
//! | `qsgd:S` | [`QsgdCodec`] | ceil(log2(2S+1)) | yes |
//! | `minmax:B[:stochastic]` (1..=8) | [`MinMaxCodec`] | B | stochastic only |
//! | `sign` | [`SignCodec`] | 1 | no |
//! | `terngrad` | [`TernGradCodec`] | 2 | yes |
//! | `topk:F`, `randk:F` | [`SparseCodec`] | F (32 + ceil(log2 d)) | rand-k |
//! | `topk:F+minmax:4` … | [`SparseCodec`] with a quantizer | | |
//! | `ef(SPEC)`, `SPEC+ef` | [`ErrorFeedback`] | as SPEC | |
//!
//! ```
//! use swarmsgd_quant::{Codec, CodecSpec};
//!
//! let x: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.01).sin()).collect();
//! // The reader's own model, close to the writer's.
//! let y: Vec<f32> = x.iter().map(|v| v + 0.001).collect();
//!
//! let mut codec = "lattice:8".parse::<CodecSpec>()?.build(42)?;
//! codec.observe_distance(0.001); // largest |x - y| seen recently
//! let mut bytes = Vec::new();
//! codec.encode(&x, &mut bytes)?;
//! assert!(bytes.len() < x.len() + 100); // ~1 byte per value instead of 4
//!
//! let mut decoded = vec![0.0; x.len()];
//! let report = codec.decode(&bytes, &y, &mut decoded)?;
//! assert!(report.is_ok()); // otherwise: fall back to a full-precision copy
//! for (a, b) in x.iter().zip(&decoded) {
//!     assert!((a - b).abs() < 1e-4);
//! }
//! # Ok::<(), swarmsgd_quant::QuantError>(())
//! ```

mod bits;
mod codec;
mod ef;
mod error;
pub mod lattice;
mod rng;
mod scalar;
mod simd;
mod sparse;
mod spec;
mod stats;
mod wire;

pub use bits::{pack_bits, packed_len, unpack_bits};
pub use codec::{Codec, DecodeReport, IdentityCodec};
pub use ef::ErrorFeedback;
pub use error::QuantError;
pub use lattice::LatticeCodec;
pub use scalar::{MinMaxCodec, QsgdCodec, Rounding, SignCodec, TernGradCodec};
pub use sparse::{index_bits, sparse_k, SparseCodec, Sparsifier};
pub use spec::CodecSpec;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
