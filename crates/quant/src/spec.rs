//! Codec specifications: parse `"topk:0.01+minmax:4"` and friends, build codecs, predict sizes.

use std::fmt;
use std::str::FromStr;

use crate::lattice::LatticeCodec;
use crate::rng::mix64;
use crate::scalar::{self, MinMaxCodec, QsgdCodec, Rounding, SignCodec, TernGradCodec};
use crate::sparse::{sparse_k, SparseCodec, Sparsifier};
use crate::{Codec, ErrorFeedback, IdentityCodec, QuantError};

/// A codec description, as given on a command line.
///
/// Grammar (whitespace around tokens is ignored):
/// ```text
/// spec      := "ef(" plain ")" | plain "+ef" | plain
/// plain     := sparsifier "+" quantizer | sparsifier | quantizer
/// sparsifier:= "topk:" FRACTION | "randk:" FRACTION          FRACTION in (0, 1]
/// quantizer := "none"                                        full-precision f32
///            | "lattice:" BITS                               BITS in 2..=16
///            | "qsgd:" LEVELS                                LEVELS in 1..=32767
///            | "minmax:" BITS [":stochastic" | ":nearest"]   BITS in 1..=8, default nearest
///            | "sign" | "terngrad"
/// ```
/// `ef(...)` and the `+ef` suffix both wrap the codec in [`ErrorFeedback`].
///
/// ```
/// use swarmsgd_quant::CodecSpec;
/// let spec: CodecSpec = "topk:0.01+minmax:4".parse().unwrap();
/// assert_eq!(spec.to_string(), "topk:0.01+minmax:4");
/// let ef: CodecSpec = "sign+ef".parse().unwrap();
/// assert_eq!(ef.to_string(), "ef(sign)");
/// assert!("lattice:1".parse::<CodecSpec>().is_err());
/// // 8-bit lattice on 1M values: 8 bits per value plus headers and bucket checks.
/// let bpc = "lattice:8".parse::<CodecSpec>().unwrap().bits_per_coordinate(1 << 20);
/// assert!((bpc - 8.03).abs() < 0.01);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum CodecSpec {
    /// Full-precision f32 ([`IdentityCodec`]).
    None,
    /// [`LatticeCodec`] with `bits` per coordinate.
    Lattice {
        /// Bits per coordinate (2..=16).
        bits: u32,
    },
    /// [`QsgdCodec`] with `levels` positive levels.
    Qsgd {
        /// Levels `s` (1..=32767).
        levels: u32,
    },
    /// [`MinMaxCodec`].
    MinMax {
        /// Bits per coordinate (1..=8).
        bits: u32,
        /// Rounding mode.
        rounding: Rounding,
    },
    /// [`SignCodec`].
    Sign,
    /// [`TernGradCodec`].
    TernGrad,
    /// [`SparseCodec`]: keep `fraction` of the coordinates, then optionally quantize them.
    Sparse {
        /// Top-k or rand-k.
        method: Sparsifier,
        /// Fraction kept, in (0, 1].
        fraction: f64,
        /// Quantizer of the kept values (`None`: raw f32).
        then: Option<Box<CodecSpec>>,
    },
    /// [`ErrorFeedback`] around another codec.
    ErrorFeedback(Box<CodecSpec>),
}

fn bad(spec: &str, reason: impl Into<String>) -> QuantError {
    QuantError::BadSpec {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

fn parse_int(
    spec: &str,
    arg: Option<&str>,
    what: &str,
    range: (u32, u32),
) -> Result<u32, QuantError> {
    let a = arg.ok_or_else(|| bad(spec, format!("missing {what}")))?;
    let v: u32 = a
        .trim()
        .parse()
        .map_err(|_| bad(spec, format!("{what} {a:?} is not an integer")))?;
    if v < range.0 || v > range.1 {
        return Err(bad(
            spec,
            format!("{what} {v} not in {}..={}", range.0, range.1),
        ));
    }
    Ok(v)
}

fn parse_atom(s: &str) -> Result<CodecSpec, QuantError> {
    let s = s.trim();
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let arg = parts.next();
    let arg2 = parts.next();
    if parts.next().is_some() {
        return Err(bad(s, "too many ':'-separated fields"));
    }
    let no_args = |spec: CodecSpec| {
        if arg.is_some() {
            Err(bad(s, format!("{name} takes no parameter")))
        } else {
            Ok(spec)
        }
    };
    let no_arg2 = || {
        if arg2.is_some() {
            Err(bad(s, format!("{name} takes one parameter")))
        } else {
            Ok(())
        }
    };
    match name.as_str() {
        "none" | "f32" => no_args(CodecSpec::None),
        "sign" => no_args(CodecSpec::Sign),
        "terngrad" => no_args(CodecSpec::TernGrad),
        "lattice" => {
            no_arg2()?;
            Ok(CodecSpec::Lattice { bits: parse_int(s, arg, "bits", (2, 16))? })
        }
        "qsgd" => {
            no_arg2()?;
            Ok(CodecSpec::Qsgd { levels: parse_int(s, arg, "levels", (1, 32767))? })
        }
        "minmax" => {
            let bits = parse_int(s, arg, "bits", (1, 8))?;
            let rounding = match arg2.map(|a| a.trim().to_ascii_lowercase()).as_deref() {
                None | Some("nearest") => Rounding::Nearest,
                Some("stochastic") | Some("stoch") => Rounding::Stochastic,
                Some(o) => return Err(bad(s, format!("rounding {o:?} is not nearest|stochastic"))),
            };
            Ok(CodecSpec::MinMax { bits, rounding })
        }
        "topk" | "randk" => {
            no_arg2()?;
            let a = arg.ok_or_else(|| bad(s, "missing fraction"))?;
            let fraction: f64 =
                a.trim().parse().map_err(|_| bad(s, format!("fraction {a:?} is not a number")))?;
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(bad(s, format!("fraction {fraction} not in (0, 1]")));
            }
            let method = if name == "topk" { Sparsifier::TopK } else { Sparsifier::RandK };
            Ok(CodecSpec::Sparse { method, fraction, then: None })
        }
        "" => Err(bad(s, "empty codec name")),
        other => Err(bad(
            s,
            format!(
                "unknown codec {other:?} (expected none|lattice|qsgd|minmax|sign|terngrad|topk|randk)"
            ),
        )),
    }
}

impl FromStr for CodecSpec {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, QuantError> {
        let t = s.trim();
        if let Some(inner) = t.strip_prefix("ef(").and_then(|r| r.strip_suffix(')')) {
            return Ok(CodecSpec::ErrorFeedback(Box::new(parse_plain(inner)?)));
        }
        if let Some(inner) = t.strip_suffix("+ef") {
            return Ok(CodecSpec::ErrorFeedback(Box::new(parse_plain(inner)?)));
        }
        parse_plain(t)
    }
}

fn parse_plain(s: &str) -> Result<CodecSpec, QuantError> {
    let parts: Vec<&str> = s.split('+').collect();
    match parts.as_slice() {
        [one] => parse_atom(one),
        [first, second] => {
            let CodecSpec::Sparse {
                method, fraction, ..
            } = parse_atom(first)?
            else {
                return Err(bad(s, "only a sparsifier (topk|randk) may come before '+'"));
            };
            let then = match parse_atom(second)? {
                CodecSpec::None => None,
                CodecSpec::Sparse { .. } => {
                    return Err(bad(s, "a sparsifier cannot follow a sparsifier"))
                }
                q => Some(Box::new(q)),
            };
            Ok(CodecSpec::Sparse {
                method,
                fraction,
                then,
            })
        }
        _ => Err(bad(
            s,
            "at most one '+' (sparsifier+quantizer), plus an optional '+ef'",
        )),
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecSpec::None => write!(f, "none"),
            CodecSpec::Lattice { bits } => write!(f, "lattice:{bits}"),
            CodecSpec::Qsgd { levels } => write!(f, "qsgd:{levels}"),
            CodecSpec::MinMax {
                bits,
                rounding: Rounding::Nearest,
            } => write!(f, "minmax:{bits}"),
            CodecSpec::MinMax {
                bits,
                rounding: Rounding::Stochastic,
            } => {
                write!(f, "minmax:{bits}:stochastic")
            }
            CodecSpec::Sign => write!(f, "sign"),
            CodecSpec::TernGrad => write!(f, "terngrad"),
            CodecSpec::Sparse {
                method,
                fraction,
                then,
            } => {
                let m = match method {
                    Sparsifier::TopK => "topk",
                    Sparsifier::RandK => "randk",
                };
                write!(f, "{m}:{fraction}")?;
                if let Some(t) = then {
                    write!(f, "+{t}")?;
                }
                Ok(())
            }
            CodecSpec::ErrorFeedback(inner) => write!(f, "ef({inner})"),
        }
    }
}

impl CodecSpec {
    /// Builds the codec. `seed` drives dither and stochastic rounding; nodes that must agree
    /// on nothing may use different seeds (every payload carries what its decoder needs).
    pub fn build(&self, seed: u64) -> Result<Box<dyn Codec>, QuantError> {
        Ok(match self {
            CodecSpec::None => Box::new(IdentityCodec),
            CodecSpec::Lattice { bits } => Box::new(LatticeCodec::new(*bits, seed)?),
            CodecSpec::Qsgd { levels } => Box::new(QsgdCodec::new(*levels, seed)?),
            CodecSpec::MinMax { bits, rounding } => {
                Box::new(MinMaxCodec::new(*bits, *rounding, seed)?)
            }
            CodecSpec::Sign => Box::new(SignCodec::new()),
            CodecSpec::TernGrad => Box::new(TernGradCodec::new(seed)),
            CodecSpec::Sparse {
                method,
                fraction,
                then,
            } => {
                let inner = match then {
                    Some(t) => Some(t.build(mix64(seed ^ 0x1234_5678))?),
                    None => None,
                };
                Box::new(SparseCodec::new(*method, *fraction, inner, seed)?)
            }
            CodecSpec::ErrorFeedback(inner) => Box::new(ErrorFeedback::new(inner.build(seed)?)),
        })
    }

    /// Exact size in bytes of the payload this codec produces for a vector of `d` values.
    pub fn encoded_len(&self, d: usize) -> usize {
        let log2 = scalar::DEFAULT_BUCKET_LOG2;
        match self {
            CodecSpec::None => 8 + 4 * d,
            CodecSpec::Lattice { bits } => {
                LatticeCodec::encoded_len(*bits, LatticeCodec::DEFAULT_BUCKET_LOG2, d)
            }
            CodecSpec::Qsgd { levels } => QsgdCodec::encoded_len(*levels, log2, d),
            CodecSpec::MinMax { bits, .. } => MinMaxCodec::encoded_len(*bits, log2, d),
            CodecSpec::Sign => SignCodec::encoded_len(log2, d),
            CodecSpec::TernGrad => TernGradCodec::encoded_len(log2, d),
            CodecSpec::Sparse { fraction, then, .. } => {
                let k = sparse_k(d, *fraction);
                let values = match then {
                    Some(t) => t.encoded_len(k),
                    None => 4 * k,
                };
                SparseCodec::encoded_len(d, *fraction, values)
            }
            CodecSpec::ErrorFeedback(inner) => inner.encoded_len(d),
        }
    }

    /// Payload bits per coordinate for a vector of `d` values (headers and per-bucket
    /// parameters included), for reporting.
    pub fn bits_per_coordinate(&self, d: usize) -> f64 {
        if d == 0 {
            return 0.0;
        }
        8.0 * self.encoded_len(d) as f64 / d as f64
    }
}
