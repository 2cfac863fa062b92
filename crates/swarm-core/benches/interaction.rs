//! One in-process SwarmSGD interaction (read the peer's window + average + republish) on a
//! 10M-parameter model, beside a memcpy of the same bytes measured in the same run.
//! Goal: at most 2.5x the memcpy time (the landing copy, a check of the copy, then one pass that
//! averages and writes the result into the window).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quant::IdentityCodec;
use swarmsgd_core::{Completion, InProcessFabric, Interaction, LocalSteps, SwarmNode, Transport};

const DIM: usize = 10_000_000;

fn interaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("interaction_10M");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((DIM * 4) as u64));

    let src = vec![1.0f32; DIM];
    let mut dst = vec![0.0f32; DIM];
    group.bench_function("memcpy_40MB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });

    // The interaction's parts on the in-process fabric: the landing copy of a peer's window, and
    // a publish (both through the fabric's atomic words).
    let fabric = InProcessFabric::new(vec![vec![1], vec![0]], 4 * DIM).expect("fabric");
    let (mut owner, mut reader) = (
        fabric.endpoint(0).expect("endpoint"),
        fabric.endpoint(1).expect("endpoint"),
    );
    let bytes = vec![7u8; 4 * DIM];
    group.bench_function("inproc_publish_40MB", |b| {
        b.iter(|| owner.publish(black_box(&bytes)).expect("publish"))
    });
    let mut landing = Vec::new();
    group.bench_function("inproc_read_40MB", |b| {
        b.iter(|| {
            reader
                .start_read(0, 0, 4 * DIM, std::mem::take(&mut landing))
                .expect("read");
            while let Some(done) = reader.poll() {
                if let Completion::Read { buf, .. } = done {
                    landing = buf;
                }
            }
            black_box(&landing);
        })
    });

    for interaction in [Interaction::Pull, Interaction::Pairwise] {
        let fabric = InProcessFabric::new(vec![vec![1], vec![0]], 8 + 4 * DIM).expect("fabric");
        let node = |id: usize| {
            SwarmNode::new(
                fabric.endpoint(id).expect("endpoint"),
                vec![1 - id],
                DIM,
                interaction,
                LocalSteps::Fixed(1),
                Box::new(IdentityCodec),
                7,
            )
            .expect("node")
            // The trainer's default: copies and corrections are also checked for distance.
            .with_max_peer_distance(1000.0)
        };
        let (mut a, mut b) = (node(0), node(1));
        let mut xa = vec![0.5f32; DIM];
        let mut xb = vec![1.5f32; DIM];
        a.publish(&xa).expect("publish");
        b.publish(&xb).expect("publish");
        group.bench_function(format!("{interaction}_read_average_publish"), |bench| {
            bench.iter(|| {
                a.interact_with(1, &mut xa).expect("interaction");
                // Keep the partner's slot free so pairwise always delivers.
                b.step_boundary(&mut xb).expect("fold");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, interaction);
criterion_main!(benches);
