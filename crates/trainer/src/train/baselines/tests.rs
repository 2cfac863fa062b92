//! The defining invariant of each baseline, checked on its own state machinery.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::adpsgd::{bipartite_roles, Role};
use super::dpsgd::metropolis_weights;
use super::qsparse::Compressor;
use super::sgp::{exponential_peer, PushSum};

fn graph(kind: &str, n: usize) -> Vec<Vec<usize>> {
    let g = kind
        .parse::<topology::TopologySpec>()
        .expect("spec")
        .build(n, 1)
        .expect("graph");
    (0..n).map(|i| g.neighbours(i).to_vec()).collect()
}

fn random_vectors(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn mean(v: &[Vec<f32>]) -> Vec<f64> {
    swarm_core::mean_of(v.iter().map(|x| x.as_slice()))
}

#[test]
fn dpsgd_mixing_is_doubly_stochastic_and_keeps_the_average() {
    // A non-regular graph (star) makes Metropolis weights differ from uniform ones.
    for kind in ["star", "ring", "hypercube", "erdos-renyi:0.3"] {
        let nb = graph(kind, 16);
        let w = metropolis_weights(&nb);
        for (i, (own, row)) in w.iter().enumerate() {
            let total: f32 = own + row.iter().map(|(_, x)| x).sum::<f32>();
            assert!(
                (total - 1.0).abs() < 1e-6,
                "{kind}: row {i} sums to {total}"
            );
            assert!(*own >= 0.0);
            for &(j, x) in row {
                let back = w[j]
                    .1
                    .iter()
                    .find(|(k, _)| *k == i)
                    .expect("edge both ways")
                    .1;
                assert_eq!(x, back, "{kind}: W is symmetric");
            }
        }
        let x = random_vectors(16, 8, 3);
        let before = mean(&x);
        let mixed: Vec<Vec<f32>> = w
            .iter()
            .enumerate()
            .map(|(i, (own, row))| {
                (0..8)
                    .map(|c| own * x[i][c] + row.iter().map(|&(j, wj)| wj * x[j][c]).sum::<f32>())
                    .collect()
            })
            .collect();
        let after = mean(&mixed);
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() < 1e-5, "{kind}: mean moved {a} -> {b}");
        }
        assert!(
            swarm_core::spread(mixed.iter().map(|m| m.as_slice()))
                < swarm_core::spread(x.iter().map(|m| m.as_slice()))
        );
    }
}

#[test]
fn adpsgd_roles_split_every_edge_and_refuse_odd_cycles() {
    for (kind, n) in [("hypercube", 16), ("ring", 16), ("torus2d", 16)] {
        let nb = graph(kind, n);
        let roles = bipartite_roles(&nb).expect("bipartite");
        let active = roles.iter().filter(|r| **r == Role::Active).count();
        assert_eq!(active, n / 2, "{kind}");
        for (i, list) in nb.iter().enumerate() {
            for &j in list {
                assert_ne!(
                    roles[i], roles[j],
                    "{kind}: edge {i}-{j} joins two {:?}",
                    roles[i]
                );
            }
        }
    }
    for (kind, n) in [("ring", 5), ("complete", 4)] {
        let e = bipartite_roles(&graph(kind, n)).unwrap_err().to_string();
        assert!(e.contains("bipartite"), "{e}");
    }
}

#[test]
fn push_sum_conserves_mass_weights_sum_to_n_and_reaches_the_average() {
    let n = 12;
    let x0 = random_vectors(n, 6, 9);
    let target = mean(&x0);
    let mut nodes: Vec<PushSum> = x0.iter().map(|x| PushSum::new(x)).collect();
    let mut rng = StdRng::seed_from_u64(4);
    for k in 0..400u64 {
        // Only some nodes push in a round, so in-degrees differ and the weights leave 1.
        let mut inbox: Vec<(Vec<f32>, f64)> = vec![(vec![0.0; 6], 0.0); n];
        for (i, node) in nodes.iter_mut().enumerate() {
            if rng.random_bool(0.6) {
                node.halve();
                let peer = exponential_peer(i, k + i as u64, n);
                for (a, b) in inbox[peer].0.iter_mut().zip(&node.x) {
                    *a += b;
                }
                inbox[peer].1 += node.w;
            }
        }
        for (node, (x, w)) in nodes.iter_mut().zip(&inbox) {
            node.receive(x, *w);
        }
        let total_w: f64 = nodes.iter().map(|s| s.w).sum();
        assert!(
            (total_w - n as f64).abs() < 1e-9,
            "round {k}: weights sum to {total_w}"
        );
        let xs: Vec<Vec<f32>> = nodes.iter().map(|s| s.x.clone()).collect();
        let sums: Vec<f64> = mean(&xs);
        for (s, t) in sums.iter().zip(&target) {
            assert!((s - t).abs() < 1e-4, "round {k}: numerator mass moved");
        }
    }
    assert!(
        nodes.iter().any(|s| (s.w - 1.0).abs() > 1e-3),
        "weights stayed 1: test too weak"
    );
    for s in &nodes {
        let mut z = vec![0.0; 6];
        s.model_into(&mut z);
        for (a, b) in z.iter().zip(&target) {
            assert!((f64::from(*a) - b).abs() < 1e-3, "z {a} vs average {b}");
        }
    }
    // The directed exponential graph: offsets 1, 2, 4, 8 in turn for 16 nodes.
    let offsets: Vec<usize> = (0..5)
        .map(|k| (exponential_peer(3, k, 16) + 16 - 3) % 16)
        .collect();
    assert_eq!(offsets, vec![1, 2, 4, 8, 1]);
}

#[test]
fn error_feedback_residual_holds_exactly_what_compression_lost() {
    let d = 200;
    let inputs = random_vectors(30, d, 5);
    let spec: quant::CodecSpec = "topk:0.05".parse().expect("spec");
    let mut ef = Compressor::new(spec.build(1).expect("codec"), true);
    let mut plain = Compressor::new(spec.build(1).expect("codec"), false);
    let (mut fed, mut sent_ef, mut sent_plain) =
        (vec![0.0f64; d], vec![0.0f64; d], vec![0.0f64; d]);
    for x in &inputs {
        let (mut a, mut b) = (x.clone(), x.clone());
        let bytes = ef.compress(&mut a).expect("compress");
        plain.compress(&mut b).expect("compress");
        assert!(bytes < 4 * d as u64 / 2, "top-5% payload of {bytes} bytes");
        assert_eq!(a.iter().filter(|v| **v != 0.0).count(), 10);
        for c in 0..d {
            fed[c] += f64::from(x[c]);
            sent_ef[c] += f64::from(a[c]);
            sent_plain[c] += f64::from(b[c]);
        }
    }
    // With error feedback: decoded + residual = everything fed in.
    let residual = ef.residual();
    assert_eq!(residual.len(), d);
    let worst = (0..d)
        .map(|c| (sent_ef[c] + f64::from(residual[c]) - fed[c]).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "sum identity off by {worst}");
    assert!(
        residual.iter().any(|r| r.abs() > 0.1),
        "top-k must leave a residual"
    );
    // Without: nothing is kept, and what was dropped is lost.
    assert!(plain.residual().is_empty());
    let lost = (0..d)
        .map(|c| (sent_plain[c] - fed[c]).abs())
        .fold(0.0, f64::max);
    assert!(lost > 0.5, "plain top-k lost only {lost}");
}
