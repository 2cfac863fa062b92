//! The non-blocking node runtime: interactions whose operations take several local steps to
//! complete still conserve the mean of the models exactly and contract their spread.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::VecDeque;

use quant::{Codec, IdentityCodec};
use swarmsgd_core::{
    Completion, InProcessEndpoint, InProcessFabric, Interaction, LocalSteps, NodeId, OpId, Overlap,
    SwarmNode, Transport, TransportError,
};

/// The in-process endpoint, with every completion held back for `delay` polls: a network on
/// which each operation takes a while. (A node polls once at each step boundary and once after
/// each step while it has nothing ready, so `delay` polls are about `delay / 2` local steps.)
struct Delayed {
    inner: InProcessEndpoint,
    delay: u32,
    held: VecDeque<(u32, Completion)>,
}

impl Delayed {
    fn hold(&mut self) {
        while let Some(c) = self.inner.poll() {
            self.held.push_back((self.delay, c));
        }
    }
}

impl Transport for Delayed {
    fn node(&self) -> NodeId {
        self.inner.node()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.inner.publish(payload)
    }
    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        let op = self.inner.start_read(peer, offset, len, buf)?;
        self.hold();
        Ok(op)
    }
    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        let op = self.inner.start_write(peer, payload)?;
        self.hold();
        Ok(op)
    }
    fn poll(&mut self) -> Option<Completion> {
        for (left, _) in &mut self.held {
            *left = left.saturating_sub(1);
        }
        if self.held.front().is_some_and(|(left, _)| *left == 0) {
            self.held.pop_front().map(|(_, c)| c)
        } else {
            None
        }
    }
    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        self.inner.slot_free_at(peer)
    }
    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        self.inner.take_inbox(visit)
    }
    fn release_inbox(&mut self) -> Result<(), TransportError> {
        self.inner.release_inbox()
    }
}

struct Run {
    nodes: Vec<SwarmNode<Delayed>>,
    models: Vec<Vec<f32>>,
    start: Vec<Vec<f32>>,
    /// Sum over nodes and steps of what the local steps added, per coordinate.
    stepped: Vec<f64>,
}

/// `n` nodes on a ring, pairwise or pull, whose operations each take `delay` polls; every node
/// takes `steps` local steps (a pull towards its own target, so the models keep moving while
/// their copies are on the network), round-robin, deterministic.
fn run(
    interaction: Interaction,
    overlap: Overlap,
    delay: u32,
    steps: usize,
    codec: impl Fn() -> Box<dyn Codec>,
) -> Run {
    let (n, dim) = (8usize, 64usize);
    let graph: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect();
    let fabric = InProcessFabric::new(graph.clone(), 64 + 8 * dim).unwrap();
    let start: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            (0..dim)
                .map(|k| ((i * 31 + k * 7) % 23) as f32 - 11.0)
                .collect()
        })
        .collect();
    let mut nodes: Vec<SwarmNode<Delayed>> = (0..n)
        .map(|i| {
            let transport = Delayed {
                inner: fabric.endpoint(i).unwrap(),
                delay,
                held: VecDeque::new(),
            };
            let mut node = SwarmNode::new(
                transport,
                graph[i].clone(),
                dim,
                interaction,
                LocalSteps::Fixed(2),
                codec(),
                5,
            )
            .unwrap()
            .with_overlap(overlap);
            node.publish(&start[i]).unwrap();
            node
        })
        .collect();
    let mut models = start.clone();
    let mut stepped = vec![0.0f64; dim];
    for _ in 0..steps {
        for i in 0..n {
            watched(&mut nodes[i], &mut models[i], |node, x| {
                node.step_boundary(x).map(|_| ())
            });
            for (k, x) in models[i].iter_mut().enumerate() {
                let target = ((i + k) % 5) as f32;
                let delta = 0.01 * (target - *x);
                *x += delta;
                stepped[k] += f64::from(delta);
            }
            watched(&mut nodes[i], &mut models[i], |node, x| {
                node.after_local_step(x).map(|_| ())
            });
        }
    }
    // Land what is in flight, then fold what sits in the inboxes.
    for (node, x) in nodes.iter_mut().zip(&mut models) {
        watched(node, x, |node, x| node.drain(x));
        assert!(!node.in_flight());
    }
    for (node, x) in nodes.iter_mut().zip(&mut models) {
        watched(node, x, |node, x| node.step_boundary(x).map(|_| ()));
    }
    assert!(nodes.iter().all(|node| node.model_writes() > 0));
    Run {
        nodes,
        models,
        start,
        stepped,
    }
}

/// Runs one call of the node on its model and checks that the node's write counter says whether
/// the model changed: a model staged through a host copy trusts it to skip the copy back.
fn watched(
    node: &mut SwarmNode<Delayed>,
    x: &mut [f32],
    call: impl FnOnce(&mut SwarmNode<Delayed>, &mut [f32]) -> Result<(), swarmsgd_core::SwarmError>,
) {
    let (before, writes) = (x.to_vec(), node.model_writes());
    call(node, x).unwrap();
    if x != before.as_slice() {
        assert!(
            node.model_writes() > writes,
            "node {} changed the model without counting a write",
            node.id()
        );
    }
}

fn max_mean_error(r: &Run) -> f64 {
    let n = r.models.len() as f64;
    let now = swarmsgd_core::mean_of(r.models.iter().map(|m| m.as_slice()));
    let start = swarmsgd_core::mean_of(r.start.iter().map(|m| m.as_slice()));
    now.iter()
        .zip(&start)
        .zip(&r.stepped)
        .map(|((a, b), s)| (a - (b + s / n)).abs())
        .fold(0.0, f64::max)
}

#[test]
fn stale_pairwise_copies_conserve_the_mean_and_are_counted() {
    let r = run(Interaction::Pairwise, Overlap::On, 6, 400, || {
        Box::new(IdentityCodec)
    });
    let stats: Vec<_> = r.nodes.iter().map(|s| s.stats().clone()).collect();
    let interactions: u64 = stats.iter().map(|s| s.interactions).sum();
    assert!(interactions > 8 * 50, "only {interactions} interactions");
    // Each read lands 6 polls (3 step boundaries) after it started: 2 more steps by then.
    for s in &stats {
        assert_eq!(s.staleness_steps_max, 2, "{s:?}");
        assert!(s.mean_staleness() > 1.5, "{s:?}");
        // Every averaged copy is in the distribution, and it agrees with the total and the max.
        assert_eq!(s.staleness_counts.iter().sum::<u64>(), s.copies_averaged);
        let total: u64 = s
            .staleness_counts
            .iter()
            .enumerate()
            .map(|(k, c)| k as u64 * c)
            .sum();
        assert_eq!(total, s.staleness_steps_total);
        assert_eq!(s.staleness_counts.len() as u64, s.staleness_steps_max + 1);
        assert_eq!(s.bytes_written, s.interactions * 4 * 64);
    }
    let folded: u64 = stats.iter().map(|s| s.corrections_folded).sum();
    assert_eq!(
        folded, interactions,
        "every delivered correction folded once"
    );
    let err = max_mean_error(&r);
    assert!(err < 1e-4, "mean off by {err}");
    let spread_start = swarmsgd_core::spread(r.start.iter().map(|m| m.as_slice()));
    let spread_now = swarmsgd_core::spread(r.models.iter().map(|m| m.as_slice()));
    assert!(
        spread_now < 0.2 * spread_start,
        "{spread_now} vs {spread_start}"
    );
}

#[test]
fn quantized_stale_copies_and_corrections_conserve_the_mean() {
    let r = run(Interaction::Pairwise, Overlap::On, 4, 300, || {
        "lattice:8"
            .parse::<quant::CodecSpec>()
            .unwrap()
            .build(3)
            .unwrap()
    });
    let interactions: u64 = r.nodes.iter().map(|s| s.stats().interactions).sum();
    assert!(interactions > 8 * 30, "only {interactions} interactions");
    let err = max_mean_error(&r);
    assert!(err < 1e-3, "mean off by {err}");
}

#[test]
fn without_overlap_every_copy_lands_before_the_next_step() {
    let r = run(Interaction::Pairwise, Overlap::Off, 6, 200, || {
        Box::new(IdentityCodec)
    });
    for node in &r.nodes {
        let s = node.stats();
        assert!(s.interactions > 0);
        assert_eq!(s.staleness_steps_max, 0, "{s:?}");
    }
    assert!(max_mean_error(&r) < 1e-4);
}

#[test]
fn an_interaction_due_while_one_is_in_flight_waits_for_it() {
    // Reads take 12 polls (about 6 steps), interactions fall due every 2 steps: most are deferred.
    let r = run(Interaction::Pull, Overlap::On, 12, 120, || {
        Box::new(IdentityCodec)
    });
    for node in &r.nodes {
        let s = node.stats();
        assert!(s.deferred > 0, "{s:?}");
        assert!(!node.in_flight());
        // One operation at a time: at most one read per 5 steps.
        assert!(s.models_read <= 120 / 5, "{s:?}");
        assert!(s.interactions >= 120 / 8, "{s:?}");
        assert!(s.staleness_steps_max >= 5, "{s:?}");
    }
}
