//! The lattice (modulo) quantizer of Davies et al., "New Bounds for Distributed Mean Estimation
//! and Variance Reduction" (arXiv 2002.09268), in its cubic-lattice form.
//!
//! # Scheme
//! With `q = 2^b` and step `eps`, the writer sends, per coordinate,
//! `c = round(x/eps + v) mod q`, where `v` is a dither in `[0, 2)` shared with every reader
//! through a 64-bit nonce in the header. A reader holding its own vector `y` decodes the lattice
//! point congruent to `c` nearest to `y`: `k' = c + q * round((y/eps + v - c) / q)` and
//! `x' = (k' - v) * eps`. The dither is subtractive, so `x' - x` is uniform in `[-eps/2, eps/2]`
//! and unbiased whenever the decode is correct.
//!
//! Decoding is correct (`k' = k`) whenever `|y/eps + v - k| < q/2`, which holds for every
//! coordinate with `|x - y| < (q - 1)/2 * eps` (up to f32 rounding of about `2^-4 * eps`). The
//! error of a correct decode is at most `eps/2` plus f32 rounding (the encoder keeps
//! `|x|/eps < 2^20`, so that rounding is below `eps/8`).
//!
//! # Step adaptation
//! [`Codec::observe_distance`] with the largest observed `||x - y||_inf = D` sets
//! `eps = SAFETY * D / ((q - 1)/2)` with a default safety factor of 2 (so `q*eps/2` is about twice
//! the observed distance). Before any observation the codec assumes `D = 2 ||x||_inf`. The step is
//! floored so that `|x|/eps < 2^20` (f32 precision is exhausted below that anyway): an encode that
//! finds a larger value redoes itself with a larger step. The step used is in the header.
//!
//! # Failure detection
//! A wrong decode of coordinate `i` gives `k'_i = k_i + m_i q` with `m_i != 0`, that is, a wrong
//! wrap count `h_i = k_i >> b` (`h'_i = h_i + m_i`). For every bucket the encoder sends
//! `C = sum_i (h_i + w_i * (h_i mod 2)) mod 2^32`, with uniform 32-bit weights `w_i` drawn from
//! the payload's nonce (the sum runs over the bucket padded to a multiple of 64 coordinates; the
//! padding has `h = 0` on both sides). The decoder computes the same sum from its `h'_i` and
//! counts a mismatch in [`DecodeReport::failed_buckets`]. No multiplication is involved, so the
//! check costs a few SSE2 shifts, ands and adds per 4 coordinates.
//! - If some `m_i` is odd, the parity of `h_i` flips, so `w_i` enters the sum on exactly one
//!   side: for a failure pattern that does not depend on the nonce, the failure goes unreported
//!   with probability `2^-32` over `w_i` alone.
//! - If every `m_i` is even, the weighted part is unchanged and the failure is reported exactly
//!   when `sum_i m_i != 0 mod 2^32` (for instance every single-coordinate failure); failures by
//!   even multiples of `q` that cancel (`+2q` here, `-2q` there) go unreported.
//!
//! A correct decode is never reported as failed.

use crate::bits::{decode_map, dispatch_width, encode_map, packed_len, BLOCK};
use crate::rng::{mix64, nonce, unit_f32};
use crate::simd::Stream;
use crate::stats::{max_abs, MAGIC, MAGIC_BITS};
use crate::wire::{
    check_header, f32_at, len_u32, put_f32_at, put_header, size_output, Kind, COMMON_HEADER,
};
use crate::{Codec, DecodeReport, QuantError};

/// Bytes of header: common header + bits, log2(bucket), 2 reserved, eps (f32), nonce (u64).
pub const LATTICE_HEADER: usize = COMMON_HEADER + 16;
/// Largest `|x| / eps` the encoder accepts before raising `eps`.
const LIMIT: f32 = 1_048_576.0;
/// Smallest step ever used (keeps `1/eps` finite).
const MIN_EPS: f32 = 1e-30;
/// Largest step ever used.
const MAX_EPS: f32 = 1e36;

/// Lattice (modulo) quantizer with shared dither, distance-adaptive step and per-bucket failure
/// detection. See the [module documentation](self) for the scheme and its guarantees.
#[derive(Debug, Clone)]
pub struct LatticeCodec {
    bits: u32,
    bucket_log2: u32,
    seed: u64,
    counter: u64,
    safety: f32,
    target_eps: Option<f32>,
    last_max_abs: f32,
    last_eps: f32,
    dither: Vec<f32>,
    weights: Vec<u32>,
}

impl LatticeCodec {
    /// Default bucket size (coordinates per integrity check), as log2.
    pub const DEFAULT_BUCKET_LOG2: u32 = 10;
    /// Default safety factor of the step over the observed distance.
    pub const DEFAULT_SAFETY: f32 = 2.0;

    /// A codec with `bits` bits per coordinate (2..=16), buckets of 1024 coordinates, and dither
    /// nonces derived from `seed`.
    pub fn new(bits: u32, seed: u64) -> Result<Self, QuantError> {
        if !(2..=16).contains(&bits) {
            return Err(QuantError::InvalidParameter(format!(
                "lattice bits {bits} not in 2..=16"
            )));
        }
        Ok(LatticeCodec {
            bits,
            bucket_log2: Self::DEFAULT_BUCKET_LOG2,
            seed,
            counter: 0,
            safety: Self::DEFAULT_SAFETY,
            target_eps: None,
            last_max_abs: 0.0,
            last_eps: 0.0,
            dither: Vec::new(),
            weights: Vec::new(),
        })
    }

    /// Sets the bucket size to `2^log2` coordinates (6..=16).
    pub fn with_bucket_log2(mut self, log2: u32) -> Result<Self, QuantError> {
        if !(6..=16).contains(&log2) {
            return Err(QuantError::InvalidParameter(format!(
                "lattice bucket log2 {log2} not in 6..=16"
            )));
        }
        self.bucket_log2 = log2;
        Ok(self)
    }

    /// Sets the safety factor: the step is chosen so that `(q-1)/2 * eps = safety * distance`.
    pub fn with_safety(mut self, safety: f32) -> Result<Self, QuantError> {
        if !(safety.is_finite() && safety > 0.0) {
            return Err(QuantError::InvalidParameter(format!(
                "lattice safety {safety} not > 0"
            )));
        }
        self.safety = safety;
        Ok(self)
    }

    /// Fixes the step to `eps` until the next [`Codec::observe_distance`] (the f32-precision
    /// floor still applies).
    pub fn set_eps(&mut self, eps: f32) {
        if eps.is_finite() && eps > 0.0 {
            self.target_eps = Some(eps);
        }
    }

    /// Bits per coordinate.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The step of the last encode (0 before any).
    pub fn last_eps(&self) -> f32 {
        self.last_eps
    }

    /// Largest `||x - y||_inf` for which decoding the last encode is guaranteed correct
    /// (`((q-1)/2 - 1/8) * eps`, leaving room for f32 rounding).
    pub fn last_safe_distance(&self) -> f32 {
        let q = (1u32 << self.bits) as f32;
        ((q - 1.0) / 2.0 - 0.125) * self.last_eps
    }

    /// Exact payload size for a vector of `d` values.
    pub fn encoded_len(bits: u32, bucket_log2: u32, d: usize) -> usize {
        LATTICE_HEADER + 4 * d.div_ceil(1 << bucket_log2) + packed_len(d, bits)
    }

    fn q(&self) -> f32 {
        (1u32 << self.bits) as f32
    }
}

/// Dither table (uniforms in [0,1)) and check weights (uniform 32-bit) for one nonce.
fn tables(nonce: u64, n: usize, dither: &mut Vec<f32>, weights: &mut Vec<u32>) {
    dither.clear();
    weights.clear();
    let base = mix64(nonce ^ 0x5851_F42D_4C95_7F2D);
    for i in 0..n as u64 {
        let r = mix64(base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        dither.push(unit_f32(r));
        weights.push(r as u32);
    }
}

/// Per-bucket dither offset in [0,1).
fn bucket_offset(nonce: u64, b: usize) -> f32 {
    unit_f32(mix64(nonce.wrapping_add(
        (b as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
    )))
}

/// Why an encode attempt stopped.
enum Stop {
    /// A value is too large for the step: raise it.
    Retry,
    NonFinite,
}

struct EncodeArgs<'a> {
    x: &'a [f32],
    bucket: usize,
    nonce: u64,
    eps: f32,
    dither: &'a [f32],
    weights: &'a [u32],
}

/// Fixed-size view of `BLOCK` table entries at `base`.
#[inline(always)]
fn block_of<T>(t: &[T], base: usize) -> Option<&[T; BLOCK]> {
    t.get(base..base + BLOCK).and_then(|s| s.try_into().ok())
}

/// `t = round(z) + 2^21` from the bits of `z + MAGIC`: in `0..2^22` exactly when
/// `|round(z)| < 2^21`; its low `B` bits are the code and `t >> B` is the wrap count plus
/// `2^(21-B)`.
const BIAS: u32 = (1u32 << 21).wrapping_sub(MAGIC_BITS);

/// One term of the bucket check for wrap count `h` (any constant offset with an even value
/// added to every `h` only shifts the sum): `h + w * (h mod 2)`.
#[inline(always)]
fn check_term(h: u32, w: u32) -> u32 {
    h.wrapping_add(w & (h & 1).wrapping_neg())
}

/// Per-coordinate lattice encoder of one bucket.
struct EncodeKernel<'a, const B: usize> {
    dither: &'a [f32],
    weights: &'a [u32],
    dt: &'a [f32; BLOCK],
    wt: &'a [u32; BLOCK],
    inv_eps: f32,
    off: f32,
    /// Sum of check terms (wrap counts offset by `2^(21-B)`).
    sum: u32,
    /// Or of every `t`: `>= 2^22` when some value was out of range or not finite.
    range: u32,
    /// Blocks of the bucket encoded before this kernel started.
    blk0: usize,
}

impl<const B: usize> crate::bits::EncodeKernel for EncodeKernel<'_, B> {
    #[inline(always)]
    fn begin(&mut self, blk: usize) {
        let blk = self.blk0 + blk;
        if let (Some(d), Some(w)) = (
            block_of(self.dither, blk * BLOCK),
            block_of(self.weights, blk * BLOCK),
        ) {
            self.dt = d;
            self.wt = w;
        }
    }

    #[inline(always)]
    fn code_block(&mut self, xs: &[f32; BLOCK], codes: &mut [u32; BLOCK]) {
        // A plain loop: vectorized at the enclosing SIMD width, with both reductions in
        // registers for the whole block.
        let (mut range, mut sum) = (0u32, 0u32);
        for i in 0..BLOCK {
            let z = xs[i] * self.inv_eps + (self.dt[i] + self.off);
            let t = (z + MAGIC).to_bits().wrapping_add(BIAS);
            range |= t;
            sum = sum.wrapping_add(check_term(t >> B, self.wt[i]));
            codes[i] = t;
        }
        self.range |= range;
        self.sum = self.sum.wrapping_add(sum);
    }
}

/// Encodes every bucket, or stops when a value is out of range for the step (or not finite).
fn encode_body<const B: usize>(
    a: &EncodeArgs<'_>,
    checks: &mut [u8],
    codes_out: &mut [u8],
) -> Result<(), Stop> {
    crate::simd::run(
        #[inline(always)]
        || encode_buckets::<B>(a, checks, codes_out),
    )
}

#[inline(always)]
fn encode_buckets<const B: usize>(
    a: &EncodeArgs<'_>,
    checks: &mut [u8],
    codes_out: &mut [u8],
) -> Result<(), Stop> {
    let bucket_bytes = a.bucket * B / 8;
    let (Some(dt), Some(wt)) = (block_of(a.dither, 0), block_of(a.weights, 0)) else {
        // Tables hold at least one block whenever there is a value to encode.
        return if a.x.is_empty() {
            Ok(())
        } else {
            Err(Stop::NonFinite)
        };
    };
    let mut stream = Stream::for_footprint(4 * a.x.len() + codes_out.len());
    // Width 8: the explicit kernel encodes every full block it can, in one pass over all the
    // buckets; the scalar kernel the rest (a last partial block), from the same state.
    let (mut fast_sums, mut fast_blocks) = (Vec::new(), 0);
    if B == 8 && crate::simd::has_lattice8_encode() {
        let nb = a.x.len().div_ceil(a.bucket);
        let offsets: Vec<f32> = (0..nb).map(|b| bucket_offset(a.nonce, b)).collect();
        fast_sums = vec![0u32; nb];
        let (done, range) = crate::simd::lattice8_encode(
            a.x,
            codes_out,
            (a.dither, a.weights),
            (a.bucket, &offsets, &mut fast_sums),
            (1.0 / a.eps, BIAS),
            stream.as_mut(),
        );
        if range >> 22 != 0 {
            return Err(Stop::Retry);
        }
        fast_blocks = done;
    }
    let bucket_blocks = a.bucket / BLOCK;
    for (b, (xb, ob)) in
        a.x.chunks(a.bucket)
            .zip(codes_out.chunks_mut(bucket_bytes))
            .enumerate()
    {
        let done = fast_blocks
            .saturating_sub(b * bucket_blocks)
            .min(bucket_blocks);
        let mut k = EncodeKernel::<B> {
            dither: a.dither,
            weights: a.weights,
            dt,
            wt,
            inv_eps: 1.0 / a.eps,
            off: bucket_offset(a.nonce, b),
            sum: fast_sums.get(b).copied().unwrap_or(0),
            range: 0,
            blk0: done,
        };
        let (xr, or) = (&xb[done * BLOCK..], &mut ob[done * BLOCK * B / 8..]);
        encode_map::<B, _>(xr, or, &[], &mut k, stream.as_mut());
        if k.range >> 22 != 0 {
            return Err(Stop::Retry);
        }
        // Every coordinate (padding included) added 2^(21-B) to its wrap count.
        let n = xb.len().next_multiple_of(BLOCK) as u32;
        let check = k.sum.wrapping_sub(n.wrapping_mul(1 << (21 - B)));
        checks[4 * b..4 * b + 4].copy_from_slice(&check.to_le_bytes());
    }
    Ok(())
}

struct DecodeArgs<'a> {
    bucket: usize,
    nonce: u64,
    eps: f32,
    dither: &'a [f32],
    weights: &'a [u32],
    checks: &'a [u8],
}

/// Per-coordinate lattice decoder of one bucket.
struct DecodeKernel<'a, const B: usize> {
    dither: &'a [f32],
    weights: &'a [u32],
    dt: &'a [f32; BLOCK],
    wt: &'a [u32; BLOCK],
    inv_eps: f32,
    eps: f32,
    off: f32,
    /// Sum of check terms (wrap counts offset by `MAGIC_BITS`).
    sum: u32,
    /// Blocks of the bucket decoded before this kernel started.
    blk0: usize,
}

impl<const B: usize> crate::bits::DecodeKernel for DecodeKernel<'_, B> {
    #[inline(always)]
    fn begin(&mut self, blk: usize) {
        let blk = self.blk0 + blk;
        if let (Some(d), Some(w)) = (
            block_of(self.dither, blk * BLOCK),
            block_of(self.weights, blk * BLOCK),
        ) {
            self.dt = d;
            self.wt = w;
        }
    }

    #[inline(always)]
    fn value_block(&mut self, codes: &[u32; BLOCK], ys: &[f32; BLOCK], os: &mut [f32; BLOCK]) {
        let q = (1u32 << B) as f32;
        let mut sum = 0u32;
        for i in 0..BLOCK {
            let v = self.dt[i] + self.off;
            let cf = codes[i] as i32 as f32;
            let zy = ys[i] * self.inv_eps + v;
            // round((zy - c) / q) + MAGIC: the wrap count r, exact for |r| < 2^22.
            let rm = (zy - cf) * (1.0 / q) + MAGIC;
            sum = sum.wrapping_add(check_term(rm.to_bits(), self.wt[i]));
            let k = cf + (rm - MAGIC) * q;
            os[i] = (k - v) * self.eps;
        }
        self.sum = self.sum.wrapping_add(sum);
    }
}

/// Decodes every bucket; returns the number of failed buckets.
fn decode_body<const B: usize>(
    a: &DecodeArgs<'_>,
    codes_in: &[u8],
    reference: &[f32],
    out: &mut [f32],
) -> usize {
    crate::simd::run(
        #[inline(always)]
        || decode_buckets::<B>(a, codes_in, reference, out),
    )
}

#[inline(always)]
fn decode_buckets<const B: usize>(
    a: &DecodeArgs<'_>,
    codes_in: &[u8],
    reference: &[f32],
    out: &mut [f32],
) -> usize {
    let bucket_bytes = a.bucket * B / 8;
    let (Some(dt), Some(wt)) = (block_of(a.dither, 0), block_of(a.weights, 0)) else {
        return out.len().div_ceil(a.bucket);
    };
    let mut failed = 0;
    // Not staged through `bits::staged` (with the reference also streaming in, decoding into a
    // 32 KB stage and copying it out measured slower: 0.44x vs 0.55x memcpy at 16M), but
    // streamed from a 4 KB stage when the call is larger than the last-level cache.
    let mut stream = Stream::for_footprint(8 * out.len() + codes_in.len());
    // Width 8: the explicit kernel decodes every full block it can, in one pass over all the
    // buckets; the scalar kernel the rest (a last partial block), from the same state.
    let (mut fast_sums, mut fast_blocks) = (Vec::new(), 0);
    if B == 8 && crate::simd::has_lattice8_decode() {
        let nb = out.len().div_ceil(a.bucket);
        let offsets: Vec<f32> = (0..nb).map(|b| bucket_offset(a.nonce, b)).collect();
        fast_sums = vec![0u32; nb];
        fast_blocks = crate::simd::lattice8_decode(
            codes_in,
            reference,
            out,
            (a.dither, a.weights),
            (a.bucket, &offsets, &mut fast_sums),
            [1.0 / a.eps, a.eps],
            stream.as_mut(),
        );
    }
    for (b, ((ob, cb), rb)) in out
        .chunks_mut(a.bucket)
        .zip(codes_in.chunks(bucket_bytes))
        .zip(reference.chunks(a.bucket))
        .enumerate()
    {
        let off = bucket_offset(a.nonce, b);
        let inv_eps = 1.0 / a.eps;
        let bucket_blocks = a.bucket / BLOCK;
        let done = fast_blocks
            .saturating_sub(b * bucket_blocks)
            .min(bucket_blocks);
        let sum = fast_sums.get(b).copied().unwrap_or(0);
        let mut k = DecodeKernel::<B> {
            dither: a.dither,
            weights: a.weights,
            dt,
            wt,
            inv_eps,
            eps: a.eps,
            off,
            sum,
            blk0: done,
        };
        let n = ob.len().next_multiple_of(BLOCK) as u32;
        let (cb, ob) = (&cb[done * BLOCK * B / 8..], &mut ob[done * BLOCK..]);
        let rb = rb.get(done * BLOCK..).unwrap_or(&[]);
        decode_map::<B, _>(cb, rb, ob, &mut k, stream.as_mut());
        let check = k.sum.wrapping_sub(n.wrapping_mul(MAGIC_BITS));
        let want = u32::from_le_bytes([
            a.checks[4 * b],
            a.checks[4 * b + 1],
            a.checks[4 * b + 2],
            a.checks[4 * b + 3],
        ]);
        if check != want {
            failed += 1;
        }
    }
    failed
}

impl Codec for LatticeCodec {
    fn name(&self) -> String {
        format!("lattice:{}", self.bits)
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let d = x.len();
        let bucket = 1usize << self.bucket_log2;
        let nb = d.div_ceil(bucket);
        let q = self.q();
        self.counter = self.counter.wrapping_add(1);
        let nonce = nonce(self.seed, self.counter);
        let mut eps = match self.target_eps {
            Some(e) => e,
            None => {
                let m = max_abs(x);
                if !m.is_finite() {
                    return Err(QuantError::NonFinite);
                }
                self.last_max_abs = m;
                self.safety * 2.0 * m / ((q - 1.0) / 2.0)
            }
        };
        eps = eps
            .max(2.0 * self.last_max_abs / LIMIT)
            .clamp(MIN_EPS, MAX_EPS);

        let table_len = bucket.min(d.next_multiple_of(BLOCK));
        let mut dither = std::mem::take(&mut self.dither);
        let mut weights = std::mem::take(&mut self.weights);
        tables(nonce, table_len, &mut dither, &mut weights);

        size_output(out, Self::encoded_len(self.bits, self.bucket_log2, d));
        let (head, rest) = out.split_at_mut(LATTICE_HEADER);
        let (checks, codes) = rest.split_at_mut(4 * nb);
        let mut retried = false;
        let result = loop {
            let args = EncodeArgs {
                x,
                bucket,
                nonce,
                eps,
                dither: &dither,
                weights: &weights,
            };
            let r = dispatch_width!(
                self.bits,
                encode_body(&args, checks, codes),
                Err(Stop::NonFinite)
            );
            match r {
                Ok(()) => break Ok(()),
                Err(Stop::NonFinite) => break Err(QuantError::NonFinite),
                Err(Stop::Retry) if retried => {
                    break Err(QuantError::InvalidParameter(
                        "values too large for the lattice step range".into(),
                    ))
                }
                Err(Stop::Retry) => {
                    retried = true;
                    let m = max_abs(x);
                    if !m.is_finite() {
                        break Err(QuantError::NonFinite);
                    }
                    self.last_max_abs = m;
                    eps = eps.max(2.0 * m / LIMIT).clamp(MIN_EPS, MAX_EPS);
                }
            }
        };
        self.dither = dither;
        self.weights = weights;
        if let Err(e) = result {
            out.clear();
            return Err(e);
        }
        self.last_eps = eps;
        put_header(head, Kind::Lattice, len);
        head[8] = self.bits as u8;
        head[9] = self.bucket_log2 as u8;
        head[10] = 0;
        head[11] = 0;
        put_f32_at(&mut head[12..16], 0, eps);
        head[16..24].copy_from_slice(&nonce.to_le_bytes());
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let mut r = check_header(bytes, Kind::Lattice, out.len())?;
        if reference.len() != out.len() {
            return Err(QuantError::LengthMismatch {
                payload: reference.len(),
                expected: out.len(),
            });
        }
        let bits = r.u8()? as u32;
        let log2 = r.u8()? as u32;
        let reserved = r.take(2)?;
        let eps_bytes = r.take(4)?;
        let eps = f32_at(eps_bytes, 0);
        let nonce = r.u64()?;
        if !(2..=16).contains(&bits) || !(6..=16).contains(&log2) || reserved != [0, 0] {
            return Err(QuantError::BadHeader(format!(
                "lattice bits {bits} / bucket log2 {log2} / reserved {reserved:?} out of range"
            )));
        }
        if !(eps.is_finite() && (MIN_EPS..=MAX_EPS).contains(&eps)) {
            return Err(QuantError::BadHeader(format!(
                "lattice step {eps} out of range"
            )));
        }
        let d = out.len();
        let bucket = 1usize << log2;
        let nb = d.div_ceil(bucket);
        let checks = r.take(4 * nb)?;
        let codes = r.take_exact_rest(packed_len(d, bits))?;
        let table_len = bucket.min(d.next_multiple_of(BLOCK));
        let (mut dither, mut weights) = (Vec::new(), Vec::new());
        tables(nonce, table_len, &mut dither, &mut weights);
        let args = DecodeArgs {
            bucket,
            nonce,
            eps,
            dither: &dither,
            weights: &weights,
            checks,
        };
        let failed = dispatch_width!(bits, decode_body(&args, codes, reference, out), nb);
        Ok(DecodeReport {
            failed_buckets: failed,
        })
    }

    fn observe_distance(&mut self, linf: f32) {
        if linf.is_finite() && linf >= 0.0 {
            let q = self.q();
            self.target_eps = Some(self.safety * linf / ((q - 1.0) / 2.0));
        }
    }
}
