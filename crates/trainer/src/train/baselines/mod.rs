//! The algorithms SwarmSGD is compared with, on the same in-process nodes, data and accounting as
//! [`super::train`]: each node is a thread running [`super::node_loop`]; what would cross the
//! network between machines goes through shared memory here, and each node counts the bytes and
//! messages the same exchange would send over a network (in its `NodeStats`: `bytes_read` for
//! what it pulls, `bytes_written` for what it pushes, `messages`).
//!
//! | algo | file | communication |
//! |---|---|---|
//! | `localsgd` | `localsgd.rs` | all-reduce of the models every H steps |
//! | `dpsgd` | `dpsgd.rs` | every step, Metropolis-weighted averaging with all neighbours |
//! | `adpsgd` | `adpsgd.rs` | active nodes average atomically with a random passive neighbour |
//! | `sgp` | `sgp.rs` | push-sum, one out-peer a step on the directed exponential graph |
//! | `qsparse`, `qsparse-async` | `qsparse.rs` | compressed progress with error feedback every H steps |
//! | `lasgd` | `lasgd.rs` | all-reduce of the models in the background every H steps |
//! | `elastic`, `elastic-ef` | `elastic.rs` | sparsified gradients into a shared model |

use std::sync::Arc;

use swarm_core::LocalSteps;

use super::BuiltNode;
use crate::config::{Algo, Resolved};
use crate::model::FlatModel;
use crate::vtime::VirtualClock;
use crate::worker::NodeAlgo;
use crate::TrainError;

mod adpsgd;
mod dpsgd;
mod elastic;
mod lasgd;
mod localsgd;
mod qsparse;
mod sgp;

#[cfg(test)]
mod tests;

use qsparse::Compressor;

/// Bytes of one full-precision model message (`dim` f32 plus an 8-byte header, as the identity
/// codec sends it).
fn model_bytes(dim: usize) -> u64 {
    8 + 4 * dim as u64
}

/// The period H of the synchronous algorithms (a geometric H uses its mean, rounded).
fn period(local_steps: LocalSteps) -> u64 {
    (local_steps.mean().round() as u64).max(1)
}

/// Boxes each node's algorithm.
fn boxed<A: NodeAlgo + Send + 'static>(nodes: Vec<(FlatModel, A)>) -> Vec<BuiltNode> {
    nodes
        .into_iter()
        .map(|(model, algo)| {
            let algo: Box<dyn NodeAlgo + Send> = Box::new(algo);
            (model, algo)
        })
        .collect()
}

/// Every node's state for baseline `algo`, around the nodes' `models`. In an emulated cluster
/// (`clock`) the synchronous baselines' barriers are collectives of the virtual clock.
pub(super) fn build(
    algo: Algo,
    cfg: &Resolved,
    neighbours: &[Vec<usize>],
    models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Result<Vec<BuiltNode>, TrainError> {
    Ok(match algo {
        Algo::LocalSgd => boxed(localsgd::nodes(cfg, models, dim, clock)),
        Algo::Dpsgd => boxed(dpsgd::nodes(neighbours, models, dim, clock)),
        Algo::Adpsgd => boxed(adpsgd::nodes(cfg, neighbours, models, dim)?),
        Algo::Sgp => boxed(sgp::nodes(models, dim, clock)),
        Algo::Qsparse | Algo::QsparseAsync => boxed(qsparse::nodes(algo, cfg, models, dim, clock)?),
        Algo::Lasgd => boxed(lasgd::nodes(cfg, models, dim, clock)),
        Algo::Elastic | Algo::ElasticEf => boxed(elastic::nodes(algo, cfg, models, dim)?),
        Algo::Swarm | Algo::Allreduce => {
            return Err(TrainError::Config(format!(
                "{algo} is not a baseline of this module"
            )))
        }
    })
}
