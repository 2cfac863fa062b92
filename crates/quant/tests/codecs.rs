//! Sizes, accuracy, unbiasedness and variance of the codecs, top-k selection, error feedback.
#![allow(clippy::unwrap_used)] // tests and benches fail loudly by design

mod common;

use common::{Rng, SPECS};
use proptest::prelude::*;
use swarmsgd_quant::{
    Codec, CodecSpec, ErrorFeedback, MinMaxCodec, QsgdCodec, Rounding, SignCodec, SparseCodec,
    Sparsifier,
};

fn spec(s: &str) -> CodecSpec {
    s.parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The payload has exactly the size the spec predicts, and for the dense codecs that is
    /// header + per-bucket parameters + ceil(d * b / 8).
    #[test]
    fn encoded_sizes(d in 0usize..4000, seed in any::<u64>()) {
        let x = Rng(seed).vector(d);
        for s in SPECS {
            let sp = spec(s);
            let mut c = sp.build(seed).unwrap();
            c.observe_distance(1.0);
            let mut out = vec![7u8; 3];
            c.encode(&x, &mut out).unwrap();
            prop_assert_eq!(out.len(), sp.encoded_len(d), "{}", s);
            let mut back = vec![0f32; d];
            let rep = c.decode(&out, &x, &mut back).unwrap();
            prop_assert!(rep.is_ok(), "{}", s);
        }
        let nb = |b: usize| d.div_ceil(b);
        let packed = |bits: usize| (d * bits).div_ceil(8);
        prop_assert_eq!(spec("lattice:8").encoded_len(d), 24 + 4 * nb(1024) + packed(8));
        prop_assert_eq!(spec("lattice:5").encoded_len(d), 24 + 4 * nb(1024) + packed(5));
        prop_assert_eq!(spec("minmax:4").encoded_len(d), 12 + 8 * nb(512) + packed(4));
        prop_assert_eq!(spec("minmax:3").encoded_len(d), 12 + 8 * nb(512) + packed(3));
        prop_assert_eq!(spec("sign").encoded_len(d), 12 + 4 * nb(512) + packed(1));
        prop_assert_eq!(spec("terngrad").encoded_len(d), 12 + 4 * nb(512) + packed(2));
        prop_assert_eq!(spec("qsgd:7").encoded_len(d), 12 + 4 * nb(512) + packed(4));
        prop_assert_eq!(spec("none").encoded_len(d), 8 + 4 * d);
        let k = swarmsgd_quant::sparse_k(d, 0.1);
        let ib = swarmsgd_quant::index_bits(d) as usize;
        prop_assert_eq!(spec("topk:0.1").encoded_len(d), 16 + (k * ib).div_ceil(8) + 4 * k);
        prop_assert_eq!(
            spec("topk:0.1+minmax:4").encoded_len(d),
            16 + (k * ib).div_ceil(8) + 12 + 8 * k.div_ceil(512) + (k * 4).div_ceil(8)
        );
    }

    /// Nearest min-max rounding errs by at most half a step of the bucket's range.
    #[test]
    fn minmax_nearest_error(d in 1usize..3000, bits in 1u32..=8, seed in any::<u64>()) {
        let x = Rng(seed).vector(d);
        let mut c = MinMaxCodec::new(bits, Rounding::Nearest, seed).unwrap();
        let mut out = Vec::new();
        c.encode(&x, &mut out).unwrap();
        let mut back = vec![0f32; d];
        c.decode(&out, &[], &mut back).unwrap();
        for (xb, bb) in x.chunks(512).zip(back.chunks(512)) {
            let lo = xb.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = xb.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
            for (a, b) in xb.iter().zip(bb) {
                prop_assert!((a - b).abs() <= 0.5 * step + 1e-5 * (1.0 + a.abs()),
                    "x {} got {} step {}", a, b, step);
            }
        }
    }

    /// Sign decodes to +-(mean |x| of the bucket) with the input's sign.
    #[test]
    fn sign_values(d in 1usize..3000, seed in any::<u64>()) {
        let x = Rng(seed).vector(d);
        let mut c = SignCodec::new();
        let mut out = Vec::new();
        c.encode(&x, &mut out).unwrap();
        let mut back = vec![0f32; d];
        c.decode(&out, &[], &mut back).unwrap();
        for (xb, bb) in x.chunks(512).zip(back.chunks(512)) {
            let m = xb.iter().map(|v| v.abs() as f64).sum::<f64>() / xb.len() as f64;
            for (a, b) in xb.iter().zip(bb) {
                prop_assert!((b.abs() as f64 - m).abs() <= 1e-5 * (1.0 + m));
                prop_assert_eq!(a.is_sign_negative(), b.is_sign_negative());
            }
        }
    }

    /// Top-k keeps exactly k coordinates, and every kept magnitude is >= every dropped one.
    #[test]
    fn topk_keeps_largest(d in 1usize..5000, frac in 0.001f64..1.0, seed in any::<u64>()) {
        let x = Rng(seed).vector(d);
        let mut c = SparseCodec::new(Sparsifier::TopK, frac, None, seed).unwrap();
        let mut out = Vec::new();
        c.encode(&x, &mut out).unwrap();
        let k = swarmsgd_quant::sparse_k(d, frac);
        let idx = c.last_indices().to_vec();
        prop_assert_eq!(idx.len(), k);
        let mut kept = vec![false; d];
        for &i in &idx { kept[i as usize] = true; }
        let min_kept = idx.iter().map(|&i| x[i as usize].abs()).fold(f32::INFINITY, f32::min);
        let max_dropped = (0..d).filter(|&i| !kept[i]).map(|i| x[i].abs()).fold(0f32, f32::max);
        prop_assert!(min_kept >= max_dropped);
        // Same multiset of magnitudes as a full sort.
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut got: Vec<f32> = idx.iter().map(|&i| x[i as usize].abs()).collect();
        got.sort_by(|a, b| b.total_cmp(a));
        prop_assert_eq!(&got[..], &sorted[..k]);
        // And the decode puts exactly those values back, zero elsewhere.
        let mut back = vec![1f32; d];
        c.decode(&out, &[], &mut back).unwrap();
        for i in 0..d {
            prop_assert_eq!(back[i], if kept[i] { x[i] } else { 0.0 });
        }
    }

    /// Error feedback: the running sum of decoded vectors equals the running sum of inputs
    /// minus the residual, and the residual stays bounded (top-k with fraction f contracts:
    /// ||e|| <= sqrt(1-f)/(1-sqrt(1-f)) max ||x||).
    #[test]
    fn error_feedback_tracks_sum(d in 16usize..800, seed in any::<u64>(), steps in 20usize..60) {
        let frac = 0.1;
        let inner = SparseCodec::new(Sparsifier::TopK, frac, None, seed).unwrap();
        let mut ef = ErrorFeedback::new(Box::new(inner));
        let mut rng = Rng(seed);
        let mut sum_x = vec![0f64; d];
        let mut sum_dec = vec![0f64; d];
        let mut out = Vec::new();
        let mut dec = vec![0f32; d];
        let mut max_norm = 0f64;
        for _ in 0..steps {
            let x = rng.vector(d);
            max_norm = max_norm.max(x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt());
            ef.encode(&x, &mut out).unwrap();
            ef.decode(&out, &[], &mut dec).unwrap();
            for i in 0..d {
                sum_x[i] += x[i] as f64;
                sum_dec[i] += dec[i] as f64;
            }
        }
        let e = ef.residual();
        for i in 0..d {
            prop_assert!((sum_x[i] - sum_dec[i] - e[i] as f64).abs() <= 1e-3 * (1.0 + sum_x[i].abs()),
                "coordinate {}: sum x {} sum dec {} residual {}", i, sum_x[i], sum_dec[i], e[i]);
        }
        let k = swarmsgd_quant::sparse_k(d, frac) as f64;
        let delta = k / d as f64;
        let r = (1.0 - delta).sqrt();
        let enorm = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        prop_assert!(enorm <= r / (1.0 - r) * max_norm * 1.001 + 1e-6, "residual {} bound {}", enorm, r / (1.0 - r) * max_norm);
    }
}

/// Per-coordinate mean of `n` decodes of `x`, and the mean squared error per decode.
fn monte_carlo(c: &mut dyn Codec, x: &[f32], n: usize) -> (Vec<f64>, f64) {
    let mut mean = vec![0f64; x.len()];
    let mut mse = 0f64;
    let mut out = Vec::new();
    let mut back = vec![0f32; x.len()];
    for _ in 0..n {
        c.encode(x, &mut out).unwrap();
        assert!(c.decode(&out, x, &mut back).unwrap().is_ok());
        for ((m, b), a) in mean.iter_mut().zip(&back).zip(x) {
            *m += *b as f64;
            mse += (*b as f64 - *a as f64).powi(2);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    (mean, mse / n as f64)
}

/// Asserts unbiasedness (|mean - x| <= 6 sqrt(var_bound / n) per coordinate, a 6-sigma bound),
/// that the measured error variance respects the codec's claimed bound, and that it matches the
/// exact expected variance within 15%.
fn check_stochastic(
    name: &str,
    c: &mut dyn Codec,
    x: &[f32],
    n: usize,
    var_bound: &[f64],
    var_exact: f64,
    claimed_total: f64,
) {
    let (mean, mse) = monte_carlo(c, x, n);
    for i in 0..x.len() {
        let tol = 6.0 * (var_bound[i] / n as f64).sqrt() + 1e-6 * (1.0 + x[i].abs() as f64);
        assert!(
            (mean[i] - x[i] as f64).abs() <= tol,
            "{name}: coordinate {i}: mean {} vs x {} (tol {tol})",
            mean[i],
            x[i]
        );
    }
    assert!(
        mse <= claimed_total * 1.05 + 1e-9,
        "{name}: mse {mse} above claimed {claimed_total}"
    );
    assert!(
        (mse - var_exact).abs() <= 0.15 * var_exact + 1e-9,
        "{name}: mse {mse} vs exact variance {var_exact}"
    );
}

#[test]
fn stochastic_codecs_unbiased_with_bounded_variance() {
    let mut rng = Rng(12345);
    let n = 3000;
    for case in 0..3 {
        let d = 96 + 61 * case;
        let x: Vec<f32> = rng.vector(d);
        let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();

        // QSGD, bucket 512 > d: one bucket.
        for s in [1u32, 3, 16] {
            let norm = xf.iter().map(|v| v * v).sum::<f64>().sqrt();
            let step = norm / s as f64;
            let var: Vec<f64> = xf
                .iter()
                .map(|v| {
                    let t = v.abs() / step;
                    let p = t - t.floor();
                    step * step * p * (1.0 - p)
                })
                .collect();
            let exact = var.iter().sum();
            let dd = d as f64;
            let claimed = (dd / (s * s) as f64).min(dd.sqrt() / s as f64) * norm * norm;
            let bound = vec![step * step / 4.0; d];
            let mut c = QsgdCodec::new(s, 7 + s as u64).unwrap();
            check_stochastic(&format!("qsgd:{s}"), &mut c, &x, n, &bound, exact, claimed);
        }

        // Stochastic min-max.
        for bits in [1u32, 2, 4] {
            let lo = xf.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = xf.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let step = (hi - lo) / ((1u32 << bits) - 1) as f64;
            let var: Vec<f64> = xf
                .iter()
                .map(|v| {
                    let t = (v - lo) / step;
                    let p = t - t.floor();
                    step * step * p * (1.0 - p)
                })
                .collect();
            let exact = var.iter().sum();
            let bound = vec![step * step / 4.0; d];
            let mut c = MinMaxCodec::new(bits, Rounding::Stochastic, 99).unwrap();
            let claimed = step * step / 4.0 * d as f64;
            check_stochastic(
                &format!("minmax:{bits}:s"),
                &mut c,
                &x,
                n,
                &bound,
                exact,
                claimed,
            );
        }

        // TernGrad.
        {
            let s = xf.iter().fold(0f64, |m, v| m.max(v.abs()));
            let var: Vec<f64> = xf.iter().map(|v| v.abs() * (s - v.abs())).collect();
            let exact = var.iter().sum();
            let bound = vec![s * s / 4.0; d];
            let claimed = s * xf.iter().map(|v| v.abs()).sum::<f64>();
            let mut c = swarmsgd_quant::TernGradCodec::new(5);
            check_stochastic("terngrad", &mut c, &x, n, &bound, exact, claimed);
        }

        // Rand-k scaled by d/k.
        {
            let k = swarmsgd_quant::sparse_k(d, 0.25) as f64;
            let var: Vec<f64> = xf.iter().map(|v| v * v * (d as f64 / k - 1.0)).collect();
            let exact: f64 = var.iter().sum();
            let mut c = SparseCodec::new(Sparsifier::RandK, 0.25, None, 3).unwrap();
            check_stochastic("randk", &mut c, &x, n, &var, exact, exact);
        }

        // Lattice: subtractive dither makes the error uniform in [-eps/2, eps/2].
        for bits in [2u32, 8] {
            let mut c = swarmsgd_quant::LatticeCodec::new(bits, 11).unwrap();
            c.set_eps(0.05);
            let eps = 0.05f64;
            let var = eps * eps / 12.0;
            check_stochastic(
                &format!("lattice:{bits}"),
                &mut c,
                &x,
                n,
                &vec![var; d],
                var * d as f64,
                var * d as f64,
            );
        }
    }
}

#[test]
fn spec_parsing() {
    for s in SPECS {
        let sp = spec(s);
        // Display round-trips through the parser.
        assert_eq!(spec(&sp.to_string()), sp, "{s}");
        assert_eq!(sp.build(1).unwrap().name(), sp.to_string());
    }
    assert_eq!(
        spec("ef(topk:0.01+minmax:4)"),
        spec("topk:0.01+minmax:4+ef")
    );
    assert_eq!(spec(" Lattice:8 "), CodecSpec::Lattice { bits: 8 });
    for bad in [
        "",
        "lattice",
        "lattice:1",
        "lattice:17",
        "lattice:x",
        "qsgd:0",
        "minmax:9",
        "minmax:0",
        "minmax:4:round",
        "sign:1",
        "topk:0",
        "topk:1.5",
        "topk:nan",
        "minmax:4+topk:0.1",
        "topk:0.1+randk:0.1",
        "a+b+c",
        "foo",
        "ef()",
        "lattice:8:2",
    ] {
        let e = bad.parse::<CodecSpec>();
        assert!(
            matches!(e, Err(swarmsgd_quant::QuantError::BadSpec { .. })),
            "{bad:?} gave {e:?}"
        );
    }
    let bpc = |s: &str| spec(s).bits_per_coordinate(1 << 20);
    assert!((bpc("none") - 32.0).abs() < 0.01);
    assert!((bpc("lattice:8") - 8.0).abs() < 0.05);
    assert!((bpc("minmax:4") - 4.125).abs() < 0.01);
    assert!((bpc("sign") - 1.0625).abs() < 0.01);
    assert!((bpc("topk:0.01") - 0.01 * (32.0 + 20.0)).abs() < 0.01);
}

#[test]
fn non_finite_inputs_are_rejected() {
    for s in SPECS.iter().filter(|s| **s != "none") {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; 700];
            x[650] = bad;
            let mut c = spec(s).build(1).unwrap();
            let mut out = Vec::new();
            assert!(c.encode(&x, &mut out).is_err(), "{s} accepted {bad}");
        }
    }
}

/// Vectors larger than the decoders' 32 KB output stage (8192 values), with a partial last
/// block: every bucket of a staged decode must land where it belongs. (The proptests above stay
/// below the stage size, where decoders write straight to the output.)
#[test]
fn large_vectors_decode_bucket_by_bucket() {
    let mut rng = Rng(777);
    for d in [2 * 8192, 3 * 8192 + 4100, 70_001] {
        let x = rng.vector(d);
        for bits in [1u32, 3, 4, 8] {
            let mut c = MinMaxCodec::new(bits, Rounding::Nearest, 1).unwrap();
            let mut out = Vec::new();
            c.encode(&x, &mut out).unwrap();
            let mut back = vec![f32::NAN; d];
            c.decode(&out, &[], &mut back).unwrap();
            for (xb, bb) in x.chunks(512).zip(back.chunks(512)) {
                let lo = xb.iter().cloned().fold(f32::INFINITY, f32::min);
                let hi = xb.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let step = (hi - lo) / ((1u32 << bits) - 1) as f32;
                for (a, b) in xb.iter().zip(bb) {
                    assert!(
                        (a - b).abs() <= 0.5 * step + 1e-5 * (1.0 + a.abs()),
                        "minmax:{bits} d={d}: x {a} got {b} step {step}"
                    );
                }
            }
        }
        let mut c = SignCodec::new();
        let mut out = Vec::new();
        c.encode(&x, &mut out).unwrap();
        let mut back = vec![f32::NAN; d];
        c.decode(&out, &[], &mut back).unwrap();
        for (xb, bb) in x.chunks(512).zip(back.chunks(512)) {
            let m = xb.iter().map(|v| v.abs() as f64).sum::<f64>() / xb.len() as f64;
            for (a, b) in xb.iter().zip(bb) {
                assert!((b.abs() as f64 - m).abs() <= 1e-5 * (1.0 + m), "sign d={d}");
                assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "sign d={d}");
            }
        }
        // TernGrad and QSGD stay within their bucket's scale.
        for s in ["terngrad", "qsgd:7"] {
            let mut c = s.parse::<CodecSpec>().unwrap().build(3).unwrap();
            let mut out = Vec::new();
            c.encode(&x, &mut out).unwrap();
            let mut back = vec![f32::NAN; d];
            c.decode(&out, &[], &mut back).unwrap();
            for (xb, bb) in x.chunks(512).zip(back.chunks(512)) {
                // TernGrad: |value| <= max |x|; QSGD: |value| <= ||x||_2 of the bucket.
                let m = if s == "terngrad" {
                    xb.iter().fold(0f32, |m, v| m.max(v.abs()))
                } else {
                    xb.iter().map(|v| v * v).sum::<f32>().sqrt()
                };
                for b in bb {
                    assert!(
                        b.is_finite() && b.abs() <= m * 1.0001 + 1e-6,
                        "{s} d={d}: {b} > {m}"
                    );
                }
            }
        }
    }
}
