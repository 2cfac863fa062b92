//! Lattice codec: exact decode inside the safe radius, reported failure beyond it, sizes.
#![allow(clippy::unwrap_used)] // tests and benches fail loudly by design

use proptest::prelude::*;
use swarmsgd_quant::{Codec, LatticeCodec};

fn vec_strategy(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-100.0f32..100.0, 0..max_len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Inside `||x-y||_inf < (q-1)/2 * eps` (less rounding margin) every coordinate decodes to
    /// within eps/2 (+ f32 rounding) of x and no bucket is reported failed.
    #[test]
    fn exact_within_radius(
        x in vec_strategy(3000),
        bits in 2u32..=16,
        frac in 0.0f32..0.95,
        seed in any::<u64>(),
        noise_seed in any::<u64>(),
    ) {
        let mut c = LatticeCodec::new(bits, seed).unwrap();
        let dist = 0.5f32;
        c.observe_distance(dist);
        let mut bytes = Vec::new();
        c.encode(&x, &mut bytes).unwrap();
        let eps = c.last_eps();
        prop_assert_eq!(bytes.len(), LatticeCodec::encoded_len(bits, 10, x.len()));
        prop_assert_eq!(
            bytes.len(),
            swarmsgd_quant::lattice::LATTICE_HEADER + 4 * x.len().div_ceil(1024) + (x.len() * bits as usize).div_ceil(8)
        );
        let radius = c.last_safe_distance() * frac;
        // Deterministic pseudo-random offsets in [-radius, radius].
        let mut s = noise_seed | 1;
        let y: Vec<f32> = x.iter().map(|&v| {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            v + (2.0 * u - 1.0) * radius
        }).collect();
        let mut out = vec![0.0; x.len()];
        let rep = c.decode(&bytes, &y, &mut out).unwrap();
        prop_assert!(rep.is_ok(), "failed buckets {}", rep.failed_buckets);
        for (a, b) in x.iter().zip(&out) {
            prop_assert!((a - b).abs() <= 0.5 * eps + a.abs() * 4.0 / (1u32 << 23) as f32 + 1e-30,
                "x {} decoded {} eps {}", a, b, eps);
        }
    }

    /// Moving one coordinate of the reader's vector by more than (q/2 + 1) * eps makes that
    /// coordinate decode wrong, and its bucket is reported.
    #[test]
    fn failure_reported_beyond_radius(
        x in prop::collection::vec(-100.0f32..100.0, 1..5000),
        bits in 2u32..=16,
        which in any::<prop::sample::Index>(),
        extra in 1.0f32..50.0,
        sign in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut c = LatticeCodec::new(bits, seed).unwrap();
        c.observe_distance(0.25);
        let mut bytes = Vec::new();
        c.encode(&x, &mut bytes).unwrap();
        let eps = c.last_eps();
        let q = (1u32 << bits) as f32;
        let i = which.index(x.len());
        let mut y = x.clone();
        let delta = (q / 2.0 + extra) * eps;
        y[i] += if sign { delta } else { -delta };
        let mut out = vec![0.0; x.len()];
        let rep = c.decode(&bytes, &y, &mut out).unwrap();
        prop_assert_eq!(rep.failed_buckets, 1);
        prop_assert!((out[i] - x[i]).abs() > eps);
    }
}

#[test]
fn eps_adapts_to_distance_and_floors() {
    let x: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut c = LatticeCodec::new(8, 1).unwrap();
    c.observe_distance(0.01);
    let mut bytes = Vec::new();
    c.encode(&x, &mut bytes).unwrap();
    // safety 2: (q-1)/2 * eps = 2 * 0.01
    assert!((c.last_eps() - 0.02 / 127.5).abs() < 1e-9);
    // A distance of zero floors the step at |x|max * 2^-19.
    c.observe_distance(0.0);
    c.encode(&x, &mut bytes).unwrap();
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(c.last_eps() >= m / (1u32 << 20) as f32);
    assert!(c.last_eps() <= 2.5 * m / (1u32 << 20) as f32);
    let mut out = vec![0.0; x.len()];
    assert!(c.decode(&bytes, &x, &mut out).unwrap().is_ok());
    for (a, b) in x.iter().zip(&out) {
        assert!((a - b).abs() <= c.last_eps());
    }
    // Non-finite input is an error, not a payload.
    let mut bad = x.clone();
    bad[7] = f32::NAN;
    assert!(c.encode(&bad, &mut bytes).is_err());
    bad[7] = f32::INFINITY;
    assert!(c.encode(&bad, &mut bytes).is_err());
}
