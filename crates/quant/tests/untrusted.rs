//! Decoders facing hostile bytes: mutated, truncated, extended, foreign and random payloads
//! must give `Ok` or `Err`, never a panic; and bit packing matches a reference layout. Every
//! call goes through the SIMD module's streaming path (`common::stream_everything`); the other
//! test files run the dispatched path without it, and `simd::tests` compares the two.
#![allow(clippy::unwrap_used)] // tests and benches fail loudly by design

mod common;

use common::{Rng, SPECS};
use swarmsgd_quant::{Codec, CodecSpec, QuantError};

fn decode_any(c: &dyn Codec, bytes: &[u8], reference: &[f32], out: &mut [f32]) {
    // Any result is fine; a panic fails the test.
    let _ = c.decode(bytes, reference, out);
}

#[test]
fn decoders_survive_corrupted_payloads() {
    common::stream_everything();
    let mut rng = Rng(0xC0FFEE);
    let codecs: Vec<(String, Box<dyn Codec>)> = SPECS
        .iter()
        .map(|s| {
            (
                s.to_string(),
                s.parse::<CodecSpec>().unwrap().build(5).unwrap(),
            )
        })
        .collect();
    for d in [0usize, 1, 7, 64, 65, 513, 1500] {
        let x = rng.vector(d);
        let mut out = vec![0f32; d];
        for (name, _) in &codecs {
            let mut enc = name.parse::<CodecSpec>().unwrap().build(9).unwrap();
            let mut payload = Vec::new();
            enc.encode(&x, &mut payload).unwrap();
            // The intact payload decodes.
            enc.decode(&payload, &x, &mut out).unwrap();
            // Wrong output length is a clean error.
            let mut short = vec![0f32; d + 1];
            let r = enc.decode(&payload, &short.clone(), &mut short);
            assert!(r.is_err(), "{name}: accepted a wrong length");
            // Every truncation is an error (the header fixes the exact size).
            for cut in 0..payload.len() {
                let r = enc.decode(&payload[..cut], &x, &mut out);
                assert!(
                    r.is_err(),
                    "{name} d={d}: truncated to {cut} of {} decoded",
                    payload.len()
                );
            }
            // Oversized payloads are errors.
            let mut longer = payload.clone();
            longer.push(0);
            assert!(
                enc.decode(&longer, &x, &mut out).is_err(),
                "{name}: accepted trailing byte"
            );
            // Random mutations: flips, byte overwrites, header-field corruption, splices.
            for trial in 0..150 {
                let mut m = payload.clone();
                if m.is_empty() {
                    break;
                }
                let nmut = 1 + rng.below(4);
                for _ in 0..nmut {
                    let i = if trial % 3 == 0 {
                        rng.below(m.len().min(32))
                    } else {
                        rng.below(m.len())
                    };
                    match rng.below(4) {
                        0 => m[i] ^= 1 << rng.below(8),
                        1 => m[i] = rng.next_u64() as u8,
                        2 => m[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
                        _ => {
                            let j = rng.below(m.len());
                            m.truncate(j.max(1));
                        }
                    }
                }
                for (_, dec) in &codecs {
                    decode_any(dec.as_ref(), &m, &x, &mut out);
                }
            }
        }
        // Pure noise of assorted lengths, including ones that start like a real header.
        for _ in 0..200 {
            let n = rng.below(300);
            let mut b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            if n >= 8 && rng.below(2) == 0 {
                b[..2].copy_from_slice(b"SQ");
                b[2] = 1 + rng.below(7) as u8;
                b[3] = 2;
                b[4..8].copy_from_slice(&(d as u32).to_le_bytes());
            }
            for (_, dec) in &codecs {
                decode_any(dec.as_ref(), &b, &x, &mut out);
            }
        }
    }
}

#[test]
fn huge_announced_lengths_do_not_allocate() {
    common::stream_everything();
    // A sparse payload announcing k = 4 billion values for a 10-value output is rejected before
    // any allocation, as is a lattice payload whose length field disagrees with the output.
    let mut b = Vec::new();
    b.extend_from_slice(b"SQ");
    b.push(6);
    b.push(2); // format version
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[4, 0, 0, 0]);
    let c = "topk:0.5".parse::<CodecSpec>().unwrap().build(0).unwrap();
    let mut out = vec![0f32; 10];
    assert!(matches!(
        c.decode(&b, &[], &mut out),
        Err(QuantError::BadHeader(_))
    ));
    let mut l = b.clone();
    l[2] = 1;
    l[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let c = "lattice:8".parse::<CodecSpec>().unwrap().build(0).unwrap();
    assert!(matches!(
        c.decode(&l, &out.clone(), &mut out),
        Err(QuantError::LengthMismatch { .. })
    ));
    // Wrong version.
    let mut enc = "minmax:4".parse::<CodecSpec>().unwrap().build(0).unwrap();
    let mut p = Vec::new();
    enc.encode(&[1.0; 10], &mut p).unwrap();
    p[3] = 1;
    assert!(matches!(
        enc.decode(&p, &[], &mut out),
        Err(QuantError::BadHeader(_))
    ));
}

/// Reference packer: blocks of 64 codes; full blocks at widths 1, 2, 4, 8, 16 are vertical
/// (L = max(4, 2B) little-endian words of 64B/L bits, word w holding codes w, w+L, ... from the
/// low bits up); all else is sequential (code i at bits i*b.. of a little-endian bit string).
fn reference_pack(codes: &[u32], bits: u32) -> Vec<u8> {
    let b = bits as usize;
    let mut out = vec![0u8; (codes.len() * b).div_ceil(8)];
    let mut set = |pos: usize| out[pos / 8] |= 1 << (pos % 8);
    for (blk, chunk) in codes.chunks(64).enumerate() {
        let base = blk * 64 * b;
        let vertical = chunk.len() == 64 && matches!(bits, 1 | 2 | 4 | 8 | 16);
        for (i, &c) in chunk.iter().enumerate() {
            let start = if vertical {
                let lanes = (2 * b).max(4);
                let (w, j) = (i % lanes, i / lanes);
                base + 64 * b / lanes * w + j * b
            } else {
                base + i * b
            };
            for k in 0..b {
                if c >> k & 1 == 1 {
                    set(start + k);
                }
            }
        }
    }
    out
}

#[test]
fn bit_packing_matches_reference_layout() {
    common::stream_everything();
    let mut rng = Rng(77);
    for bits in 1..=16u32 {
        for n in [0usize, 1, 5, 8, 63, 64, 65, 200, 1000] {
            let codes: Vec<u32> = (0..n)
                .map(|_| rng.next_u64() as u32 & ((1 << bits) - 1))
                .collect();
            let mut packed = Vec::new();
            swarmsgd_quant::pack_bits(&codes, bits, &mut packed).unwrap();
            assert_eq!(packed, reference_pack(&codes, bits), "bits {bits} n {n}");
            assert_eq!(packed.len(), swarmsgd_quant::packed_len(n, bits));
            let mut back = vec![0u32; n];
            swarmsgd_quant::unpack_bits(&packed, bits, &mut back).unwrap();
            assert_eq!(back, codes);
            if !packed.is_empty() {
                assert!(swarmsgd_quant::unpack_bits(&packed[1..], bits, &mut back).is_err());
            }
        }
    }
    assert!(swarmsgd_quant::pack_bits(&[1], 0, &mut Vec::new()).is_err());
    assert!(swarmsgd_quant::pack_bits(&[1], 17, &mut Vec::new()).is_err());
}
