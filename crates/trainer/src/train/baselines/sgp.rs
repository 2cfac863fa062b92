//! Stochastic gradient push (Assran et al., 2019): push-sum gossip on a directed, time-varying
//! exponential graph. Node i keeps a numerator `x_i` and a weight `w_i` (1 at start); the model it
//! trains is `z_i = x_i / w_i`. At step k it takes a gradient step on `z_i`, then keeps half of
//! `(x_i, w_i)` and pushes the other half to `i + 2^(k mod log2 n) mod n`; it adds whatever was
//! pushed to it. Pushes conserve the sums of the numerators and of the weights (which stay `n`),
//! so `z_i` approaches the average without doubly stochastic mixing.

use std::sync::{Arc, Mutex};

use swarm_core::NodeStats;

use super::{model_bytes, NodeAlgo};
use crate::model::FlatModel;
use crate::vtime::{Rendezvous, VirtualClock};
use crate::TrainError;

/// The out-peer of node `i` at step `k` on the directed exponential graph of `n` nodes.
pub(crate) fn exponential_peer(i: usize, k: u64, n: usize) -> usize {
    let hops = (usize::BITS - (n.max(2) - 1).leading_zeros()) as u64; // ceil(log2 n)
    (i + (1usize << (k % hops))) % n
}

/// One push-sum node's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PushSum {
    /// Numerator.
    pub x: Vec<f32>,
    /// Weight.
    pub w: f64,
}

impl PushSum {
    /// A node whose de-biased model is `z`, with weight 1.
    pub fn new(z: &[f32]) -> Self {
        PushSum {
            x: z.to_vec(),
            w: 1.0,
        }
    }

    /// Sets the numerator from the de-biased model after a local step: `x = w z`.
    pub fn set_model(&mut self, z: &[f32]) {
        let w = self.w as f32;
        for (x, z) in self.x.iter_mut().zip(z) {
            *x = w * z;
        }
    }

    /// Keeps half of the mass; the other half (equal to what is kept) is what to push.
    pub fn halve(&mut self) {
        for x in &mut self.x {
            *x *= 0.5;
        }
        self.w *= 0.5;
    }

    /// Adds mass pushed by a peer.
    pub fn receive(&mut self, x: &[f32], w: f64) {
        for (a, b) in self.x.iter_mut().zip(x) {
            *a += b;
        }
        self.w += w;
    }

    /// The de-biased model `x / w`.
    pub fn model_into(&self, z: &mut [f32]) {
        let inv = (1.0 / self.w) as f32;
        for (z, x) in z.iter_mut().zip(&self.x) {
            *z = x * inv;
        }
    }
}

/// Numerator and weight pushed to a node and not yet received.
type Inbox = Mutex<(Vec<f32>, f64)>;

/// Mass pushed to each node, double-buffered by step parity.
struct Inboxes {
    slots: [Vec<Inbox>; 2],
    pushed: Rendezvous,
}

pub(super) struct Sgp {
    id: usize,
    n: usize,
    state: PushSum,
    inboxes: Arc<Inboxes>,
    round: u64,
    stats: NodeStats,
}

pub(super) fn nodes(
    mut models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Vec<(FlatModel, Sgp)> {
    let n = models.len();
    let slots = || (0..n).map(|_| Mutex::new((vec![0.0; dim], 0.0))).collect();
    // One push of the model and its weight to one peer per step.
    let inboxes = Arc::new(Inboxes {
        slots: [slots(), slots()],
        pushed: Rendezvous::new(n, clock, |link| {
            link.latency_seconds + link.wire_seconds(model_bytes(dim) + 8)
        }),
    });
    models
        .iter_mut()
        .map(|m| m.params())
        .collect::<Vec<_>>()
        .into_iter()
        .zip(models)
        .enumerate()
        .map(|(id, (z, m))| {
            let node = Sgp {
                id,
                n,
                state: PushSum::new(&z),
                inboxes: Arc::clone(&inboxes),
                round: 0,
                stats: NodeStats::default(),
            };
            (m, node)
        })
        .collect()
}

impl NodeAlgo for Sgp {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        self.stats.local_steps += 1;
        if self.n < 2 {
            return Ok(());
        }
        model.with_params_mut(|z| self.state.set_model(z));
        self.state.halve();
        let slots = &self.inboxes.slots[(self.round % 2) as usize];
        let peer = exponential_peer(self.id, self.round, self.n);
        {
            let mut inbox = slots[peer].lock().unwrap_or_else(|e| e.into_inner());
            for (a, b) in inbox.0.iter_mut().zip(&self.state.x) {
                *a += b;
            }
            inbox.1 += self.state.w;
        }
        self.inboxes.pushed.wait()?;
        {
            let mut inbox = slots[self.id].lock().unwrap_or_else(|e| e.into_inner());
            let (x, w) = &mut *inbox;
            self.state.receive(x, *w);
            x.fill(0.0);
            *w = 0.0;
        }
        model.with_params_mut(|z| self.state.model_into(z));
        self.round += 1;
        self.stats.interactions += 1;
        self.stats.bytes_written += model_bytes(self.state.x.len()) + 8;
        self.stats.messages += 1;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
