//! Elastic-consistency asynchronous SGD (Nadiradze et al., AAAI 2021): nodes share one model (a
//! parameter server, or shared memory). Before each step a node reads the shared model (by then
//! possibly updated by others: the read is stale or inconsistent, within the elastic bound), takes
//! a stochastic gradient there, sparsifies `lr * g` with the run's codec (e.g. `topk:0.01`) and
//! applies the result to the shared model. `elastic-ef` keeps what the sparsifier dropped and adds
//! it to the next update (error feedback); `elastic` drops it. The nodes' own optimizer settings
//! (momentum, weight decay) are not used: the update is plain SGD.

use std::sync::{Arc, RwLock};

use swarm_core::NodeStats;

use super::{model_bytes, NodeAlgo};
use crate::config::{Algo, Resolved};
use crate::model::FlatModel;
use crate::TrainError;

use super::Compressor;

pub(super) struct Elastic {
    shared: Arc<RwLock<Vec<f32>>>,
    compressor: Compressor,
    grad: Vec<f32>,
    update: Vec<f32>,
    stats: NodeStats,
}

pub(super) fn nodes(
    algo: Algo,
    cfg: &Resolved,
    mut models: Vec<FlatModel>,
    dim: usize,
) -> Result<Vec<(FlatModel, Elastic)>, TrainError> {
    let init = models.first_mut().map(|m| m.params()).unwrap_or_default();
    let shared = Arc::new(RwLock::new(init));
    models
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let codec = cfg
                .quant
                .build(cfg.raw.seed ^ (0xE1 + i as u64))
                .map_err(|e| TrainError::Config(format!("quant: {e}")))?;
            let node = Elastic {
                shared: Arc::clone(&shared),
                compressor: Compressor::new(codec, algo == Algo::ElasticEf),
                grad: vec![0.0; dim],
                update: vec![0.0; dim],
                stats: NodeStats::default(),
            };
            Ok((m, node))
        })
        .collect()
}

impl NodeAlgo for Elastic {
    fn at_boundary(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        let shared = self.shared.read().unwrap_or_else(|e| e.into_inner());
        model.with_params_mut(|p| p.copy_from_slice(&shared));
        drop(shared);
        self.stats.bytes_read += model_bytes(self.update.len());
        self.stats.messages += 1;
        Ok(())
    }

    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        let lr = lr as f32;
        let update = &mut self.update;
        model.with_grad_mut(&mut self.grad, |g| {
            for (u, g) in update.iter_mut().zip(g.iter()) {
                *u = lr * g;
            }
        })?;
        let payload = self.compressor.compress(&mut self.update)?;
        let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
        for (x, u) in shared.iter_mut().zip(&self.update) {
            *x -= u;
        }
        drop(shared);
        self.stats.local_steps += 1;
        self.stats.interactions += 1;
        self.stats.bytes_written += payload;
        self.stats.messages += 1;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
