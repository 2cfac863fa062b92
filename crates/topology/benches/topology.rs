//! Benchmarks: random regular generation at 10^6 nodes and the sparse spectral gap at 10^5 nodes,
//! next to a memcpy of the adjacency array as a physical reference.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swarmsgd_topology::spectral::{self, SpectralOptions};
use swarmsgd_topology::TopologySpec;

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let n = 1_000_000;
    let spec: TopologySpec = "regular:8".parse().expect("spec");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("regular8_n1e6", |b| {
        let mut seed = 0;
        b.iter(|| {
            seed += 1;
            black_box(spec.build(n, seed).expect("build"))
        })
    });
    // Physical reference: copying the finished adjacency array (n * 8 usize = 64 MB).
    let g = spec.build(n, 0).expect("build");
    let adj = g.adjacency().to_vec();
    group.throughput(Throughput::Bytes(
        std::mem::size_of_val(adj.as_slice()) as u64
    ));
    group.bench_function("memcpy_adjacency_64MB", |b| {
        b.iter(|| black_box(adj.clone()))
    });
    group.finish();
}

fn spectral_gap(c: &mut Criterion) {
    let mut group = c.benchmark_group("lambda2");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    let n = 100_000;
    let opts = SpectralOptions::default();
    for spec in ["regular:8", "exponential"] {
        let g = spec
            .parse::<TopologySpec>()
            .expect("spec")
            .build(n, 1)
            .expect("build");
        let l = spectral::lambda2_with(&g, &opts);
        eprintln!("{spec} n={n}: {l:?}");
        group.bench_function(format!("lanczos_{spec}_n1e5"), |b| {
            b.iter(|| black_box(spectral::lambda2_with(&g, &opts)))
        });
    }
    group.finish();
}

criterion_group!(benches, generation, spectral_gap);
criterion_main!(benches);
