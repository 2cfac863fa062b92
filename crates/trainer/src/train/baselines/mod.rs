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

use std::sync::{mpsc, Arc};

use swarm_core::LocalSteps;

use super::{node_loop, NodeMsg, Shared};
use crate::config::{Algo, Resolved};
use crate::model::FlatModel;
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

/// Starts one thread per node, each running `node_loop` around its [`NodeAlgo`].
fn spawn_nodes<A: NodeAlgo + Send + 'static>(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<NodeMsg>,
    nodes: Vec<(FlatModel, A)>,
) -> Vec<std::thread::JoinHandle<()>> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, (model, algo))| {
            let shared = Arc::clone(shared);
            let tx = tx.clone();
            std::thread::spawn(move || node_loop(i, &shared, &tx, model, algo))
        })
        .collect()
}

/// Builds every node's model and state, then starts the threads of baseline `algo`.
pub(super) fn spawn(
    algo: Algo,
    cfg: &Resolved,
    shared: &Arc<Shared>,
    neighbours: &[Vec<usize>],
    dim: usize,
    tx: &mpsc::Sender<NodeMsg>,
) -> Result<Vec<std::thread::JoinHandle<()>>, TrainError> {
    let n = neighbours.len();
    let models = (0..n)
        .map(|i| shared.new_model(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match algo {
        Algo::LocalSgd => spawn_nodes(shared, tx, localsgd::nodes(cfg, models, dim)),
        Algo::Dpsgd => spawn_nodes(shared, tx, dpsgd::nodes(neighbours, models, dim)),
        Algo::Adpsgd => spawn_nodes(shared, tx, adpsgd::nodes(cfg, neighbours, models, dim)?),
        Algo::Sgp => spawn_nodes(shared, tx, sgp::nodes(models, dim)),
        Algo::Qsparse | Algo::QsparseAsync => {
            spawn_nodes(shared, tx, qsparse::nodes(algo, cfg, models, dim)?)
        }
        Algo::Lasgd => spawn_nodes(shared, tx, lasgd::nodes(cfg, models, dim)),
        Algo::Elastic | Algo::ElasticEf => {
            spawn_nodes(shared, tx, elastic::nodes(algo, cfg, models, dim)?)
        }
        Algo::Swarm | Algo::Allreduce => {
            return Err(TrainError::Config(format!(
                "{algo} is not a baseline of this module"
            )))
        }
    })
}
