//! Properties of the averaging itself, checked on the deterministic simulator.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmsgd_core::{spread, Interaction, LeastSquares, LocalSteps, SimConfig, Simulator};

fn ring(n: usize) -> Vec<Vec<usize>> {
    (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect()
}

fn random_models(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn mean(models: &[Vec<f32>]) -> Vec<f64> {
    swarmsgd_core::mean_of(models.iter().map(|m| m.as_slice()))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn averaging_only(n: usize, interaction: Interaction, seed: u64) -> Simulator<LeastSquares> {
    let cfg = SimConfig {
        interaction,
        local_steps: LocalSteps::Fixed(1),
        lr: 0.0,
        seed,
    };
    Simulator::with_models(
        ring(n),
        LeastSquares::consistent(n, 1, 8, seed),
        cfg,
        random_models(n, 8, seed),
    )
    .expect("valid simulation")
}

#[test]
fn blocking_averaging_keeps_the_mean_and_shrinks_the_spread_geometrically() {
    let n = 16;
    let lambda2 = 2.0 - 2.0 * (2.0 * std::f64::consts::PI / n as f64).cos();
    // A uniformly random edge of the ring (|E| = n) averaged per event: E[spread] shrinks by at
    // least (1 - lambda2 / (2|E|)) per event (Boyd et al., randomized gossip).
    let rate = 1.0 - lambda2 / (2.0 * n as f64);
    let events = 2000u64;
    let mut log_ratio_sum = 0.0;
    let seeds = 8;
    for seed in 0..seeds {
        let mut sim = averaging_only(n, Interaction::Blocking, seed);
        let mean0 = mean(sim.models());
        let spread0 = sim.spread();
        let mut previous = spread0;
        for _ in 0..events {
            sim.run(1).unwrap();
            let now = sim.spread();
            // f32 rounding may add ~1e-10 of the starting spread per event.
            assert!(
                now <= previous + 1e-8 * spread0,
                "spread grew from {previous} to {now}"
            );
            previous = now;
        }
        assert!(
            max_abs_diff(&mean(sim.models()), &mean0) < 1e-5,
            "mean moved"
        );
        assert_eq!(sim.stats().interactions, events);
        log_ratio_sum += (sim.spread() / spread0).ln();
    }
    let observed = (log_ratio_sum / seeds as f64).exp();
    let bound = rate.powi(events as i32);
    assert!(
        observed < 1e-3,
        "spread only shrank to {observed} of its start"
    );
    assert!(
        observed <= 2.0 * bound,
        "spread ratio {observed} exceeds the gossip bound {bound}"
    );
}

#[test]
fn pairwise_averaging_conserves_the_mean_once_corrections_are_folded() {
    let n = 12;
    let mut sim = averaging_only(n, Interaction::Pairwise, 5);
    let mean0 = mean(sim.models());
    for _ in 0..50 {
        sim.run(40).unwrap();
        // Models plus in-flight corrections always sum to the start.
        assert!(max_abs_diff(&sim.mean_with_pending(), &mean0) < 1e-5);
    }
    sim.settle().unwrap();
    assert!(
        max_abs_diff(&mean(sim.models()), &mean0) < 1e-5,
        "mean not conserved"
    );
    assert!(sim.spread() < 0.1 * spread(random_models(n, 8, 5).iter().map(|m| m.as_slice())));
}

#[test]
fn pull_averaging_contracts_but_does_not_conserve_the_mean() {
    let n = 12;
    let mut sim = averaging_only(n, Interaction::Pull, 9);
    let spread0 = sim.spread();
    sim.run(3000).unwrap();
    assert!(sim.spread() < 1e-3 * spread0);
}

#[test]
fn unpublished_windows_are_never_averaged_in() {
    let n = 4;
    let mut sim = averaging_only(n, Interaction::Pull, 2);
    sim.unpublish(1);
    let before = sim.models()[0].clone();
    sim.interact(0, 1).unwrap();
    assert_eq!(sim.models()[0], before);
    assert_eq!(sim.stats().skipped_unpublished, 1);
    assert_eq!(sim.stats().interactions, 0);
}

fn least_squares_run(interaction: Interaction, graph: Vec<Vec<usize>>, events: u64) -> f64 {
    let n = graph.len();
    let objective = LeastSquares::consistent(n, 4, 16, 42);
    let cfg = SimConfig {
        interaction,
        local_steps: LocalSteps::Geometric(2.0),
        lr: 0.05,
        seed: 3,
    };
    let mut sim = Simulator::new(graph, objective, cfg, vec![0.0; 16]).unwrap();
    sim.run(events).unwrap();
    let optimum = sim.objective().optimum().to_vec();
    sim.max_distance_to(&optimum)
}

#[test]
fn least_squares_on_a_64_node_ring_every_node_reaches_the_optimum() {
    // Each node holds 4 rows of a 16-dimensional problem: alone it cannot identify the optimum.
    let isolated: Vec<Vec<usize>> = vec![Vec::new(); 64];
    let alone = least_squares_run(Interaction::Pull, isolated, 200_000);
    assert!(
        alone > 0.5,
        "isolated nodes should not find the optimum (distance {alone})"
    );
    for interaction in [
        Interaction::Blocking,
        Interaction::Pairwise,
        Interaction::Pull,
    ] {
        let distance = least_squares_run(interaction, ring(64), 1_500_000);
        assert!(
            distance < 1e-2,
            "{interaction}: farthest node is {distance} from the optimum"
        );
    }
}
