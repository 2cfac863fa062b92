//! Interleaved encode/decode throughput beside memcpy and a read-only pass, for noisy shared
//! machines: every repetition runs memcpy, the read pass, each codec and the bit packers back to
//! back, and the minimum and median over repetitions are reported, as GB/s of f32 input and as
//! ratios to memcpy's minimum / median. (The criterion bench `benches/codecs.rs` is the
//! reference table.)
//!
//! Two more physical references: a widening pass (one byte in, one f32 out: the least work any
//! 8-bit decoder does) and the same pass adding a reference vector (the least work of a lattice
//! decoder), both plain safe loops with ordinary stores. Bit packing of u32 codes (ours and
//! `bitpacking`'s BitPacker8x) is timed at widths 1, 2, 4, 8 and 16 in the same repetitions.
//!
//! One line per codec (and per packing width), then, as the last line, `goals met: K/M` over the
//! issue-16 goals, each judged on the ratio of minima: lattice:8 encode >= 1.0x memcpy and
//! decode >= 0.8x; minmax:8, minmax:4 and sign encode >= 0.9x and decode >= 1.0x; our packing and
//! unpacking at 1, 4 and 8 bits (the widths of those codecs) >= 1.0x BitPacker8x. Goals of codecs
//! not run are left out of M.
//!
//! `cargo run --release -p swarmsgd-quant --example throughput -- 16M 10 lattice:8 minmax:8 minmax:4 sign`
//! (`QUANT_SIMD=sse2` for the SSE2 path, `QUANT_SIMD=scalar` for the scalar one).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use bitpacking::{BitPacker, BitPacker8x};

use swarmsgd_quant::{pack_bits, unpack_bits, Codec, CodecSpec};

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
    const WIDTHS: [u32; 5] = [1, 2, 4, 8, 16];
    let src: Vec<u32> = (0..d as u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let mut packs: Vec<Packing> = WIDTHS
        .iter()
        .map(|&b| {
            let codes: Vec<u32> = src.iter().map(|v| v >> (32 - b)).collect();
            let n = d / BitPacker8x::BLOCK_LEN * BitPacker8x::BLOCK_LEN;
            (b, codes, Vec::new(), vec![0u8; n * b as usize / 8])
        })
        .collect();
    let mut codes_back = vec![0u32; d];
    let mut dst32 = vec![0u32; d];
    let nc = codecs.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 5 + 2 * nc + 4 * WIDTHS.len()];
    let mut timed = |slot: usize, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        times[slot].push(t.elapsed().as_secs_f64());
    };
    let bp = BitPacker8x::new();
    let block = BitPacker8x::BLOCK_LEN;
    for rep in 0..reps {
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
            timed(5 + 2 * i, &mut || c.encode(black_box(&x), p).unwrap());
            timed(6 + 2 * i, &mut || {
                c.decode(black_box(p), &y, &mut back).unwrap();
            });
        }
        timed(4, &mut || dst32.copy_from_slice(black_box(&src)));
        for (w, (bits, codes, ours, theirs)) in packs.iter_mut().enumerate() {
            let slot = 5 + 2 * nc + 4 * w;
            let bits = *bits;
            let step = block * bits as usize / 8;
            // Each packer reads the same 64 MB of codes, and whichever runs second finds the
            // tail of them still in the last-level cache: the order alternates between
            // repetitions so that both get the same conditions.
            for turn in 0..2 {
                if (turn + rep) % 2 == 0 {
                    timed(slot, &mut || {
                        quant_pack(black_box(codes), bits, ours);
                    });
                    timed(slot + 1, &mut || {
                        quant_unpack(black_box(ours), bits, &mut codes_back);
                    });
                } else {
                    timed(slot + 2, &mut || {
                        for (cb, ob) in codes.chunks_exact(block).zip(theirs.chunks_exact_mut(step))
                        {
                            bp.compress(cb, ob, bits as u8);
                        }
                    });
                    timed(slot + 3, &mut || {
                        for (ob, cb) in codes_back
                            .chunks_exact_mut(block)
                            .zip(theirs.chunks_exact(step))
                        {
                            bp.decompress(cb, ob, bits as u8);
                        }
                    });
                }
            }
        }
    }
    for (bits, codes, ours, _) in &packs {
        quant_unpack(ours, *bits, &mut codes_back);
        assert!(
            codes_back == *codes,
            "{bits}-bit packing does not round-trip"
        );
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let gb = |t: f64| 4.0 * d as f64 / t / 1e9;
    let (m0, med0) = stat(&mut times[0]);
    println!(
        "d = {d}, {reps} repetitions, QUANT_SIMD={}; GB/s of f32 (u32) input, min (med) over repetitions; ratio of minima to memcpy",
        std::env::var("QUANT_SIMD").unwrap_or_else(|_| "auto".into())
    );
    println!("{:14} {:6.2} ({:6.2})", "memcpy", gb(m0), gb(med0));
    for (i, name) in [
        "read-only pass",
        "bound: widen u8 -> f32",
        "bound: widen + reference",
    ]
    .iter()
    .enumerate()
    {
        let (m, med) = stat(&mut times[1 + i]);
        println!("{name:24} {:6.2} ({:6.2}) {:5.2}x", gb(m), gb(med), m0 / m);
    }
    let mut goals: Vec<(String, f64, f64)> = Vec::new();
    for (i, (n, _, _)) in codecs.iter().enumerate() {
        let (me, mede) = stat(&mut times[5 + 2 * i]);
        let (md, medd) = stat(&mut times[6 + 2 * i]);
        let (re, rd) = (m0 / me, m0 / md);
        println!(
            "{n:24} encode {:6.2} ({:6.2}) {re:5.2}x   decode {:6.2} ({:6.2}) {rd:5.2}x",
            gb(me),
            gb(mede),
            gb(md),
            gb(medd),
        );
        let targets = match n.as_str() {
            "lattice:8" => Some((1.0, 0.8)),
            "minmax:8" | "minmax:4" | "sign" => Some((0.9, 1.0)),
            _ => None,
        };
        if let Some((te, td)) = targets {
            goals.push((format!("{n} encode / memcpy"), re, te));
            goals.push((format!("{n} decode / memcpy"), rd, td));
        }
    }
    let (m32, med32) = stat(&mut times[4]);
    println!(
        "{:24} {:6.2} ({:6.2})",
        "memcpy of u32 codes",
        gb(m32),
        gb(med32)
    );
    for (w, (bits, ..)) in packs.iter().enumerate() {
        let slot = 5 + 2 * nc + 4 * w;
        let mut s: Vec<(f64, f64)> = (0..4).map(|j| stat(&mut times[slot + j])).collect();
        let (rp, ru) = (s[2].0 / s[0].0, s[3].0 / s[1].0);
        let (a, b, c, e) = (s[0], s[1], s[2], s.pop().unwrap());
        println!(
            "pack {bits:2} bits: ours {:6.2} ({:6.2}), BP8x {:6.2} ({:6.2}): {rp:4.2}x; unpack: ours {:6.2} ({:6.2}), BP8x {:6.2} ({:6.2}): {ru:4.2}x",
            gb(a.0), gb(a.1), gb(c.0), gb(c.1), gb(b.0), gb(b.1), gb(e.0), gb(e.1),
        );
        if matches!(bits, 1 | 4 | 8) {
            goals.push((format!("pack {bits} bits / BitPacker8x"), rp, 1.0));
            goals.push((format!("unpack {bits} bits / BitPacker8x"), ru, 1.0));
        }
    }
    let met = goals.iter().filter(|(_, r, t)| r >= t).count();
    for (name, r, t) in goals.iter().filter(|(_, r, t)| r < t) {
        println!("missed: {name} {r:.2}x < {t:.2}x");
    }
    println!("goals met: {met}/{}", goals.len());
}

/// A packing width: bits, codes, our bytes, BitPacker8x's bytes.
type Packing = (u32, Vec<u32>, Vec<u8>, Vec<u8>);

fn quant_pack(codes: &[u32], bits: u32, out: &mut Vec<u8>) {
    pack_bits(codes, bits, out).unwrap();
}

fn quant_unpack(bytes: &[u8], bits: u32, out: &mut [u32]) {
    unpack_bits(bytes, bits, out).unwrap();
}
