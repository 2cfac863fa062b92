//! Encode/decode throughput of every codec in GB/s of f32 input, beside a memcpy of the same
//! bytes and beside `bitpacking`'s BitPacker8x packing u32 at the same width, in one run.
//!
//! `cargo bench -p swarmsgd-quant --bench codecs -- --quick`; `QUANT_BENCH_SIZES=1M` limits the sizes.
#![allow(clippy::unwrap_used)] // tests and benches fail loudly by design

use std::hint::black_box;
use std::time::Duration;

use bitpacking::{BitPacker, BitPacker8x};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use swarmsgd_quant::{Codec, CodecSpec};

const SPECS: &[&str] = &[
    "lattice:8",
    "lattice:16",
    "lattice:4",
    "lattice:2",
    "minmax:8",
    "minmax:4",
    "minmax:2",
    "minmax:1",
    "minmax:4:stochastic",
    "sign",
    "terngrad",
    "qsgd:7",
    "qsgd:127",
    "topk:0.01",
    "randk:0.01",
    "topk:0.01+minmax:4",
    "ef(sign)",
];

fn data(d: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, d: usize) {
    g.throughput(Throughput::Bytes(4 * d as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(if d > 4_000_000 { 2 } else { 1 }));
}

fn sizes() -> Vec<(usize, &'static str)> {
    let all = [(1usize << 20, "1M"), (1usize << 24, "16M")];
    match std::env::var("QUANT_BENCH_SIZES") {
        Ok(v) => all
            .into_iter()
            .filter(|(_, n)| v.split(',').any(|s| s == *n))
            .collect(),
        Err(_) => all.to_vec(),
    }
}

fn codecs(c: &mut Criterion) {
    for (d, label) in sizes() {
        let x = data(d, 1);
        // The reader's vector: within 0.001 of the writer's in every coordinate.
        let y: Vec<f32> = x
            .iter()
            .zip(data(d, 2))
            .map(|(a, n)| a + n * 0.01)
            .collect();
        let mut g = c.benchmark_group(format!("codecs/{label}"));
        configure(&mut g, d);
        let mut dst = vec![0f32; d];
        g.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(black_box(&x))));
        let mut back = vec![0f32; d];
        for spec in SPECS {
            let mut codec: Box<dyn Codec> = spec.parse::<CodecSpec>().unwrap().build(7).unwrap();
            codec.observe_distance(0.001);
            let mut payload = Vec::new();
            codec.encode(&x, &mut payload).unwrap();
            g.bench_function(format!("{spec}/encode"), |b| {
                b.iter(|| codec.encode(black_box(&x), &mut payload).unwrap())
            });
            let rep = codec.decode(&payload, &y, &mut back).unwrap();
            assert!(rep.is_ok(), "{spec}: decode failed in the benchmark setup");
            g.bench_function(format!("{spec}/decode"), |b| {
                b.iter(|| codec.decode(black_box(&payload), &y, &mut back).unwrap())
            });
        }
        g.finish();
    }
}

fn packing(c: &mut Criterion) {
    for (d, label) in sizes() {
        let mut g = c.benchmark_group(format!("bitpack/{label}"));
        configure(&mut g, d);
        let mut dst = vec![0u32; d];
        let src: Vec<u32> = (0..d as u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        g.bench_function("memcpy", |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
        let bp = BitPacker8x::new();
        for bits in [1u32, 2, 4, 8, 16] {
            let codes: Vec<u32> = src.iter().map(|v| v >> (32 - bits)).collect();
            let mut ours = Vec::new();
            g.bench_function(format!("ours/{bits}/pack"), |b| {
                b.iter(|| swarmsgd_quant::pack_bits(black_box(&codes), bits, &mut ours).unwrap())
            });
            // Checked outside the timed closures, which a filter may skip.
            swarmsgd_quant::pack_bits(&codes, bits, &mut ours).unwrap();
            let mut back = vec![0u32; d];
            swarmsgd_quant::unpack_bits(&ours, bits, &mut back).unwrap();
            assert_eq!(back, codes);
            g.bench_function(format!("ours/{bits}/unpack"), |b| {
                b.iter(|| swarmsgd_quant::unpack_bits(black_box(&ours), bits, &mut back).unwrap())
            });
            let block = BitPacker8x::BLOCK_LEN;
            let mut theirs = vec![0u8; d * bits as usize / 8];
            let step = block * bits as usize / 8;
            g.bench_function(format!("bitpacker8x/{bits}/pack"), |b| {
                b.iter(|| {
                    for (cb, ob) in codes.chunks_exact(block).zip(theirs.chunks_exact_mut(step)) {
                        bp.compress(cb, ob, bits as u8);
                    }
                })
            });
            for (cb, ob) in codes.chunks_exact(block).zip(theirs.chunks_exact_mut(step)) {
                bp.compress(cb, ob, bits as u8);
            }
            back.fill(0);
            for (ob, cb) in back.chunks_exact_mut(block).zip(theirs.chunks_exact(step)) {
                bp.decompress(cb, ob, bits as u8);
            }
            assert_eq!(back, codes);
            g.bench_function(format!("bitpacker8x/{bits}/unpack"), |b| {
                b.iter(|| {
                    for (ob, cb) in back.chunks_exact_mut(block).zip(theirs.chunks_exact(step)) {
                        bp.decompress(cb, ob, bits as u8);
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, codecs, packing);
criterion_main!(benches);
