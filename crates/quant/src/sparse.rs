//! Sparsifiers (top-k, rand-k) with bit-packed indices, optionally followed by a quantizer of
//! the kept values (sparsify-then-quantize, as in Qsparse-local-SGD).
//!
//! Payload: common header, `k` (u32), index width (u8), value format (u8: 0 = raw f32, 1 = a
//! nested codec payload), 2 reserved bytes, the `k` ascending indices packed at
//! `ceil(log2(d))` bits each, then the values: `16 + ceil(k * ceil(log2 d) / 8) + values`.

use crate::bits::{packed_len, BitReader, BitWriter};
use crate::rng::{nonce, SplitMix};
use crate::wire::{check_header, len_u32, put_header, Kind, COMMON_HEADER};
use crate::{Codec, DecodeReport, QuantError};

/// Header bytes of a sparse payload.
pub const SPARSE_HEADER: usize = COMMON_HEADER + 8;

/// Which coordinates a [`SparseCodec`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsifier {
    /// The `k` largest magnitudes (ties broken by lower index). Biased; pair with
    /// [`ErrorFeedback`](crate::ErrorFeedback).
    TopK,
    /// `k` coordinates drawn uniformly without replacement, scaled by `d/k` so the result is
    /// unbiased (per-coordinate variance `x^2 (d/k - 1)`).
    RandK,
}

impl Sparsifier {
    fn kind(self) -> Kind {
        match self {
            Sparsifier::TopK => Kind::TopK,
            Sparsifier::RandK => Kind::RandK,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sparsifier::TopK => "topk",
            Sparsifier::RandK => "randk",
        }
    }
}

/// Number of coordinates kept out of `d` for `fraction`: `round(fraction * d)` clamped to
/// `1..=d` (0 when `d = 0`).
pub fn sparse_k(d: usize, fraction: f64) -> usize {
    if d == 0 {
        return 0;
    }
    ((fraction * d as f64).round() as usize).clamp(1, d)
}

/// Bits per index for a vector of `d` values: `ceil(log2(d))`, at least 1.
pub fn index_bits(d: usize) -> u32 {
    if d <= 2 {
        1
    } else {
        usize::BITS - (d - 1).leading_zeros()
    }
}

/// A sparsifier, optionally composed with a quantizer for the kept values.
pub struct SparseCodec {
    method: Sparsifier,
    fraction: f64,
    inner: Option<Box<dyn Codec>>,
    rng_seed: u64,
    counter: u64,
    idx: Vec<u32>,
    vals: Vec<f32>,
    scratch: Vec<u32>,
    bitset: Vec<u64>,
    inner_buf: Vec<u8>,
}

impl std::fmt::Debug for SparseCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseCodec")
            .field("name", &self.name())
            .finish()
    }
}

impl SparseCodec {
    /// Keeps `fraction` (in `(0, 1]`) of the coordinates, as raw f32 when `inner` is `None`,
    /// else encoded by `inner`. `seed` drives rand-k.
    pub fn new(
        method: Sparsifier,
        fraction: f64,
        inner: Option<Box<dyn Codec>>,
        seed: u64,
    ) -> Result<Self, QuantError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(QuantError::InvalidParameter(format!(
                "sparsity fraction {fraction} not in (0, 1]"
            )));
        }
        Ok(SparseCodec {
            method,
            fraction,
            inner,
            rng_seed: seed,
            counter: 0,
            idx: Vec::new(),
            vals: Vec::new(),
            scratch: Vec::new(),
            bitset: Vec::new(),
            inner_buf: Vec::new(),
        })
    }

    /// Indices kept by the last encode (ascending).
    pub fn last_indices(&self) -> &[u32] {
        &self.idx
    }

    /// Payload size for `d` values when the kept values take `values_len` bytes.
    pub fn encoded_len(d: usize, fraction: f64, values_len: usize) -> usize {
        SPARSE_HEADER + packed_len(sparse_k(d, fraction), index_bits(d)) + values_len
    }
}

/// Exact top-k by magnitude: a 65536-bin histogram of the magnitude's top bits finds the bin of
/// the k-th largest, a selection inside that bin finds its exact value, and a last pass keeps
/// everything above it plus the first ties. Indices come out ascending.
fn top_k(
    x: &[f32],
    k: usize,
    scratch: &mut Vec<u32>,
    idx: &mut Vec<u32>,
) -> Result<(), QuantError> {
    idx.clear();
    let mut hist = vec![0u32; 1 << 16];
    let mut nonfinite = false;
    for v in x {
        let a = v.to_bits() & 0x7fff_ffff;
        nonfinite |= a >= 0x7f80_0000;
        hist[(a >> 15) as usize] += 1;
    }
    if nonfinite {
        return Err(QuantError::NonFinite);
    }
    if k == 0 {
        return Ok(());
    }
    let mut above = 0usize;
    let mut bin = 0usize;
    for b in (0..hist.len()).rev() {
        let h = hist[b] as usize;
        if above + h >= k {
            bin = b;
            break;
        }
        above += h;
    }
    let need = k - above;
    scratch.clear();
    scratch.extend(
        x.iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .filter(|a| (a >> 15) as usize == bin),
    );
    // The need-th largest magnitude in the bin.
    let pos = scratch.len() - need;
    let (_, &mut tau, _) = scratch.select_nth_unstable(pos);
    let greater_in_bin = scratch.iter().filter(|&&a| a > tau).count();
    let mut ties = need - greater_in_bin;
    idx.reserve(k);
    for (i, v) in x.iter().enumerate() {
        let a = v.to_bits() & 0x7fff_ffff;
        if a > tau {
            idx.push(i as u32);
        } else if a == tau && ties > 0 {
            idx.push(i as u32);
            ties -= 1;
        }
    }
    Ok(())
}

/// k distinct uniform indices (Floyd's algorithm over a bitset), ascending.
fn rand_k(d: usize, k: usize, rng: &mut SplitMix, bitset: &mut Vec<u64>, idx: &mut Vec<u32>) {
    idx.clear();
    bitset.clear();
    bitset.resize(d.div_ceil(64), 0);
    for j in (d - k)..d {
        let t = rng.below(j as u64 + 1) as usize;
        let (w, b) = (t / 64, t % 64);
        if bitset[w] >> b & 1 == 1 {
            bitset[j / 64] |= 1 << (j % 64);
        } else {
            bitset[w] |= 1 << b;
        }
    }
    for (w, &word) in bitset.iter().enumerate() {
        let mut m = word;
        while m != 0 {
            idx.push((w * 64) as u32 + m.trailing_zeros());
            m &= m - 1;
        }
    }
}

impl Codec for SparseCodec {
    fn name(&self) -> String {
        let base = format!("{}:{}", self.method.name(), self.fraction);
        match &self.inner {
            Some(c) => format!("{base}+{}", c.name()),
            None => base,
        }
    }

    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        let len = len_u32(x.len())?;
        let d = x.len();
        let k = sparse_k(d, self.fraction);
        let ib = index_bits(d);
        match self.method {
            Sparsifier::TopK => top_k(x, k, &mut self.scratch, &mut self.idx)?,
            Sparsifier::RandK => {
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(QuantError::NonFinite);
                }
                self.counter = self.counter.wrapping_add(1);
                let mut rng = SplitMix(nonce(self.rng_seed, self.counter));
                rand_k(d, k, &mut rng, &mut self.bitset, &mut self.idx);
            }
        }
        let scale = match self.method {
            Sparsifier::TopK => 1.0,
            Sparsifier::RandK if k > 0 => d as f32 / k as f32,
            Sparsifier::RandK => 1.0,
        };
        self.vals.clear();
        self.vals
            .extend(self.idx.iter().map(|&i| x[i as usize] * scale));
        if let Some(inner) = self.inner.as_mut() {
            inner.encode(&self.vals, &mut self.inner_buf)?;
        }
        out.clear();
        let n_idx = packed_len(k, ib);
        let vbytes = if self.inner.is_some() {
            self.inner_buf.len()
        } else {
            4 * k
        };
        out.resize(SPARSE_HEADER + n_idx, 0);
        out.reserve(vbytes);
        put_header(out, self.method.kind(), len);
        out[8..12].copy_from_slice(&(k as u32).to_le_bytes());
        out[12] = ib as u8;
        out[13] = self.inner.is_some() as u8;
        out[14] = 0;
        out[15] = 0;
        let mut w = BitWriter::new(&mut out[SPARSE_HEADER..]);
        for &i in &self.idx {
            w.put(i, ib);
        }
        w.finish();
        if self.inner.is_some() {
            out.extend_from_slice(&self.inner_buf);
        } else {
            for v in &self.vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        bytes: &[u8],
        reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let d = out.len();
        let mut r = check_header(bytes, self.method.kind(), d)?;
        let k = r.u32()? as usize;
        let ib = r.u8()? as u32;
        let fmt = r.u8()?;
        let reserved = r.take(2)?;
        if k > d || ib != index_bits(d) || fmt != self.inner.is_some() as u8 || reserved != [0, 0] {
            return Err(QuantError::BadHeader(format!(
                "sparse k {k} / index bits {ib} / format {fmt} invalid for {d} values"
            )));
        }
        let packed = r.take(packed_len(k, ib))?;
        let mut idx = Vec::with_capacity(k);
        let mut br = BitReader::new(packed);
        let mut prev: Option<u32> = None;
        for _ in 0..k {
            let i = br.get(ib);
            if i as usize >= d || prev.is_some_and(|p| i <= p) {
                return Err(QuantError::Corrupt(
                    "sparse indices not ascending below d".into(),
                ));
            }
            prev = Some(i);
            idx.push(i);
        }
        let mut vals = vec![0f32; k];
        let report = match &self.inner {
            None => {
                let raw = r.take_exact_rest(4 * k)?;
                for (v, c) in vals.iter_mut().zip(raw.chunks_exact(4)) {
                    *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                DecodeReport::default()
            }
            Some(inner) => {
                let refs: Vec<f32> = if reference.len() == d {
                    idx.iter().map(|&i| reference[i as usize]).collect()
                } else {
                    vec![0.0; k]
                };
                inner.decode(r.rest(), &refs, &mut vals)?
            }
        };
        out.fill(0.0);
        for (&i, &v) in idx.iter().zip(&vals) {
            out[i as usize] = v;
        }
        Ok(report)
    }

    fn observe_distance(&mut self, linf: f32) {
        if let Some(inner) = self.inner.as_mut() {
            inner.observe_distance(linf);
        }
    }
}
