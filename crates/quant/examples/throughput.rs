//! Interleaved encode/decode throughput beside memcpy and a read-only pass, for noisy shared
//! machines: every repetition runs memcpy, the read pass and each codec back to back, and the
//! minimum and median over repetitions are reported, as GB/s of f32 input and as ratios to
//! memcpy's minimum / median. (The criterion bench `benches/codecs.rs` is the reference table.)
//!
//! Two more physical references bound what a decoder written in safe Rust can reach: a widening
//! pass (one byte in, one f32 out: the least work any 8-bit decoder does) and the same pass
//! adding a reference vector (the least work of a lattice decoder). Their stores are ordinary
//! ones, which read each output line before writing it; memcpy's are not.
//!
//! `cargo run --release -p quant --example throughput -- 16M 12 lattice:8 minmax:8 minmax:4 sign`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use swarmsgd_quant::{Codec, CodecSpec};

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

fn size(s: &str) -> usize {
    match s.strip_suffix('M') {
        Some(m) => m.parse::<usize>().unwrap() << 20,
        None => s.parse().unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let d = size(args.first().map_or("16M", |s| s.as_str()));
    let reps: usize = args.get(1).map_or(12, |s| s.parse().unwrap());
    let default = ["lattice:8", "minmax:8", "minmax:4", "sign"]
        .map(String::from)
        .to_vec();
    let specs = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        default
    };
    let x = data(d, 1);
    // The reader's vector: within 0.001 of the writer's in every coordinate.
    let y: Vec<f32> = x
        .iter()
        .zip(data(d, 2))
        .map(|(a, n)| a + n * 0.01)
        .collect();
    let mut dst = vec![0f32; d];
    let mut back = vec![0f32; d];
    let mut codecs: Vec<(String, Box<dyn Codec>, Vec<u8>)> = specs
        .iter()
        .map(|s| {
            let mut c = s.parse::<CodecSpec>().unwrap().build(7).unwrap();
            c.observe_distance(0.001);
            let mut p = Vec::new();
            c.encode(&x, &mut p).unwrap();
            assert!(
                c.decode(&p, &y, &mut back).unwrap().is_ok(),
                "{s}: decode failed"
            );
            (s.clone(), c, p)
        })
        .collect();
    let bytes: Vec<u8> = x.iter().map(|v| (v.to_bits() >> 13) as u8).collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4 + 2 * codecs.len()];
    let mut timed = |slot: usize, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        times[slot].push(t.elapsed().as_secs_f64());
    };
    for _ in 0..reps {
        timed(0, &mut || dst.copy_from_slice(black_box(&x)));
        timed(1, &mut || {
            let mut acc = [0f32; 32];
            for c in black_box(&x).chunks_exact(32) {
                for j in 0..32 {
                    acc[j] += c[j];
                }
            }
            black_box(acc);
        });
        timed(2, &mut || {
            for (o, &b) in back.iter_mut().zip(black_box(&bytes)) {
                *o = f32::from(b) * 0.5 - 64.0;
            }
        });
        timed(3, &mut || {
            for ((o, &b), &r) in back.iter_mut().zip(black_box(&bytes)).zip(&y) {
                *o = f32::from(b) * 0.5 + r;
            }
        });
        for (i, (_, c, p)) in codecs.iter_mut().enumerate() {
            timed(4 + 2 * i, &mut || c.encode(black_box(&x), p).unwrap());
            timed(5 + 2 * i, &mut || {
                c.decode(black_box(p), &y, &mut back).unwrap();
            });
        }
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let gb = |t: f64| 4.0 * d as f64 / t / 1e9;
    let (m0, med0) = stat(&mut times[0]);
    println!("d = {d}, {reps} repetitions; GB/s of f32 input (ratio to memcpy)");
    println!(
        "{:28} min {:6.2}          med {:6.2}",
        "memcpy",
        gb(m0),
        gb(med0)
    );
    let mut names = vec![
        "read-only pass".to_string(),
        "bound: widen u8 -> f32".to_string(),
        "bound: widen + reference".to_string(),
    ];
    for (n, _, _) in &codecs {
        names.push(format!("{n}/encode"));
        names.push(format!("{n}/decode"));
    }
    for (i, name) in names.iter().enumerate() {
        let (m, med) = stat(&mut times[1 + i]);
        println!(
            "{name:28} min {:6.2} ({:4.2}x)  med {:6.2} ({:4.2}x)",
            gb(m),
            m0 / m,
            gb(med),
            med0 / med
        );
    }
}
