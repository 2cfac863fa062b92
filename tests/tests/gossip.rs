//! The simulator on graphs from `topology`, with codecs from `quant`: the three crates together.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use quant::CodecSpec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarm_core::{Interaction, LeastSquares, LocalSteps, SimConfig, Simulator};
use topology::TopologySpec;

fn adjacency(spec: &str, n: usize) -> (topology::Graph, Vec<Vec<usize>>) {
    let graph = spec.parse::<TopologySpec>().unwrap().build(n, 7).unwrap();
    let lists = (0..n).map(|i| graph.neighbours(i).to_vec()).collect();
    (graph, lists)
}

fn random_models(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

#[test]
fn gossip_contracts_at_least_as_fast_as_the_spectral_bound_of_each_topology() {
    for (spec, n) in [
        ("hypercube", 32),
        ("regular:4", 40),
        ("torus2d", 36),
        ("exponential", 32),
    ] {
        let (graph, lists) = adjacency(spec, n);
        let r = graph.is_regular().expect("these topologies are regular");
        let lambda2 = topology::spectral::lambda2(&graph).value;
        // An activated node averages with a uniform neighbour: on an r-regular graph that is a
        // uniformly random edge, and E[spread] shrinks by (1 - lambda2 / (2|E|)) per event at least.
        let edges = (n * r / 2) as f64;
        let rate = 1.0 - lambda2 / (2.0 * edges);
        let events = 1500u64;
        let mut log_ratio = 0.0;
        for seed in 0..6 {
            let cfg = SimConfig {
                interaction: Interaction::Blocking,
                local_steps: LocalSteps::Fixed(1),
                lr: 0.0,
                seed,
            };
            let objective = LeastSquares::consistent(n, 1, 4, seed);
            let mut sim =
                Simulator::with_models(lists.clone(), objective, cfg, random_models(n, 4, seed))
                    .unwrap();
            let start = sim.spread();
            sim.run(events).unwrap();
            log_ratio += (sim.spread() / start).ln() / 6.0;
        }
        let bound = rate.powi(events as i32);
        assert!(
            log_ratio.exp() <= 2.0 * bound,
            "{spec}: spread ratio {} above bound {bound}",
            log_ratio.exp()
        );
    }
}

#[test]
fn lattice_quantized_pairwise_averaging_conserves_the_mean_and_reaches_the_optimum() {
    let n = 16;
    let (_, ring) = adjacency("ring", n);
    let spec: CodecSpec = "lattice:8".parse().unwrap();
    let run = |codec: Option<&CodecSpec>| {
        let objective = LeastSquares::consistent(n, 4, 16, 5);
        let cfg = SimConfig {
            interaction: Interaction::Pairwise,
            local_steps: LocalSteps::Fixed(2),
            lr: 0.05,
            seed: 2,
        };
        let mut sim = Simulator::new(ring.clone(), objective, cfg, vec![0.0; 16]).unwrap();
        if let Some(spec) = codec {
            let codecs = (0..n).map(|_| spec.build(9).unwrap()).collect();
            sim = sim.with_codecs(codecs).unwrap();
        }
        sim.run(300_000).unwrap();
        sim.settle().unwrap();
        let optimum = sim.objective().optimum().to_vec();
        (sim.max_distance_to(&optimum), sim.stats().clone())
    };
    let (exact_distance, exact) = run(None);
    let (quantized_distance, quantized) = run(Some(&spec));
    assert!(
        exact_distance < 1e-2,
        "full precision ends {exact_distance} from the optimum"
    );
    assert!(
        quantized_distance < 2e-2,
        "lattice:8 ends {quantized_distance} from the optimum"
    );
    // Each pairwise interaction reads one encoded model and writes one full-precision correction
    // (8-byte header + 4 bytes per value); a failed decode also reads the full-precision copy.
    let d = 16u64;
    let correction = 8 + 4 * d;
    assert_eq!(
        exact.bytes,
        exact.interactions * (spec_len(&"none".parse().unwrap(), d) + correction)
    );
    assert_eq!(
        quantized.bytes,
        quantized.interactions * (spec_len(&spec, d) + correction)
            + quantized.decode_fallbacks * 4 * d
    );
    assert!(
        quantized.decode_fallbacks * 20 < quantized.interactions,
        "{quantized:?}"
    );
}

#[test]
fn quantized_pairwise_averaging_without_gradients_conserves_the_mean_exactly() {
    let n = 12;
    let (_, lists) = adjacency("regular:3", n);
    let cfg = SimConfig {
        interaction: Interaction::Pairwise,
        local_steps: LocalSteps::Fixed(1),
        lr: 0.0,
        seed: 4,
    };
    let models = random_models(n, 64, 4);
    let mean0 = swarm_core::mean_of(models.iter().map(|m| m.as_slice()));
    let spec: CodecSpec = "lattice:6".parse().unwrap();
    let codecs = (0..n).map(|_| spec.build(1).unwrap()).collect();
    let mut sim = Simulator::with_models(lists, LeastSquares::consistent(n, 1, 64, 1), cfg, models)
        .unwrap()
        .with_codecs(codecs)
        .unwrap();
    sim.run(5000).unwrap();
    sim.settle().unwrap();
    let mean = swarm_core::mean_of(sim.models().iter().map(|m| m.as_slice()));
    let drift = mean
        .iter()
        .zip(&mean0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(drift < 1e-5, "the mean drifted by {drift}");
    assert!(sim.spread() < 1e-3, "spread {}", sim.spread());
}

fn spec_len(spec: &CodecSpec, d: u64) -> u64 {
    spec.encoded_len(d as usize) as u64
}
