//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// Deterministic xorshift64* generator for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    /// A vector of `d` values mixing scales, signs, zeros and exact ties.
    pub fn vector(&mut self, d: usize) -> Vec<f32> {
        (0..d)
            .map(|_| match self.below(10) {
                0 => 0.0,
                1 => 0.5,
                2 => (self.unit() * 200.0 - 100.0) as f32,
                _ => (self.unit() * 2.0 - 1.0) as f32,
            })
            .collect()
    }
}

/// Every codec spec the tests exercise.
pub const SPECS: &[&str] = &[
    "none",
    "lattice:2",
    "lattice:3",
    "lattice:8",
    "lattice:11",
    "lattice:16",
    "qsgd:1",
    "qsgd:7",
    "qsgd:127",
    "qsgd:1000",
    "minmax:1",
    "minmax:2",
    "minmax:4",
    "minmax:5",
    "minmax:8",
    "minmax:4:stochastic",
    "sign",
    "terngrad",
    "topk:0.1",
    "randk:0.25",
    "topk:0.05+minmax:4",
    "randk:0.5+qsgd:3",
    "topk:0.2+lattice:8",
    "ef(topk:0.1)",
    "sign+ef",
];

/// Makes every codec call of this test process write through the streaming stores of the SIMD
/// module (normally kept for calls larger than the last-level cache), so that the tests calling
/// it exercise that path on small inputs. Call it first in every test of a file.
pub fn stream_everything() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Edition 2021: `set_var` is safe; every test of the file calls this before any codec.
    ONCE.call_once(|| std::env::set_var("QUANT_STREAM_MIN", "1"));
}
