//! The TCP transport on loopback: a read of a 4 MB window (1M f32 parameters) and a whole pull
//! interaction through `SwarmNode`, beside a memcpy of the same bytes measured in the same run;
//! and the round trip of a tiny request (the latency floor of every operation).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swarmsgd_core::{Completion, Interaction, LocalSteps, SwarmNode, Transport};
use swarmsgd_quant::IdentityCodec;
use swarmsgd_tcp::{JobAuth, TcpEndpoint};

const DIM: usize = 1 << 20;

fn pair(capacity: usize) -> (TcpEndpoint, TcpEndpoint) {
    let job = JobAuth::new(1, [3; 32]);
    let addr = "127.0.0.1:0".parse().expect("address");
    let mut a = TcpEndpoint::bind(0, addr, capacity, job.clone()).expect("bind");
    let mut b = TcpEndpoint::bind(1, addr, capacity, job).expect("bind");
    a.connect_peers(&[(1, b.local_addr())]).expect("peers");
    b.connect_peers(&[(0, a.local_addr())]).expect("peers");
    (a, b)
}

fn read(t: &mut TcpEndpoint, len: usize, buf: Vec<u8>) -> Vec<u8> {
    let op = t.start_read(1, 0, len, buf).expect("start");
    for empty_polls in 1.. {
        if let Some(Completion::Read {
            op: done,
            buf,
            result,
            ..
        }) = t.poll()
        {
            assert_eq!(done, op);
            result.expect("read");
            return buf;
        }
        t.idle(empty_polls);
    }
    unreachable!("a read completes or fails")
}

fn loopback(c: &mut Criterion) {
    let bytes = 4 * DIM;
    let mut group = c.benchmark_group("loopback_4MB");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes as u64));

    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    group.bench_function("memcpy_4MB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });

    let (mut a, mut b) = pair(bytes);
    b.publish(&src).expect("publish");
    let mut buf = Vec::with_capacity(bytes);
    group.bench_function("tcp_read_4MB", |bench| {
        bench.iter(|| {
            buf = read(&mut a, bytes, std::mem::take(&mut buf));
            black_box(&buf);
        })
    });
    drop((a, b));

    let (ea, eb) = pair(8 + bytes);
    let node = |e: TcpEndpoint, peer: usize| {
        SwarmNode::new(
            e,
            vec![peer],
            DIM,
            Interaction::Pull,
            LocalSteps::Fixed(1),
            Box::new(IdentityCodec),
            7,
        )
        .expect("node")
    };
    let (mut na, mut nb) = (node(ea, 1), node(eb, 0));
    let mut xa = vec![0.5f32; DIM];
    let xb = vec![1.5f32; DIM];
    na.publish(&xa).expect("publish");
    nb.publish(&xb).expect("publish");
    group.bench_function("pull_read_average_publish", |bench| {
        bench.iter(|| {
            assert!(na.interact_with(1, &mut xa).expect("interaction"));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("loopback_round_trip");
    let (mut a, mut b) = pair(64);
    b.publish(&[7u8; 8]).expect("publish");
    let mut buf = Vec::with_capacity(8);
    group.bench_function("tcp_read_8B", |bench| {
        bench.iter(|| {
            buf = read(&mut a, 8, std::mem::take(&mut buf));
        })
    });
    group.bench_function("slot_free_query", |bench| {
        bench.iter(|| assert!(a.slot_free_at(1).expect("query")))
    });
    group.finish();
}

criterion_group!(benches, loopback);
criterion_main!(benches);
