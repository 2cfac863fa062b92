//! AD-PSGD (Lian et al., 2018): asynchronous decentralized SGD on a bipartite graph. Active nodes
//! compute a gradient at their model, then average atomically with a uniformly random neighbour
//! (which is passive: both set their model to the pair's average), then apply the gradient to
//! their own model. Passive nodes only compute gradients and apply them; they never initiate, so
//! two averagings never wait on each other (the deadlock the bipartite split avoids).
//!
//! A passive node's model lives in a shared window that active neighbours average with under its
//! lock; the node picks up the window before each step and adds its own update to it after.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarm_core::NodeStats;

use super::{model_bytes, NodeAlgo};
use crate::config::Resolved;
use crate::model::FlatModel;
use crate::TrainError;

/// A node's role in AD-PSGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Initiates averagings.
    Active,
    /// Is averaged with by active neighbours.
    Passive,
}

/// Two-colours the graph by breadth-first search (node 0 of each component active); an error
/// names an odd cycle's edge when the graph is not bipartite.
pub(crate) fn bipartite_roles(neighbours: &[Vec<usize>]) -> Result<Vec<Role>, TrainError> {
    let n = neighbours.len();
    let mut colour: Vec<Option<Role>> = vec![None; n];
    for start in 0..n {
        if colour[start].is_some() {
            continue;
        }
        colour[start] = Some(Role::Active);
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(u) = queue.pop_front() {
            let cu = colour[u].unwrap_or(Role::Active);
            let other = if cu == Role::Active {
                Role::Passive
            } else {
                Role::Active
            };
            for &v in &neighbours[u] {
                match colour[v] {
                    None => {
                        colour[v] = Some(other);
                        queue.push_back(v);
                    }
                    Some(c) if c == cu => {
                        return Err(TrainError::Config(format!(
                        "adpsgd needs a bipartite topology (active nodes only meet passive ones), \
                             but nodes {u} and {v} are neighbours on an odd cycle: use hypercube, \
                             ring or torus2d with an even number of nodes per cycle"
                    )))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(colour
        .into_iter()
        .map(|c| c.unwrap_or(Role::Active))
        .collect())
}

pub(super) enum AdPsgd {
    Active {
        neighbours: Vec<usize>,
        windows: Arc<Vec<Mutex<Vec<f32>>>>,
        rng: Box<StdRng>,
        stats: NodeStats,
    },
    Passive {
        id: usize,
        windows: Arc<Vec<Mutex<Vec<f32>>>>,
        before: Vec<f32>,
        stats: NodeStats,
    },
}

pub(super) fn nodes(
    cfg: &Resolved,
    neighbours: &[Vec<usize>],
    mut models: Vec<FlatModel>,
    dim: usize,
) -> Result<Vec<(FlatModel, AdPsgd)>, TrainError> {
    let roles = bipartite_roles(neighbours)?;
    // Every passive node's window starts at its model (active nodes' windows stay unused).
    let windows: Arc<Vec<Mutex<Vec<f32>>>> =
        Arc::new(models.iter_mut().map(|m| Mutex::new(m.params())).collect());
    Ok(models
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let node = match roles[i] {
                Role::Active => AdPsgd::Active {
                    neighbours: neighbours[i].clone(),
                    windows: Arc::clone(&windows),
                    rng: Box::new(StdRng::seed_from_u64(cfg.raw.seed ^ (0xAD00 + i as u64))),
                    stats: NodeStats::default(),
                },
                Role::Passive => AdPsgd::Passive {
                    id: i,
                    windows: Arc::clone(&windows),
                    before: vec![0.0; dim],
                    stats: NodeStats::default(),
                },
            };
            (m, node)
        })
        .collect())
}

impl NodeAlgo for AdPsgd {
    fn at_boundary(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        if let AdPsgd::Passive { id, windows, .. } = self {
            let w = windows[*id].lock().unwrap_or_else(|e| e.into_inner());
            model.with_params_mut(|p| p.copy_from_slice(&w));
        }
        Ok(())
    }

    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        match self {
            AdPsgd::Active {
                neighbours,
                windows,
                rng,
                stats,
            } => {
                if !neighbours.is_empty() {
                    let j = neighbours[rng.as_mut().random_range(0..neighbours.len())];
                    let mut w = windows[j].lock().unwrap_or_else(|e| e.into_inner());
                    model.with_params_mut(|p| {
                        for (a, b) in p.iter_mut().zip(w.iter_mut()) {
                            let avg = 0.5 * (*a + *b);
                            *a = avg;
                            *b = avg;
                        }
                    });
                    drop(w);
                    let bytes = model_bytes(model.dim());
                    stats.interactions += 1;
                    stats.bytes_read += bytes;
                    stats.bytes_written += bytes;
                    stats.messages += 2;
                }
                model.sgd_step(lr);
                stats.local_steps += 1;
            }
            AdPsgd::Passive {
                id,
                windows,
                before,
                stats,
            } => {
                model.with_params_mut(|p| before.copy_from_slice(p));
                model.sgd_step(lr);
                let mut w = windows[*id].lock().unwrap_or_else(|e| e.into_inner());
                model.with_params_mut(|p| {
                    for ((x, b), now) in w.iter_mut().zip(before.iter()).zip(p.iter()) {
                        *x += now - b;
                    }
                });
                stats.local_steps += 1;
            }
        }
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        match self {
            AdPsgd::Active { stats, .. } | AdPsgd::Passive { stats, .. } => stats.clone(),
        }
    }
}
