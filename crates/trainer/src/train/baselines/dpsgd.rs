//! D-PSGD (Lian et al., 2017): synchronous decentralized SGD. At every step each node sends its
//! model to all its neighbours and sets `x_i <- sum_j W_ij x_j - lr g_i(x_i)`, the gradient taken
//! at its model before mixing. `W` holds Metropolis weights, `W_ij = 1 / (1 + max(d_i, d_j))`
//! on edges and the rest on the diagonal: symmetric and doubly stochastic on any graph, so mixing
//! keeps the average of the models.

use std::sync::{Arc, RwLock};

use swarm_core::NodeStats;

use super::{model_bytes, NodeAlgo};
use crate::model::FlatModel;
use crate::vtime::{Rendezvous, VirtualClock};
use crate::TrainError;

/// Per node: its own weight and `(neighbour, weight)` pairs; every row sums to 1.
pub(crate) fn metropolis_weights(neighbours: &[Vec<usize>]) -> Vec<(f32, Vec<(usize, f32)>)> {
    neighbours
        .iter()
        .map(|list| {
            let row: Vec<(usize, f32)> = list
                .iter()
                .map(|&j| (j, 1.0 / (1 + list.len().max(neighbours[j].len())) as f32))
                .collect();
            let own = 1.0 - row.iter().map(|(_, w)| w).sum::<f32>();
            (own, row)
        })
        .collect()
}

/// The models of one round, double-buffered by round parity.
struct Board {
    slots: [Vec<RwLock<Vec<f32>>>; 2],
    written: Rendezvous,
}

pub(super) struct Dpsgd {
    id: usize,
    own: f32,
    row: Vec<(usize, f32)>,
    board: Arc<Board>,
    round: u64,
    mixed: Vec<f32>,
    stats: NodeStats,
}

pub(super) fn nodes(
    neighbours: &[Vec<usize>],
    models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Vec<(FlatModel, Dpsgd)> {
    let n = models.len();
    let slots = || (0..n).map(|_| RwLock::new(vec![0.0; dim])).collect();
    // Each node sends its model to every neighbour, one after the other on its NIC.
    let degree = neighbours.iter().map(Vec::len).max().unwrap_or(0);
    let board = Arc::new(Board {
        slots: [slots(), slots()],
        written: Rendezvous::new(n, clock, |link| {
            link.latency_seconds + degree as f64 * link.wire_seconds(model_bytes(dim))
        }),
    });
    metropolis_weights(neighbours)
        .into_iter()
        .zip(models)
        .enumerate()
        .map(|(id, ((own, row), m))| {
            let node = Dpsgd {
                id,
                own,
                row,
                board: Arc::clone(&board),
                round: 0,
                mixed: vec![0.0; dim],
                stats: NodeStats::default(),
            };
            (m, node)
        })
        .collect()
}

impl NodeAlgo for Dpsgd {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        let slots = &self.board.slots[(self.round % 2) as usize];
        model.with_params_mut(|p| {
            slots[self.id]
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .copy_from_slice(p)
        });
        self.board.written.wait()?;
        let (own, mixed) = (self.own, &mut self.mixed);
        model.with_params_mut(|p| {
            for (m, x) in mixed.iter_mut().zip(p.iter()) {
                *m = own * x;
            }
            for &(j, w) in &self.row {
                let peer = slots[j].read().unwrap_or_else(|e| e.into_inner());
                for (m, x) in mixed.iter_mut().zip(peer.iter()) {
                    *m += w * x;
                }
            }
            p.copy_from_slice(mixed);
        });
        model.sgd_step(lr);
        self.round += 1;
        let dim = self.mixed.len();
        self.stats.local_steps += 1;
        self.stats.interactions += 1;
        self.stats.bytes_written += self.row.len() as u64 * model_bytes(dim);
        self.stats.messages += self.row.len() as u64;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
