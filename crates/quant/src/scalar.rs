//! Bucketed scalar quantizers: min-max, scaled sign, TernGrad and QSGD.
//!
//! Each payload is the common header, 4 codec bytes (bucket size as log2 and per-codec fields),
//! an array of per-bucket f32 parameters, and the bit-packed codes:
//! `size = 12 + 4 * params_per_bucket * ceil(d / bucket) + ceil(d * bits / 8)`.

use crate::bits::{
    decode_blocks, decode_map, dispatch_width, encode_blocks, encode_map, packed_len, staged,
    DecodeKernel, EncodeKernel, BLOCK,
};
use crate::rng::{nonce, LaneRng};
use crate::simd::Stream;
use crate::stats::{max_abs, min_max, round_f, round_i, sum_abs, sum_sq};
use crate::wire::{
    check_header, f32_at, len_u32, put_f32_at, put_header, size_output, Kind, Reader, COMMON_HEADER,
};
use crate::{Codec, DecodeReport, QuantError};

/// Header bytes of every scalar codec.
pub const SCALAR_HEADER: usize = COMMON_HEADER + 4;

/// Default bucket size (log2) of the scalar codecs: 512 coordinates.
pub const DEFAULT_BUCKET_LOG2: u32 = 9;

fn check_bucket_log2(log2: u32) -> Result<(), QuantError> {
    if (6..=20).contains(&log2) {
        Ok(())
    } else {
        Err(QuantError::InvalidParameter(format!(
            "bucket log2 {log2} not in 6..=20"
        )))
    }
}

/// Exact payload size of a bucketed scalar codec.
fn scalar_len(d: usize, log2: u32, params: usize, bits: u32) -> usize {
    SCALAR_HEADER + 4 * params * d.div_ceil(1 << log2) + packed_len(d, bits)
}

/// Splits a freshly sized output into header, parameter and code regions.
fn regions(out: &mut [u8], nparam_bytes: usize) -> (&mut [u8], &mut [u8], &mut [u8]) {
    let (head, rest) = out.split_at_mut(SCALAR_HEADER);
    let (params, codes) = rest.split_at_mut(nparam_bytes);
    (head, params, codes)
}

/// Runs the per-bucket encode: `prep` computes a bucket's parameters (written to the params
/// region) and kernel constants; `kernel` produces a block of codes.
#[inline(always)]
fn encode_bucketed<const B: usize, const P: usize, K>(
    x: &[f32],
    bucket: usize,
    params: &mut [u8],
    codes: &mut [u8],
    mut prep: impl FnMut(&[f32]) -> Result<([f32; P], K), QuantError>,
    mut kernel: impl FnMut(&K, &[f32; BLOCK], &mut [u32; BLOCK]),
) -> Result<(), QuantError> {
    crate::simd::run(
        #[inline(always)]
        move || {
            let bucket_bytes = bucket * B / 8;
            for (b, (xb, cb)) in x
                .chunks(bucket)
                .zip(codes.chunks_mut(bucket_bytes))
                .enumerate()
            {
                let (p, k) = prep(xb)?;
                for (j, v) in p.iter().enumerate() {
                    put_f32_at(params, b * P + j, *v);
                }
                encode_blocks::<B>(
                    xb,
                    cb,
                    #[inline(always)]
                    |_, xs, cs| kernel(&k, xs, cs),
                );
            }
            Ok(())
        },
    )
}

/// Runs the per-bucket decode: `prep` validates a bucket's parameters and returns kernel
/// constants; `kernel` turns a block of codes into values.
#[inline(always)]
fn decode_bucketed<const B: usize, const P: usize, K>(
    codes: &[u8],
    params: &[u8],
    bucket: usize,
    out: &mut [f32],
    mut prep: impl FnMut([f32; P]) -> Result<K, QuantError>,
    mut kernel: impl FnMut(&K, &[u32; BLOCK], &mut [f32; BLOCK]),
) -> Result<(), QuantError> {
    crate::simd::run(
        #[inline(always)]
        move || {
            let bucket_bytes = bucket * B / 8;
            for (b, (ob, cb)) in out
                .chunks_mut(bucket)
                .zip(codes.chunks(bucket_bytes))
                .enumerate()
            {
                let mut p = [0f32; P];
                for (j, v) in p.iter_mut().enumerate() {
                    *v = f32_at(params, b * P + j);
                }
                let k = prep(p)?;
                decode_blocks::<B>(
                    cb,
                    &[],
                    ob,
                    #[inline(always)]
                    |_, cs, _, os| kernel(&k, cs, os),
                );
            }
            Ok(())
        },
    )
}

/// [`encode_bucketed`] with a per-coordinate kernel (one per bucket, from `prep`), whose codes
/// are packed as they are produced.
#[inline(always)]
fn encode_bucketed_map<const B: usize, const P: usize, K: EncodeKernel>(
    x: &[f32],
    bucket: usize,
    params: &mut [u8],
    codes: &mut [u8],
    mut prep: impl FnMut(&[f32]) -> Result<([f32; P], K), QuantError>,
) -> Result<(), QuantError> {
    // The 1-bit vertical layout packs 4 lanes of 16-bit words: compiled for 16 lanes it ran
    // slower than at the SSE2 baseline (15-17 vs 21 GB/s cache-resident, Zen 4), so width 1
    // keeps the baseline loop (its output streaming still follows the detected level).
    let max = if B == 1 {
        crate::simd::Level::Sse2
    } else {
        crate::simd::Level::Avx512
    };
    crate::simd::run_max(
        max,
        #[inline(always)]
        move || {
            let bucket_bytes = bucket * B / 8;
            let mut stream = Stream::for_footprint(4 * x.len() + codes.len());
            for (b, (xb, cb)) in x
                .chunks(bucket)
                .zip(codes.chunks_mut(bucket_bytes))
                .enumerate()
            {
                let (p, mut k) = prep(xb)?;
                for (j, v) in p.iter().enumerate() {
                    put_f32_at(params, b * P + j, *v);
                }
                let ahead = x.get((b + 1) * bucket..).unwrap_or(&[]);
                encode_map::<B, K>(
                    xb,
                    cb,
                    &ahead[..ahead.len().min(bucket)],
                    &mut k,
                    stream.as_mut(),
                );
            }
            Ok(())
        },
    )
}

/// [`decode_bucketed`] with a per-coordinate kernel (one per bucket, from `prep`), fed straight
/// from the packed words.
#[inline(always)]
fn decode_bucketed_map<const B: usize, const P: usize, K: DecodeKernel>(
    codes: &[u8],
    params: &[u8],
    bucket: usize,
    out: &mut [f32],
    mut prep: impl FnMut([f32; P]) -> Result<K, QuantError>,
) -> Result<(), QuantError> {
    crate::simd::run(
        #[inline(always)]
        move || {
            let bucket_bytes = bucket * B / 8;
            let mut stream = Stream::for_footprint(4 * out.len() + codes.len());
            let mut piece = piece_fn(
                #[inline(always)]
                |b0: usize, piece: &mut [f32], mut st: Option<&mut Stream>| {
                    let codes = codes.get(b0 * bucket_bytes..).unwrap_or(&[]);
                    for (i, (ob, cb)) in piece
                        .chunks_mut(bucket)
                        .zip(codes.chunks(bucket_bytes))
                        .enumerate()
                    {
                        let b = b0 + i;
                        let mut p = [0f32; P];
                        for (j, v) in p.iter_mut().enumerate() {
                            *v = f32_at(params, b * P + j);
                        }
                        let mut k = prep(p)?;
                        decode_map::<B, K>(cb, &[], ob, &mut k, st.as_deref_mut());
                    }
                    Ok(())
                },
            );
            match stream.as_mut() {
                // Streaming stores make the output stage pointless.
                Some(st) => piece(0, out, Some(st)),
                None => staged(
                    out,
                    bucket,
                    #[inline(always)]
                    |b0, p| piece(b0, p, None),
                ),
            }
        },
    )
}

/// Fixes the signature of a piece decoder (so that its closure can carry `#[inline(always)]`).
#[inline(always)]
fn piece_fn<F>(f: F) -> F
where
    F: FnMut(usize, &mut [f32], Option<&mut Stream>) -> Result<(), QuantError>,
{
    f
}

/// A parsed scalar payload: bucket log2, codec byte, codec u16 field, parameters, codes.
type ScalarParts<'a> = (u32, u8, u16, &'a [u8], &'a [u8]);

/// Reads the 4 codec bytes and returns (bucket log2, byte1, u16 field) and the parameter and code
/// regions, after checking the total size.
fn read_scalar<'a>(
    bytes: &'a [u8],
    kind: Kind,
    d: usize,
    params_per_bucket: usize,
    bits_of: impl FnOnce(u8, u16) -> Result<u32, QuantError>,
) -> Result<ScalarParts<'a>, QuantError> {
    let mut r: Reader<'a> = check_header(bytes, kind, d)?;
    let log2 = r.u8()? as u32;
    let b1 = r.u8()?;
    let f = r.take(2)?;
    let f = u16::from_le_bytes([f[0], f[1]]);
    if !(6..=20).contains(&log2) {
        return Err(QuantError::BadHeader(format!(
            "bucket log2 {log2} out of range"
        )));
    }
    let bits = bits_of(b1, f)?;
    let nb = d.div_ceil(1 << log2);
    let params = r.take(4 * params_per_bucket * nb)?;
    let codes = r.take_exact_rest(packed_len(d, bits))?;
    Ok((log2, b1, f, params, codes))
}

fn check_finite_param(v: f32, what: &str) -> Result<(), QuantError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(QuantError::Corrupt(format!(
            "{what} {v} is not a finite non-negative number"
        )))
    }
}

/// Rounding mode of [`MinMaxCodec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Round to the nearest level: deterministic, error at most half a step, biased.
    #[default]
    Nearest,
    /// Round up with probability equal to the fractional part: unbiased, error below one step.
    Stochastic,
}

/// Uniform min-max quantizer: per bucket, `b` bits (1..=8) spread evenly between the bucket's
/// minimum and maximum. Bucket parameters: minimum and step (`(max - min) / (2^b - 1)`).
///
/// Nearest rounding errs by at most `step/2`; stochastic rounding is unbiased with per-coordinate
/// variance `step^2 p (1-p) <= step^2 / 4` (`p` the fractional position between two levels).
#[derive(Debug, Clone)]
pub struct MinMaxCodec {
    bits: u32,
    bucket_log2: u32,
    rounding: Rounding,
    seed: u64,
    counter: u64,
}

impl MinMaxCodec {
    /// `bits` per coordinate (1..=8), buckets of 512, the given rounding; `seed` drives
    /// stochastic rounding.
    pub fn new(bits: u32, rounding: Rounding, seed: u64) -> Result<Self, QuantError> {
        if !(1..=8).contains(&bits) {
            return Err(QuantError::InvalidParameter(format!(
                "minmax bits {bits} not in 1..=8"
            )));
        }
        Ok(MinMaxCodec {
            bits,
            bucket_log2: DEFAULT_BUCKET_LOG2,
            rounding,
            seed,
            counter: 0,
        })
    }

    /// Sets the bucket size to `2^log2` coordinates (6..=20).
    pub fn with_bucket_log2(mut self, log2: u32) -> Result<Self, QuantError> {
        check_bucket_log2(log2)?;
        self.bucket_log2 = log2;
        Ok(self)
    }

    /// Exact payload size for `d` values.
    pub fn encoded_len(bits: u32, bucket_log2: u32, d: usize) -> usize {
        scalar_len(d, bucket_log2, 2, bits)
    }
}

/// Per-bucket constants of the min-max kernels.
struct MinMaxK {
    lo: f32,
    inv: f32,
    qmax: f32,
}

impl EncodeKernel for MinMaxK {
    #[inline(always)]
    fn begin(&mut self, _: usize) {}

    #[inline(always)]
    fn code_block(&mut self, xs: &[f32; BLOCK], codes: &mut [u32; BLOCK]) {
        for (c, &x) in codes.iter_mut().zip(xs) {
            // In [0, qmax + 2^-14] (see `minmax_prep`): rounds into 0..=qmax unclamped.
            *c = round_i((x - self.lo) * self.inv);
        }
    }
}

/// Decoder of a min-max bucket: `lo + c * step`.
struct MinMaxD {
    lo: f32,
    step: f32,
}

impl DecodeKernel for MinMaxD {
    #[inline(always)]
    fn begin(&mut self, _: usize) {}

    #[inline(always)]
    fn value_block(&mut self, codes: &[u32; BLOCK], _: &[f32; BLOCK], os: &mut [f32; BLOCK]) {
        for (o, &c) in os.iter_mut().zip(codes) {
            *o = self.lo + c as i32 as f32 * self.step;
        }
    }
}

/// Scaled-sign encoder: the sign bit.
struct SignE;

impl EncodeKernel for SignE {
    #[inline(always)]
    fn begin(&mut self, _: usize) {}

    #[inline(always)]
    fn code_block(&mut self, xs: &[f32; BLOCK], codes: &mut [u32; BLOCK]) {
        for (c, x) in codes.iter_mut().zip(xs) {
            *c = x.to_bits() >> 31;
        }
    }
}

/// Scaled-sign decoder: the scale's bits with the sign bit set from the code.
struct SignD(u32);

impl DecodeKernel for SignD {
    #[inline(always)]
    fn begin(&mut self, _: usize) {}

    #[inline(always)]
    fn value_block(&mut self, codes: &[u32; BLOCK], _: &[f32; BLOCK], os: &mut [f32; BLOCK]) {
        for (o, &c) in os.iter_mut().zip(codes) {
            *o = f32::from_bits(self.0 | (c << 31));
        }
    }
}

#[inline(always)]
fn minmax_prep(xb: &[f32], qmax: f32) -> Result<([f32; 2], MinMaxK), QuantError> {
    let (lo, hi, finite) = min_max(xb);
    if !finite {
        return Err(QuantError::NonFinite);
    }
    let step = (hi - lo) / qmax;
    if !step.is_finite() {
        return Err(QuantError::InvalidParameter(
            "bucket range overflows f32".into(),
        ));
    }
    // A subnormal step is raised to the smallest normal one, so that `1/step` is finite: then
    // `0 <= (x - lo) / step <= qmax * (1 + 2^-22)` for every x of the bucket, and the nearest
    // kernel needs no clamping.
    let step = if step > 0.0 {
        step.max(f32::MIN_POSITIVE)
    } else {
        step
    };
    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
    Ok(([lo, step], MinMaxK { lo, inv, qmax }))
}

fn minmax_encode<const B: usize>(
    x: &[f32],
    bucket: usize,
    rounding: Rounding,
    seed: u64,
    params: &mut [u8],
    codes: &mut [u8],
) -> Result<(), QuantError> {
    let qmax = ((1u32 << B) - 1) as f32;
    match rounding {
        Rounding::Nearest => encode_bucketed_map::<B, 2, MinMaxK>(
            x,
            bucket,
            params,
            codes,
            #[inline(always)]
            |xb| minmax_prep(xb, qmax),
        ),
        Rounding::Stochastic => {
            let mut rng = LaneRng::new(seed);
            encode_bucketed::<B, 2, MinMaxK>(
                x,
                bucket,
                params,
                codes,
                #[inline(always)]
                |xb| minmax_prep(xb, qmax),
                #[inline(always)]
                |k, xs, cs| {
                    let mut u = [0f32; BLOCK];
                    rng.fill(&mut u);
                    for ((c, &v), &r) in cs.iter_mut().zip(xs.iter()).zip(u.iter()) {
                        let t = (v - k.lo) * k.inv + (r - 0.5);
                        let t = if t > 0.0 { t } else { 0.0 };
                        let t = if t < k.qmax { t } else { k.qmax };
                        *c = round_i(t);
                    }
                },
            )
        }
    }
}

fn minmax_decode<const B: usize>(
    codes: &[u8],
    params: &[u8],
    bucket: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    decode_bucketed_map::<B, 2, MinMaxD>(
        codes,
        params,
        bucket,
        out,
        #[inline(always)]
        |[lo, step]| {
            if !lo.is_finite() {
                return Err(QuantError::Corrupt(format!("bucket minimum {lo}")));
            }
            check_finite_param(step, "bucket step")?;
            Ok(MinMaxD { lo, step })
        },
    )
}

impl Codec for MinMaxCodec {
    fn name(&self) -> String {
        match self.rounding {
            Rounding::Nearest => format!("minmax:{}", self.bits),
            Rounding::Stochastic => format!("minmax:{}:stochastic", self.bits),
        }
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let bucket = 1usize << self.bucket_log2;
        self.counter = self.counter.wrapping_add(1);
        let seed = nonce(self.seed, self.counter);
        size_output(out, Self::encoded_len(self.bits, self.bucket_log2, x.len()));
        let (head, params, codes) = regions(out, 8 * x.len().div_ceil(bucket));
        let r = dispatch_width!(
            self.bits,
            minmax_encode(x, bucket, self.rounding, seed, params, codes),
            Err(QuantError::InvalidParameter("bits".into()))
        );
        if let Err(e) = r {
            out.clear();
            return Err(e);
        }
        put_header(head, Kind::MinMax, len);
        head[8] = self.bucket_log2 as u8;
        head[9] = self.bits as u8;
        head[10] = (self.rounding == Rounding::Stochastic) as u8;
        head[11] = 0;
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        _reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let (log2, bits, _, params, codes) =
            read_scalar(bytes, Kind::MinMax, out.len(), 2, |b, f| {
                if (1..=8).contains(&b) && f <= 1 {
                    Ok(b as u32)
                } else {
                    Err(QuantError::BadHeader(format!(
                        "minmax bits {b} / rounding {f}"
                    )))
                }
            })?;
        let bucket = 1usize << log2;
        dispatch_width!(bits, minmax_decode(codes, params, bucket, out), Ok(()))?;
        Ok(DecodeReport::default())
    }
}

/// Scaled sign (1-bit) quantizer: per bucket, the sign of each coordinate and one scale, the
/// bucket's mean magnitude, so that the decoded bucket has the input's L1 norm
/// (as in signSGD with error feedback, Karimireddy et al. 2019). Biased; pair it with
/// [`ErrorFeedback`](crate::ErrorFeedback).
#[derive(Debug, Clone)]
pub struct SignCodec {
    bucket_log2: u32,
}

impl Default for SignCodec {
    fn default() -> Self {
        SignCodec {
            bucket_log2: DEFAULT_BUCKET_LOG2,
        }
    }
}

impl SignCodec {
    /// A sign codec with buckets of 512.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the bucket size to `2^log2` coordinates (6..=20).
    pub fn with_bucket_log2(mut self, log2: u32) -> Result<Self, QuantError> {
        check_bucket_log2(log2)?;
        self.bucket_log2 = log2;
        Ok(self)
    }

    /// Exact payload size for `d` values.
    pub fn encoded_len(bucket_log2: u32, d: usize) -> usize {
        scalar_len(d, bucket_log2, 1, 1)
    }
}

impl Codec for SignCodec {
    fn name(&self) -> String {
        "sign".into()
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let bucket = 1usize << self.bucket_log2;
        size_output(out, Self::encoded_len(self.bucket_log2, x.len()));
        let (head, params, codes) = regions(out, 4 * x.len().div_ceil(bucket));
        let r = encode_bucketed_map::<1, 1, SignE>(
            x,
            bucket,
            params,
            codes,
            #[inline(always)]
            |xb| {
                let s = sum_abs(xb);
                if !s.is_finite() {
                    return Err(QuantError::NonFinite);
                }
                Ok(([s / xb.len() as f32], SignE))
            },
        );
        if let Err(e) = r {
            out.clear();
            return Err(e);
        }
        put_header(head, Kind::Sign, len);
        head[8] = self.bucket_log2 as u8;
        head[9..12].fill(0);
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        _reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let (log2, _, _, params, codes) = read_scalar(bytes, Kind::Sign, out.len(), 1, |b, f| {
            if b == 0 && f == 0 {
                Ok(1)
            } else {
                Err(QuantError::BadHeader("sign reserved bytes not zero".into()))
            }
        })?;
        decode_bucketed_map::<1, 1, SignD>(
            codes,
            params,
            1 << log2,
            out,
            #[inline(always)]
            |[s]| {
                check_finite_param(s, "sign scale")?;
                Ok(SignD(s.to_bits()))
            },
        )?;
        Ok(DecodeReport::default())
    }
}

/// TernGrad (Wen et al. 2017): per bucket `s = max |x|`, and each coordinate becomes
/// `s * sign(x) * Bernoulli(|x| / s)`, in 2 bits. Unbiased, with per-coordinate variance
/// `|x| (s - |x|) <= s^2 / 4`.
#[derive(Debug, Clone)]
pub struct TernGradCodec {
    bucket_log2: u32,
    seed: u64,
    counter: u64,
}

impl TernGradCodec {
    /// A TernGrad codec with buckets of 512 and randomness from `seed`.
    pub fn new(seed: u64) -> Self {
        TernGradCodec {
            bucket_log2: DEFAULT_BUCKET_LOG2,
            seed,
            counter: 0,
        }
    }

    /// Sets the bucket size to `2^log2` coordinates (6..=20).
    pub fn with_bucket_log2(mut self, log2: u32) -> Result<Self, QuantError> {
        check_bucket_log2(log2)?;
        self.bucket_log2 = log2;
        Ok(self)
    }

    /// Exact payload size for `d` values.
    pub fn encoded_len(bucket_log2: u32, d: usize) -> usize {
        scalar_len(d, bucket_log2, 1, 2)
    }
}

impl Codec for TernGradCodec {
    fn name(&self) -> String {
        "terngrad".into()
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let bucket = 1usize << self.bucket_log2;
        self.counter = self.counter.wrapping_add(1);
        let mut rng = LaneRng::new(nonce(self.seed, self.counter));
        size_output(out, Self::encoded_len(self.bucket_log2, x.len()));
        let (head, params, codes) = regions(out, 4 * x.len().div_ceil(bucket));
        let r = encode_bucketed::<2, 1, f32>(
            x,
            bucket,
            params,
            codes,
            #[inline(always)]
            |xb| {
                let s = max_abs(xb);
                if !s.is_finite() {
                    return Err(QuantError::NonFinite);
                }
                Ok(([s], if s > 0.0 { 1.0 / s } else { 0.0 }))
            },
            #[inline(always)]
            |&inv, xs, cs| {
                let mut u = [0f32; BLOCK];
                rng.fill(&mut u);
                for ((c, v), &r) in cs.iter_mut().zip(xs.iter()).zip(u.iter()) {
                    let p = f32::from_bits(v.to_bits() & 0x7fff_ffff) * inv;
                    let m = (r < p) as u32;
                    let neg = v.to_bits() >> 31;
                    // 1 + m for positive, 1 - m for negative.
                    *c = 1 + m - 2 * (m & neg);
                }
            },
        );
        if let Err(e) = r {
            out.clear();
            return Err(e);
        }
        put_header(head, Kind::TernGrad, len);
        head[8] = self.bucket_log2 as u8;
        head[9..12].fill(0);
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        _reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let (log2, _, _, params, codes) =
            read_scalar(bytes, Kind::TernGrad, out.len(), 1, |b, f| {
                if b == 0 && f == 0 {
                    Ok(2)
                } else {
                    Err(QuantError::BadHeader(
                        "terngrad reserved bytes not zero".into(),
                    ))
                }
            })?;
        let mut bad = 0u32;
        decode_bucketed::<2, 1, f32>(
            codes,
            params,
            1 << log2,
            out,
            #[inline(always)]
            |[s]| {
                check_finite_param(s, "terngrad scale")?;
                Ok(s)
            },
            #[inline(always)]
            |&s, cs, os| {
                let mut b = 0;
                for (o, &c) in os.iter_mut().zip(cs.iter()) {
                    b |= c & (c >> 1);
                    *o = (c as i32 - 1) as f32 * s;
                }
                bad |= b;
            },
        )?;
        if bad != 0 {
            return Err(QuantError::Corrupt("terngrad code 3".into()));
        }
        Ok(DecodeReport::default())
    }
}

/// QSGD (Alistarh et al. 2017): per bucket the L2 norm, and each coordinate becomes
/// `norm * sign(x) * l / s` with `l` the stochastic rounding of `s |x| / norm` to `0..=s`.
/// Codes `s + sign * l` take `ceil(log2(2s + 1))` bits (s = 1: 2 bits, s = 7: 4 bits, s = 127:
/// 8 bits). Unbiased; per coordinate the variance is `(norm/s)^2 p (1-p) <= (norm/s)^2 / 4`, and
/// per bucket of `n` values `E||Q(x) - x||^2 <= min(n / s^2, sqrt(n) / s) ||x||^2`.
#[derive(Debug, Clone)]
pub struct QsgdCodec {
    levels: u32,
    bucket_log2: u32,
    seed: u64,
    counter: u64,
}

impl QsgdCodec {
    /// QSGD with `levels` (1..=32767) positive levels, buckets of 512, randomness from `seed`.
    pub fn new(levels: u32, seed: u64) -> Result<Self, QuantError> {
        if !(1..=32767).contains(&levels) {
            return Err(QuantError::InvalidParameter(format!(
                "qsgd levels {levels} not in 1..=32767"
            )));
        }
        Ok(QsgdCodec {
            levels,
            bucket_log2: DEFAULT_BUCKET_LOG2,
            seed,
            counter: 0,
        })
    }

    /// Sets the bucket size to `2^log2` coordinates (6..=20).
    pub fn with_bucket_log2(mut self, log2: u32) -> Result<Self, QuantError> {
        check_bucket_log2(log2)?;
        self.bucket_log2 = log2;
        Ok(self)
    }

    /// Bits per code for `levels`: `ceil(log2(2 * levels + 1))`.
    pub fn bits_for(levels: u32) -> u32 {
        32 - (2 * levels).leading_zeros()
    }

    /// Exact payload size for `d` values.
    pub fn encoded_len(levels: u32, bucket_log2: u32, d: usize) -> usize {
        scalar_len(d, bucket_log2, 1, Self::bits_for(levels))
    }
}

fn qsgd_encode<const B: usize>(
    x: &[f32],
    bucket: usize,
    levels: u32,
    seed: u64,
    params: &mut [u8],
    codes: &mut [u8],
) -> Result<(), QuantError> {
    let s = levels as f32;
    let mut rng = LaneRng::new(seed);
    encode_bucketed::<B, 1, f32>(
        x,
        bucket,
        params,
        codes,
        #[inline(always)]
        |xb| {
            let norm = sum_sq(xb).sqrt();
            if !norm.is_finite() {
                // Either a non-finite input or a bucket whose squares overflow.
                if xb.iter().all(|v| v.is_finite()) {
                    return Err(QuantError::InvalidParameter(
                        "bucket norm overflows f32".into(),
                    ));
                }
                return Err(QuantError::NonFinite);
            }
            Ok(([norm], if norm > 0.0 { s / norm } else { 0.0 }))
        },
        #[inline(always)]
        |&scale, xs, cs| {
            let mut u = [0f32; BLOCK];
            rng.fill(&mut u);
            for ((c, v), &r) in cs.iter_mut().zip(xs.iter()).zip(u.iter()) {
                let a = f32::from_bits(v.to_bits() & 0x7fff_ffff) * scale;
                let l = round_f(a + (r - 0.5));
                let l = if l > 0.0 { l } else { 0.0 };
                let l = if l < s { l } else { s };
                let signed = f32::from_bits(l.to_bits() | (v.to_bits() & 0x8000_0000));
                *c = round_i(signed + s);
            }
        },
    )
}

fn qsgd_decode<const B: usize>(
    codes: &[u8],
    params: &[u8],
    bucket: usize,
    levels: u32,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let s = levels as f32;
    let lim = 2 * levels as i32;
    let mut bad = 0u32;
    decode_bucketed::<B, 1, f32>(
        codes,
        params,
        bucket,
        out,
        #[inline(always)]
        |[norm]| {
            check_finite_param(norm, "qsgd norm")?;
            Ok(norm / s)
        },
        #[inline(always)]
        |&step, cs, os| {
            let mut b = 0;
            for (o, &c) in os.iter_mut().zip(cs.iter()) {
                let c = c as i32;
                b |= (c > lim) as u32;
                *o = (c as f32 - s) * step;
            }
            bad |= b;
        },
    )?;
    if bad != 0 {
        return Err(QuantError::Corrupt("qsgd code beyond 2 * levels".into()));
    }
    Ok(())
}

impl Codec for QsgdCodec {
    fn name(&self) -> String {
        format!("qsgd:{}", self.levels)
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let bucket = 1usize << self.bucket_log2;
        self.counter = self.counter.wrapping_add(1);
        let seed = nonce(self.seed, self.counter);
        let bits = Self::bits_for(self.levels);
        size_output(
            out,
            Self::encoded_len(self.levels, self.bucket_log2, x.len()),
        );
        let (head, params, codes) = regions(out, 4 * x.len().div_ceil(bucket));
        let r = dispatch_width!(
            bits,
            qsgd_encode(x, bucket, self.levels, seed, params, codes),
            Err(QuantError::InvalidParameter("bits".into()))
        );
        if let Err(e) = r {
            out.clear();
            return Err(e);
        }
        put_header(head, Kind::Qsgd, len);
        head[8] = self.bucket_log2 as u8;
        head[9] = 0;
        head[10..12].copy_from_slice(&(self.levels as u16).to_le_bytes());
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        _reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let (log2, _, levels, params, codes) =
            read_scalar(bytes, Kind::Qsgd, out.len(), 1, |b, f| {
                if b == 0 && (1..=32767).contains(&f) {
                    Ok(QsgdCodec::bits_for(f as u32))
                } else {
                    Err(QuantError::BadHeader(format!("qsgd levels {f}")))
                }
            })?;
        let levels = levels as u32;
        dispatch_width!(
            QsgdCodec::bits_for(levels),
            qsgd_decode(codes, params, 1 << log2, levels, out),
            Ok(())
        )?;
        Ok(DecodeReport::default())
    }
}
