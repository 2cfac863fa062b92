//! Generators and spectral solvers against closed forms.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::f64::consts::PI;

use swarmsgd_topology::analysis::{self, Stats};
use swarmsgd_topology::spectral::{self, Method, SpectralOptions};
use swarmsgd_topology::{Graph, TopologyError, TopologySpec};

fn build(spec: &str, n: usize, seed: u64) -> Graph {
    spec.parse::<TopologySpec>()
        .unwrap()
        .build(n, seed)
        .unwrap_or_else(|e| panic!("{spec} n={n}: {e}"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn lanczos_opts() -> SpectralOptions {
    SpectralOptions {
        dense_max_n: 0,
        tol: 1e-10,
        max_matvecs: 20_000,
        ..SpectralOptions::default()
    }
}

fn ring_l2(n: usize) -> f64 {
    2.0 - 2.0 * (2.0 * PI / n as f64).cos()
}

#[test]
fn ring_lambda2() {
    for n in [3, 4, 5, 10, 33, 100, 257] {
        let g = build("ring", n, 0);
        assert_eq!(g.is_regular(), Some(2));
        let l = spectral::lambda2(&g);
        assert_eq!(l.method, Method::Dense);
        assert!(
            close(l.value, ring_l2(n), 1e-9),
            "n={n}: {} vs {}",
            l.value,
            ring_l2(n)
        );
    }
    // Lanczos on a ring large enough to leave the dense path (small gap: hard case).
    let g = build("ring", 700, 0);
    let l = spectral::lambda2(&g);
    assert_eq!(l.method, Method::Lanczos);
    assert!(close(l.value, ring_l2(700), 1e-4), "{l:?}");
}

#[test]
fn hypercube_lambda2_is_two() {
    for d in 1..=10 {
        let n = 1 << d;
        let g = build("hypercube", n, 0);
        assert_eq!(g.is_regular(), Some(d));
        let l = spectral::lambda2(&g);
        assert!(close(l.value, 2.0, 1e-9), "d={d}: {l:?}");
    }
    let g = build("hypercube", 1 << 12, 0);
    let l = spectral::lambda2_with(&g, &lanczos_opts());
    assert!(l.converged && close(l.value, 2.0, 1e-8), "{l:?}");
}

#[test]
fn complete_lambda2_is_n() {
    for n in [2, 3, 7, 50, 200] {
        let g = build("complete", n, 0);
        assert_eq!(g.num_edges(), n * (n - 1) / 2);
        assert!(close(spectral::lambda2(&g).value, n as f64, 1e-9));
    }
    let g = build("complete", 300, 0);
    let l = spectral::lambda2_with(&g, &lanczos_opts());
    assert!(close(l.value, 300.0, 1e-8), "{l:?}");
}

#[test]
fn torus_lambda2_from_factors() {
    // Cartesian product: the spectrum is all sums, so lambda2 = min over factors of lambda2.
    for (a, b) in [(3, 4), (5, 5), (4, 9), (6, 16)] {
        let g = build(&format!("torus2d:{a}x{b}"), 0, 0);
        assert_eq!(g.n(), a * b);
        assert_eq!(g.is_regular(), Some(4));
        let expect = ring_l2(a).min(ring_l2(b));
        let got = spectral::lambda2(&g).value;
        assert!(close(got, expect, 1e-9), "{a}x{b}: {got} vs {expect}");
    }
    let g = build("torus3d:3x4x5", 0, 0);
    assert_eq!(g.is_regular(), Some(6));
    let expect = ring_l2(3).min(ring_l2(4)).min(ring_l2(5));
    assert!(close(spectral::lambda2(&g).value, expect, 1e-9));
    // Default factorization: 64 = 8x8 and 64 = 4x4x4.
    let g = build("torus2d", 64, 0);
    assert!(close(spectral::lambda2(&g).value, ring_l2(8), 1e-9));
    let g = build("torus3d", 64, 0);
    assert!(close(spectral::lambda2(&g).value, ring_l2(4), 1e-9));
    // Large torus through Lanczos: 40x40.
    let g = build("torus2d:40x40", 0, 0);
    let l = spectral::lambda2_with(&g, &lanczos_opts());
    assert!(close(l.value, ring_l2(40), 1e-6), "{l:?}");
}

#[test]
fn slim_fly_degree_and_diameter() {
    for q in [3usize, 5, 7, 11, 13] {
        let g = build(&format!("slimfly:{q}"), 0, 0);
        assert_eq!(g.n(), 2 * q * q);
        let delta: i64 = if q % 4 == 1 { 1 } else { -1 };
        let degree = ((3 * q as i64 - delta) / 2) as usize;
        assert_eq!(g.is_regular(), Some(degree), "q={q}");
        let d = analysis::diameter(&g, usize::MAX, 0, 0).unwrap();
        assert!(d.exact);
        assert_eq!(d.lower, 2, "q={q}");
    }
    let e = "slimfly:9"
        .parse::<TopologySpec>()
        .unwrap()
        .build(0, 0)
        .unwrap_err();
    assert!(e.to_string().contains("`q`"), "{e}");
    let e = "slimfly:5"
        .parse::<TopologySpec>()
        .unwrap()
        .build(49, 0)
        .unwrap_err();
    assert!(
        e.to_string().contains("`n`") && e.to_string().contains("50"),
        "{e}"
    );
}

#[test]
fn random_regular_simple_regular_connected() {
    for (n, r) in [
        (10, 3),
        (50, 3),
        (100, 4),
        (101, 4),
        (200, 7),
        (1000, 8),
        (64, 63),
        (20, 2),
    ] {
        for seed in 0..3 {
            let g = build(&format!("regular:{r}"), n, seed);
            assert_eq!(g.n(), n);
            assert_eq!(g.is_regular(), Some(r), "n={n} r={r}");
            assert!(analysis::is_connected(&g));
            for i in 0..n {
                let nb = g.neighbours(i);
                assert!(!nb.contains(&i), "self-loop");
                assert!(nb.windows(2).all(|w| w[0] < w[1]), "multi-edge or unsorted");
            }
            // Symmetric.
            for (u, v) in g.edges() {
                assert!(g.has_edge(v, u));
            }
        }
    }
    // Deterministic per seed, different across seeds.
    assert_eq!(build("regular:8", 500, 1), build("regular:8", 500, 1));
    assert_ne!(build("regular:8", 500, 1), build("regular:8", 500, 2));
}

#[test]
fn other_generators() {
    let g = build("star", 10, 0);
    assert_eq!(g.degree(0), 9);
    assert!(close(spectral::lambda2(&g).value, 1.0, 1e-9));
    // Exponential graph: n = 2^d gives degree 2d - 1.
    let g = build("exponential", 64, 0);
    assert_eq!(g.is_regular(), Some(11));
    assert!(g.has_edge(0, 32) && g.has_edge(0, 63) && g.has_edge(5, 37));
    let g = build("exponential", 12, 0);
    assert!(analysis::is_connected(&g));
    let g = build("erdos-renyi:0.1", 300, 3);
    assert!(analysis::is_connected(&g));
    let mean = g.degree_stats().mean;
    assert!((mean - 29.9).abs() < 4.0, "{mean}");
    assert_eq!(build("erdos-renyi", 500, 1), build("erdos-renyi", 500, 1));
}

#[test]
fn sparse_agrees_with_dense() {
    let cases = [
        ("regular:3", 300),
        ("regular:8", 400),
        ("erdos-renyi:0.05", 300),
        ("exponential", 300),
        ("torus3d", 343),
        ("star", 200),
    ];
    for (spec, n) in cases {
        let g = build(spec, n, 11);
        let dense = spectral::lambda2_dense(&g);
        let sparse = spectral::lambda2_with(&g, &lanczos_opts());
        assert_eq!(sparse.method, Method::Lanczos);
        assert!(
            sparse.value >= dense - 1e-9,
            "{spec}: Ritz value below lambda2"
        );
        assert!(
            close(sparse.value, dense, 1e-7),
            "{spec}: lanczos {sparse:?} vs dense {dense}"
        );
    }
}

#[test]
fn disconnected_and_tiny() {
    let g = Graph::from_edges(4, &[(0, 1), (2, 3)]).unwrap();
    assert_eq!(spectral::lambda2(&g).value, 0.0);
    let s = Stats::compute(&g);
    assert!(!s.connected);
    assert_eq!(s.components, 2);
    assert!(s.diameter.is_none() && s.mixing.is_none());
    assert!(s.to_string().contains("2 components"));
    let one = build("complete", 1, 0);
    assert_eq!(one.num_edges(), 0);
    assert_eq!(spectral::lambda2(&one).value, 0.0);
}

#[test]
fn stats_display_and_json() {
    let g = build("regular:4", 2000, 5);
    let s = Stats::compute(&g);
    assert!(s.connected && s.regular == Some(4));
    let l2 = s.lambda2.as_ref().unwrap();
    assert!(l2.converged, "{l2:?}");
    // Alon-Boppana / Friedman: lambda2 of a random 4-regular graph is close to 4 - 2 sqrt(3).
    assert!(
        l2.value > 0.4 && l2.value <= 4.0 - 2.0 * 3f64.sqrt() + 0.05,
        "{l2:?}"
    );
    let m = s.mixing.as_ref().unwrap();
    let expect = 1.0 - l2.value / (2.0 * g.num_edges() as f64);
    assert!(close(m.contraction_per_interaction, expect, 1e-12));
    let text = s.to_string();
    assert!(
        text.contains("4-regular") && text.contains("lambda2"),
        "{text}"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["nodes"], 2000);
    assert_eq!(json["regular"], 4);
}

#[test]
fn mixing_bound_matches_simulated_gossip() {
    // On a ring of 12 the bound E|x - mean|^2 <= (1 - lambda2/(2|E|))^t |x0 - mean|^2 must hold
    // (checked by Monte-Carlo with slack for sampling noise).
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let g = build("ring", 12, 0);
    let l2 = spectral::lambda2(&g).value;
    let bound = analysis::MixingBound::new(g.n(), g.num_edges(), l2).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let steps = 40;
    let trials = 4000;
    let mut x0: Vec<f64> = (0..12).map(|i| if i < 6 { 1.0 } else { -1.0 }).collect();
    let mean0 = x0.iter().sum::<f64>() / 12.0;
    x0.iter_mut().for_each(|x| *x -= mean0);
    let e0: f64 = x0.iter().map(|x| x * x).sum();
    let mut acc = 0.0;
    for _ in 0..trials {
        let mut x = x0.clone();
        for _ in 0..steps {
            let (i, j) = g.sample_edge(&mut rng).unwrap();
            let m = (x[i] + x[j]) / 2.0;
            x[i] = m;
            x[j] = m;
        }
        acc += x.iter().map(|v| v * v).sum::<f64>();
    }
    let measured = acc / trials as f64 / e0;
    let predicted = bound.contraction_per_interaction.powi(steps);
    assert!(measured <= predicted * 1.05, "{measured} > {predicted}");
    let _ = rng.random::<u8>();
}

fn err_of(spec: &str, n: usize) -> String {
    match spec.parse::<TopologySpec>() {
        Ok(s) => s.build(n, 0).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn impossible_parameters_are_named() {
    let cases = [
        ("regular:3", 11, "`r`", "even"),
        ("regular:10", 10, "`r`", "< n"),
        ("regular", 10, "`r`", "degree"),
        ("ring", 0, "`n`", "n >= 1"),
        ("regular:4", 0, "`n`", "n >= 1"),
        ("hypercube", 12, "`n`", "power of two"),
        ("torus2d", 13, "`n`", "torus2d:RxC"),
        ("torus2d:3x4", 13, "`n`", "12"),
        ("erdos-renyi:0", 10, "`p`", "connected"),
        ("slimfly:4", 0, "`q`", "odd prime"),
        ("complete", 1_000_000, "`n`", "edges"),
    ];
    for (spec, n, param, phrase) in cases {
        let e = err_of(spec, n);
        assert!(e.contains(param) && e.contains(phrase), "{spec} n={n}: {e}");
    }
    assert!(err_of("regular:x", 10).contains("non-negative integer"));
    assert!(err_of("erdos-renyi:2", 10).contains("[0, 1]"));
    let e = TopologySpec::Ring.with_degree(3).unwrap_err().to_string();
    assert!(e.contains("`degree`"), "{e}");
    let spec = "regular"
        .parse::<TopologySpec>()
        .unwrap()
        .with_degree(6)
        .unwrap();
    assert_eq!(spec.to_string(), "regular:6");
}

#[test]
fn malformed_edge_lists_name_the_line() {
    use swarmsgd_topology::export::parse_edge_list;
    let cases = [
        ("0 1\n1 2 3\n", 2, "two node ids"),
        ("0 1\n# ok\n1 x\n", 3, "`x` is not a non-negative integer"),
        ("0 1\n2 2\n", 2, "self-loop"),
        (
            "0 1\n1 2\n1 0\n",
            3,
            "duplicate edge 0-1 (first given on line 1)",
        ),
        ("# n=3\n0 1\n1 5\n", 3, "out of range"),
        ("# n=abc\n0 1\n", 1, "node count"),
        ("0 -1\n", 1, "`-1`"),
    ];
    for (text, line, phrase) in cases {
        let e = parse_edge_list(text, "g.txt").unwrap_err();
        match &e {
            TopologyError::EdgeList { line: l, .. } => assert_eq!(*l, line, "{e}"),
            other => panic!("unexpected {other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("g.txt:{line}:")) && msg.contains(phrase),
            "{msg}"
        );
    }
}

#[test]
fn file_spec_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.txt");
    let g = build("regular:3", 20, 4);
    std::fs::write(&path, swarmsgd_topology::export::to_edge_list(&g)).unwrap();
    let spec: TopologySpec = format!("file:{}", path.display()).parse().unwrap();
    assert_eq!(spec.build(0, 0).unwrap(), g);
    assert_eq!(spec.build(20, 0).unwrap(), g);
    assert!(spec.build(21, 0).unwrap_err().to_string().contains("`n`"));
    let missing: TopologySpec = "file:/nonexistent/x.txt".parse().unwrap();
    assert!(missing
        .build(0, 0)
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/x.txt"));
}
