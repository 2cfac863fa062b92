//! The in-process transport and the threaded node runtime.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use quant::{Codec, DecodeReport, IdentityCodec, QuantError};
use swarmsgd_core::{
    InProcessFabric, Interaction, LocalSteps, ReadOutcome, SwarmNode, Transport, WriteOutcome,
};

fn read_once(t: &mut impl Transport, peer: usize, len: usize) -> (ReadOutcome, Vec<u8>) {
    let op = t.start_read(peer, 0, len, Vec::new()).unwrap();
    loop {
        if let Some(swarmsgd_core::Completion::Read {
            op: done,
            buf,
            result,
            ..
        }) = t.poll()
        {
            assert_eq!(done, op);
            return (result.unwrap(), buf);
        }
    }
}

#[test]
fn a_concurrent_writer_never_lets_a_reader_see_a_torn_copy() {
    const LEN: usize = 1 << 20;
    let fabric = InProcessFabric::new(vec![vec![1], vec![0]], LEN).unwrap();
    let mut writer = fabric.endpoint(0).unwrap();
    let mut reader = fabric.endpoint(1).unwrap();
    assert_eq!(read_once(&mut reader, 0, LEN).0, ReadOutcome::NotPublished);
    writer.publish(&vec![0u8; LEN]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let handle = thread::spawn(move || {
        let mut k = 0u8;
        let mut payload = vec![0u8; LEN];
        while !stop_writer.load(Ordering::Relaxed) {
            k = k.wrapping_add(1);
            payload.fill(k);
            writer.publish(&payload).unwrap();
            // A short pause so that some reads fit between two publishes; most still overlap one.
            thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    // Wait until the writer runs, then read while it keeps publishing.
    while !matches!(read_once(&mut reader, 0, LEN).0, ReadOutcome::Model { version } if version > 2)
    {
    }
    let (mut consistent, mut versions_seen) = (0, std::collections::BTreeSet::new());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while versions_seen.len() < 20 && std::time::Instant::now() < deadline {
        match read_once(&mut reader, 0, LEN) {
            (ReadOutcome::Model { version }, buf) => {
                let first = buf[0];
                assert!(
                    buf.iter().all(|&b| b == first),
                    "torn copy accepted at version {version}"
                );
                consistent += 1;
                versions_seen.insert(version);
            }
            (ReadOutcome::Torn, _) => {}
            (ReadOutcome::NotPublished, _) => panic!("window was published"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert!(consistent > 0, "no read ever succeeded");
    assert!(
        versions_seen.len() >= 20,
        "only {} versions read: the writer hardly ran",
        versions_seen.len()
    );
}

#[test]
fn inbox_deposits_arrive_exactly_once_and_a_busy_slot_refuses_a_second_write() {
    let fabric = InProcessFabric::new(vec![vec![1, 2], vec![0], vec![0]], 64).unwrap();
    let mut owner = fabric.endpoint(0).unwrap();
    let mut w1 = fabric.endpoint(1).unwrap();
    let mut w2 = fabric.endpoint(2).unwrap();
    let outcome = |t: &mut swarmsgd_core::InProcessEndpoint, payload: &[u8]| {
        t.start_write(0, payload).unwrap();
        match t.poll() {
            Some(swarmsgd_core::Completion::Write { result, .. }) => result.unwrap(),
            other => panic!("unexpected completion {other:?}"),
        }
    };
    assert_eq!(outcome(&mut w1, b"from-1"), WriteOutcome::Delivered);
    assert_eq!(outcome(&mut w1, b"again"), WriteOutcome::SlotBusy);
    assert_eq!(outcome(&mut w2, b"from-2"), WriteOutcome::Delivered);
    let mut seen = Vec::new();
    assert!(!w1.slot_free_at(0).unwrap());
    assert_eq!(
        owner
            .take_inbox(&mut |w, b| seen.push((w, b.to_vec())))
            .unwrap(),
        2
    );
    assert_eq!(seen, vec![(1, b"from-1".to_vec()), (2, b"from-2".to_vec())]);
    // Not released yet: the slot stays busy for its writer.
    assert_eq!(outcome(&mut w1, b"again"), WriteOutcome::SlotBusy);
    owner.release_inbox().unwrap();
    assert!(w1.slot_free_at(0).unwrap());
    assert_eq!(
        owner
            .take_inbox(&mut |_, _| panic!("delivered twice"))
            .unwrap(),
        0
    );
    assert_eq!(outcome(&mut w1, b"again"), WriteOutcome::Delivered);
    // Writing into a node that is not a neighbour is an error value, not a panic.
    w1.start_write(2, b"x").unwrap();
    assert!(matches!(
        w1.poll(),
        Some(swarmsgd_core::Completion::Write { result: Err(_), .. })
    ));
}

fn node(
    fabric: &InProcessFabric,
    graph: &[Vec<usize>],
    id: usize,
    dim: usize,
    interaction: Interaction,
) -> SwarmNode<swarmsgd_core::InProcessEndpoint> {
    SwarmNode::new(
        fabric.endpoint(id).unwrap(),
        graph[id].clone(),
        dim,
        interaction,
        LocalSteps::Fixed(1),
        Box::new(IdentityCodec),
        11,
    )
    .unwrap()
}

#[test]
fn threaded_pairwise_averaging_conserves_the_sum_exactly_once_settled() {
    let n = 8;
    let dim = 1000;
    let graph: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect();
    let fabric = InProcessFabric::new(graph.clone(), 8 + 4 * dim).unwrap();
    let start: Vec<Vec<f32>> = (0..n)
        .map(|i| (0..dim).map(|k| ((i * 31 + k) % 17) as f32).collect())
        .collect();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut swarm = node(&fabric, &graph, i, dim, Interaction::Pairwise);
            let mut x = start[i].clone();
            swarm.publish(&x).unwrap();
            let finished = finished.clone();
            thread::spawn(move || {
                // Every node keeps stepping (and folding its partners' corrections) until all
                // nodes have done 300 interactions, so no partner is left waiting on a busy slot.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let mut counted = false;
                while finished.load(Ordering::Acquire) < n && std::time::Instant::now() < deadline {
                    swarm.step_boundary(&mut x).unwrap();
                    if swarm.after_local_step(&mut x).unwrap().is_none() {
                        thread::yield_now();
                    }
                    if !counted && swarm.stats().interactions >= 300 {
                        counted = true;
                        finished.fetch_add(1, Ordering::AcqRel);
                    }
                }
                (swarm, x)
            })
        })
        .collect();
    let mut finished: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Settle: every node folds what is still in its inbox.
    for (swarm, x) in &mut finished {
        swarm.step_boundary(x).unwrap();
    }
    for (swarm, x) in &mut finished {
        assert_eq!(swarm.step_boundary(x).unwrap(), 0);
    }
    for (swarm, _) in &finished {
        assert!(
            swarm.stats().interactions >= 300,
            "node {} stopped early",
            swarm.id()
        );
    }
    let models: Vec<&[f32]> = finished.iter().map(|(_, x)| x.as_slice()).collect();
    let mean_now = swarmsgd_core::mean_of(models.iter().copied());
    let mean_start = swarmsgd_core::mean_of(start.iter().map(|m| m.as_slice()));
    for (a, b) in mean_now.iter().zip(&mean_start) {
        assert!((a - b).abs() < 1e-3, "mean moved from {b} to {a}");
    }
    let spread_start = swarmsgd_core::spread(start.iter().map(|m| m.as_slice()));
    assert!(swarmsgd_core::spread(models.iter().copied()) < 1e-3 * spread_start);
    let folded: u64 = finished
        .iter()
        .map(|(s, _)| s.stats().corrections_folded)
        .sum();
    let written: u64 = finished.iter().map(|(s, _)| s.stats().bytes_written).sum();
    assert_eq!(
        written,
        folded * (4 * dim as u64),
        "every delivered correction folded once"
    );
}

#[test]
fn a_node_skips_peers_that_never_published_and_rejects_non_finite_models() {
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 8 + 16).unwrap();
    let mut a = node(&fabric, &graph, 0, 4, Interaction::Pull);
    let mut b = node(&fabric, &graph, 1, 4, Interaction::Pull);
    let mut x = vec![1.0f32; 4];
    assert!(!a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![1.0; 4]);
    assert_eq!(a.stats().skipped_unpublished, 1);
    b.publish(&[f32::NAN, 0.0, 0.0, 0.0]).unwrap();
    assert!(!a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![1.0; 4]);
    assert_eq!(a.stats().rejected_non_finite, 1);
    b.publish(&[3.0, 3.0, 3.0, 3.0]).unwrap();
    assert!(a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![2.0; 4]);
    // Both completed reads crossed the network, the rejected one included.
    assert_eq!(a.stats().bytes_read, 2 * 16);
}

#[test]
fn a_node_with_a_distance_limit_rejects_absurd_models_and_corrections() {
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 8 + 16).unwrap();
    let mut a = node(&fabric, &graph, 0, 4, Interaction::Pairwise).with_max_peer_distance(10.0);
    let mut b = node(&fabric, &graph, 1, 4, Interaction::Pairwise);
    let mut x = vec![1.0f32; 4];
    b.publish(&[1.0, 1.0, 1.0, 1e6]).unwrap();
    assert!(!a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![1.0; 4]);
    assert_eq!(a.stats().rejected_absurd, 1);
    b.publish(&[1.0, 1.0, 1.0, 11.0]).unwrap(); // just within: distance 10
    assert!(a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![1.0, 1.0, 1.0, 6.0]);

    // b (no limit) deposits a correction of 1e6 / 2 into a's inbox: a refuses to fold it.
    a.publish(&[1e6, 0.0, 0.0, 0.0]).unwrap();
    let mut z = vec![0.0f32; 4];
    assert!(b.interact_with(0, &mut z).unwrap());
    let mut mine = vec![1e6f32, 0.0, 0.0, 0.0];
    a.step_boundary(&mut mine).unwrap();
    assert_eq!(mine, vec![1e6, 0.0, 0.0, 0.0]);
    assert_eq!(a.stats().rejected_absurd, 2);
    assert_eq!(a.stats().corrections_folded, 0);
}

#[test]
fn an_unreachable_peer_can_be_readmitted() {
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 8 + 16).unwrap();
    let mut a = node(&fabric, &graph, 0, 4, Interaction::Pull);
    let mut x = vec![1.0f32; 4];
    // Node 7 is not on the fabric: the transport fails and a stops contacting it.
    assert!(!a.interact_with(7, &mut x).unwrap());
    assert!(a.unreachable().contains(&7));
    assert_eq!(a.stats().skipped_unreachable, 1);
    assert!(a.readmit(7));
    assert!(!a.readmit(7));
    assert!(a.unreachable().is_empty());
}

/// Quantizes to integers, and reports failure whenever the reader is more than 0.5 away.
struct RoundingCodec;

impl Codec for RoundingCodec {
    fn name(&self) -> String {
        "rounding".into()
    }
    fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
        out.clear();
        out.extend(x.iter().map(|v| v.round() as i8 as u8));
        Ok(())
    }
    fn decode(
        &self,
        bytes: &[u8],
        reference: &[f32],
        out: &mut [f32],
    ) -> Result<DecodeReport, QuantError> {
        let mut failed = 0;
        for ((o, b), r) in out.iter_mut().zip(bytes).zip(reference) {
            *o = f32::from(*b as i8);
            failed += usize::from((*o - r).abs() > 0.5);
        }
        Ok(DecodeReport {
            failed_buckets: failed,
        })
    }
}

#[test]
fn a_failed_quantized_decode_falls_back_to_full_precision() {
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 64).unwrap();
    let make = |id| {
        SwarmNode::new(
            fabric.endpoint(id).unwrap(),
            graph[id].clone(),
            4,
            Interaction::Pull,
            LocalSteps::Fixed(1),
            Box::new(RoundingCodec),
            1,
        )
        .unwrap()
    };
    let (mut a, mut b) = (make(0), make(1));
    b.publish(&[1.0, 2.0, 3.0, 4.25]).unwrap();
    // Close to the peer: the quantized copy (rounded) is used.
    let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
    assert!(a.interact_with(1, &mut x).unwrap());
    assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.stats().decode_fallbacks, 0);
    assert_eq!(a.stats().bytes_read, 4);
    // Far from the peer: the check fails and the full-precision copy is read instead.
    let mut far = vec![-3.0f32, 2.0, 3.0, 4.0];
    assert!(a.interact_with(1, &mut far).unwrap());
    assert_eq!(far, vec![-1.0, 2.0, 3.0, 4.125]);
    assert_eq!(a.stats().decode_fallbacks, 1);
    assert_eq!(a.stats().bytes_read, 4 + 4 + 16);
}

#[test]
fn quantized_corrections_keep_the_sum_exact_and_shrink_the_writes() {
    let dim = 4096;
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 8 * dim).unwrap();
    let spec: quant::CodecSpec = "lattice:8".parse().unwrap();
    let make = |id: usize| {
        SwarmNode::new(
            fabric.endpoint(id).unwrap(),
            graph[id].clone(),
            dim,
            Interaction::Pairwise,
            LocalSteps::Fixed(1),
            spec.build(3).unwrap(),
            5,
        )
        .unwrap()
        .with_correction_codec(spec.build(4).unwrap())
        .unwrap()
    };
    let (mut a, mut b) = (make(0), make(1));
    let mut xa: Vec<f32> = (0..dim).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut xb: Vec<f32> = (0..dim).map(|k| (k as f32 * 0.11).cos() * 0.5).collect();
    let sum = |a: &[f32], b: &[f32]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) + f64::from(*y))
            .collect()
    };
    let start = sum(&xa, &xb);
    a.publish(&xa).unwrap();
    b.publish(&xb).unwrap();
    for _ in 0..20 {
        assert!(a.interact_with(1, &mut xa).unwrap());
        assert_eq!(b.step_boundary(&mut xb).unwrap(), 1);
        assert!(b.interact_with(0, &mut xb).unwrap());
        assert_eq!(a.step_boundary(&mut xa).unwrap(), 1);
    }
    let drift = sum(&xa, &xb)
        .iter()
        .zip(&start)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(drift < 1e-5, "the sum drifted by {drift}");
    let gap = xa
        .iter()
        .zip(&xb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(gap < 1e-3, "models still {gap} apart");
    let written = a.stats().bytes_written + b.stats().bytes_written;
    let raw = 40 * 4 * dim as u64;
    assert!(
        written * 100 < 30 * raw,
        "{written} bytes written vs {raw} raw"
    );
}

#[test]
fn a_quantized_correction_past_the_distance_limit_is_refused_and_one_within_it_folded() {
    let dim = 64;
    let graph = vec![vec![1], vec![0]];
    let fabric = InProcessFabric::new(graph.clone(), 8 * dim).unwrap();
    let spec: quant::CodecSpec = "lattice:8".parse().unwrap();
    let make = |id: usize| {
        node(&fabric, &graph, id, dim, Interaction::Pairwise)
            .with_correction_codec(spec.build(4).unwrap())
            .unwrap()
    };
    // a folds corrections up to 10 / 2 = 5 in magnitude; b has no limit.
    let (mut a, mut b) = (make(0).with_max_peer_distance(10.0), make(1));
    let mut xa = vec![0.0f32; dim];
    a.publish(&xa).unwrap();
    for (gap, folds) in [(100.0f32, false), (4.0, true)] {
        // b averages with a's zeros and deposits about (gap - 0) / 2 into a's inbox.
        let mut xb = vec![gap; dim];
        b.publish(&xb).unwrap();
        assert!(b.interact_with(0, &mut xb).unwrap());
        let before = xa.clone();
        assert_eq!(a.step_boundary(&mut xa).unwrap(), usize::from(folds));
        if folds {
            assert!(xa.iter().all(|&v| (v - gap / 2.0).abs() < 0.05), "{xa:?}");
        } else {
            assert_eq!(xa, before);
        }
        // Let b's next correction land: b's copy of a includes whatever a folded.
        a.publish(&xa).unwrap();
    }
    assert_eq!(a.stats().rejected_absurd, 1);
    assert_eq!(a.stats().corrections_folded, 1);
    assert_eq!(a.stats().rejected_non_finite, 0);
}

#[test]
fn a_payload_published_in_place_reads_back_whole_and_bumps_the_version() {
    // Longer than several fill chunks, with a tail that is not a whole word.
    const LEN: usize = 3 * 16 * 1024 + 13;
    let fabric = InProcessFabric::new(vec![vec![1], vec![0]], LEN).unwrap();
    let mut writer = fabric.endpoint(0).unwrap();
    let mut reader = fabric.endpoint(1).unwrap();
    let expected: Vec<u8> = (0..LEN).map(|k| (k * 7 % 251) as u8).collect();
    writer.publish(b"first").unwrap();
    let mut offsets = Vec::new();
    writer
        .publish_with(LEN, &mut |offset, chunk| {
            offsets.push((offset, chunk.len()));
            chunk.copy_from_slice(&expected[offset..offset + chunk.len()]);
        })
        .unwrap();
    // Consecutive chunks covering the payload, each but the last a multiple of the alignment.
    let mut next = 0;
    for (k, &(offset, len)) in offsets.iter().enumerate() {
        assert_eq!(offset, next);
        if k + 1 < offsets.len() {
            assert_eq!(len % swarmsgd_core::PUBLISH_CHUNK_ALIGN, 0);
        }
        next += len;
    }
    assert_eq!(next, LEN);
    let (outcome, bytes) = read_once(&mut reader, 0, LEN);
    assert_eq!(outcome, ReadOutcome::Model { version: 2 });
    assert_eq!(bytes, expected);
    assert!(writer.publish_with(LEN + 8, &mut |_, _| {}).is_err());
}

#[test]
fn a_payload_at_an_odd_address_is_published_whole() {
    const LEN: usize = 4099;
    let fabric = InProcessFabric::new(vec![vec![1], vec![0]], LEN).unwrap();
    let mut writer = fabric.endpoint(0).unwrap();
    let mut reader = fabric.endpoint(1).unwrap();
    let backing: Vec<u8> = (0..=LEN).map(|k| (k * 13 % 255) as u8).collect();
    // One byte in: not 8-aligned, so the window takes the bytewise path.
    writer.publish(&backing[1..]).unwrap();
    let (outcome, bytes) = read_once(&mut reader, 0, LEN);
    assert_eq!(outcome, ReadOutcome::Model { version: 1 });
    assert_eq!(bytes, &backing[1..]);
}

/// Between interactions a node still publishes after every local step: a peer that reads it
/// gets its current model, not the one of its last interaction (issue 18: with H = 4 that copy
/// was up to 3 steps old, and `pull` lost accuracy to it).
#[test]
fn a_node_publishes_after_every_local_step_not_only_at_interactions() {
    let graph = vec![vec![1], vec![0]];
    let dim = 3;
    let fabric = InProcessFabric::new(graph.clone(), 4 * dim).unwrap();
    let node = |id: usize| {
        SwarmNode::new(
            fabric.endpoint(id).unwrap(),
            graph[id].clone(),
            dim,
            Interaction::Pull,
            LocalSteps::Fixed(4),
            Box::new(IdentityCodec),
            5,
        )
        .unwrap()
    };
    let (mut stepping, mut reader) = (node(0), node(1));
    let mut model = vec![1.0f32, 2.0, 3.0];
    stepping.publish(&model).unwrap();
    let mut own = vec![0.0f32; dim];
    reader.publish(&own).unwrap();
    // One local step: no interaction is due yet (H = 4).
    model = vec![5.0, 6.0, 7.0];
    assert_eq!(stepping.after_local_step(&mut model).unwrap(), None);
    assert_eq!(stepping.stats().interactions, 0);
    assert!(reader.interact_with(0, &mut own).unwrap());
    assert_eq!(own, vec![2.5, 3.0, 3.5], "the reader averaged a stale copy");
}
