//! Simulator throughput at n = 10^4 nodes on a small synthetic problem (least squares, d = 8,
//! 4 rows per node, one local step between interactions): interactions per second, beside a copy
//! of the same model bytes measured in the same run. Goal (issue 7): >= 10^6 interactions/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swarmsgd_core::{Interaction, LeastSquares, LocalSteps, SimConfig, Simulator};

const N: usize = 10_000;
const D: usize = 8;
const EVENTS: u64 = 200_000;

/// A 100 x 100 torus: 4 neighbours per node.
fn torus(side: usize) -> Vec<Vec<usize>> {
    (0..side * side)
        .map(|i| {
            let (r, c) = (i / side, i % side);
            vec![
                ((r + side - 1) % side) * side + c,
                ((r + 1) % side) * side + c,
                r * side + (c + side - 1) % side,
                r * side + (c + 1) % side,
            ]
        })
        .collect()
}

fn simulator(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_10k_nodes_d8");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));

    // Physical reference: reading one peer model (D f32) per interaction, as plain copies.
    let src = vec![1.0f32; N * D];
    let mut dst = vec![0.0f32; D];
    group.bench_function("copy_one_model_per_interaction", |b| {
        b.iter(|| {
            for k in 0..EVENTS as usize {
                let at = (k * 7919 % N) * D;
                dst.copy_from_slice(black_box(&src[at..at + D]));
                black_box(&mut dst);
            }
        })
    });

    let graph = torus(100);
    let objective = LeastSquares::consistent(N, 4, D, 1);
    for interaction in [
        Interaction::Pull,
        Interaction::Pairwise,
        Interaction::Blocking,
    ] {
        let cfg = SimConfig {
            interaction,
            local_steps: LocalSteps::Fixed(1),
            lr: 0.01,
            seed: 3,
        };
        let mut sim =
            Simulator::new(graph.clone(), objective.clone(), cfg, vec![0.0; D]).expect("sim");
        group.bench_function(format!("{interaction}_interactions"), |b| {
            b.iter(|| sim.run(EVENTS).expect("run"))
        });
    }
    group.finish();
}

criterion_group!(benches, simulator);
criterion_main!(benches);
