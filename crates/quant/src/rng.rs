//! Small deterministic generators: splitmix64 for seeds and tables, and an 8-lane xorshift32
//! whose lanes advance in lockstep so that per-coordinate random numbers vectorize.

use crate::bits::BLOCK;

/// The splitmix64 finalizer: a bijective mix of a 64-bit word.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in `[0, 1)` from the top 24 bits of `r`.
#[inline]
pub(crate) fn unit_f32(r: u64) -> f32 {
    (r >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// A sequential splitmix64 stream.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-high (bias below 2^-32 for n < 2^32).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Eight xorshift32 generators advanced together.
#[derive(Debug, Clone)]
pub(crate) struct LaneRng {
    s: [u32; 8],
}

impl LaneRng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut sm = SplitMix(seed);
        let mut s = [0u32; 8];
        for v in s.iter_mut() {
            // xorshift32 must not start at zero.
            *v = (sm.next_u64() as u32) | 1;
        }
        LaneRng { s }
    }

    /// Fills a block with uniforms in `[0, 1)` (24-bit resolution).
    #[inline(always)]
    pub(crate) fn fill(&mut self, out: &mut [f32; BLOCK]) {
        let mut s = self.s;
        for c in out.chunks_exact_mut(8) {
            for (v, st) in c.iter_mut().zip(s.iter_mut()) {
                let mut x = *st;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *st = x;
                *v = (x >> 8) as i32 as f32 * (1.0 / 16_777_216.0);
            }
        }
        self.s = s;
    }
}

/// Per-encode nonce from a codec seed and an encode counter.
pub(crate) fn nonce(seed: u64, counter: u64) -> u64 {
    mix64(seed ^ mix64(counter.wrapping_mul(0xD1B5_4A32_D192_ED03)))
}
