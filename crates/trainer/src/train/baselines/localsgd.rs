//! Local SGD (periodic averaging): every node takes H local steps, then all nodes replace their
//! model by the average of all models (a ring all-reduce on a cluster), synchronously.

use std::sync::Arc;

use swarm_core::NodeStats;

use super::super::Reducer;
use super::{period, NodeAlgo};
use crate::config::Resolved;
use crate::model::FlatModel;
use crate::netmodel::ring_allreduce_per_node;
use crate::vtime::VirtualClock;
use crate::TrainError;

pub(super) struct LocalSgd {
    h: u64,
    rounds: u64,
    reducer: Arc<Reducer>,
    ring: (u64, u64),
    stats: NodeStats,
}

pub(super) fn nodes(
    cfg: &Resolved,
    models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Vec<(FlatModel, LocalSgd)> {
    let n = models.len();
    let reducer = Arc::new(Reducer::ring(n, dim, clock));
    models
        .into_iter()
        .map(|m| {
            let node = LocalSgd {
                h: period(cfg.local_steps),
                rounds: 0,
                reducer: Arc::clone(&reducer),
                ring: ring_allreduce_per_node(n, dim),
                stats: NodeStats::default(),
            };
            (m, node)
        })
        .collect()
}

impl NodeAlgo for LocalSgd {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        self.stats.local_steps += 1;
        if self.stats.local_steps % self.h == 0 {
            let round = self.rounds;
            model.with_params_mut(|p| self.reducer.allreduce(round, p))?;
            self.rounds += 1;
            self.stats.interactions += 1;
            self.stats.bytes_written += self.ring.0;
            self.stats.messages += self.ring.1;
        }
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
