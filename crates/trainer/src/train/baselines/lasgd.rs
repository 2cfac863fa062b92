//! LASGD (locally asynchronous SGD): local steps, with the all-reduce of the models running in
//! the background. Every H steps a node snapshots its model and hands it to an all-reduce that
//! completes while it keeps stepping; at its next synchronisation it swaps the snapshot's share
//! for the average, `x_i <- x_i + (mean(s) - s_i)`, keeping the progress it made meanwhile, and
//! starts the next all-reduce. The network-time model overlaps this all-reduce with computation.

use std::sync::{Arc, Condvar, Mutex};

use swarm_core::NodeStats;

use super::{period, NodeAlgo};
use crate::config::Resolved;
use crate::model::FlatModel;
use crate::netmodel::ring_allreduce_per_node;
use crate::vtime::{Nanos, Stopped, VirtualClock};
use crate::TrainError;

/// Sum, contributions and readers of one round.
struct Round {
    sum: Vec<f32>,
    added: usize,
    read: usize,
}

/// A non-blocking all-reduce: `start` contributes, `finish` waits for every contribution.
/// Two rounds alternate; a node starts round r + 2 only after finishing r + 1, which needs every
/// node to have started r + 1, after finishing r: so round r's buffer is free by then.
/// In an emulated cluster, the clock times each round as a ring all-reduce of the models.
struct Background {
    rounds: [(Mutex<Round>, Condvar); 2],
    n: usize,
    clock: Option<(Arc<VirtualClock>, Nanos)>,
}

impl Background {
    fn start(&self, round: u64, v: &[f32]) -> Result<(), Stopped> {
        let (lock, cv) = &self.rounds[(round % 2) as usize];
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        for (s, x) in r.sum.iter_mut().zip(v) {
            *s += x;
        }
        r.added += 1;
        if r.added == self.n {
            cv.notify_all();
        }
        drop(r);
        match &self.clock {
            Some((clock, cost)) => clock.background_start(round, *cost),
            None => Ok(()),
        }
    }

    fn finish(&self, round: u64, mean: &mut [f32]) -> Result<(), Stopped> {
        if let Some((clock, _)) = &self.clock {
            // Every node has contributed once the clock lets this one go on.
            clock.background_finish(round)?;
        }
        let (lock, cv) = &self.rounds[(round % 2) as usize];
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        while r.added < self.n {
            r = cv.wait(r).unwrap_or_else(|e| e.into_inner());
        }
        let scale = 1.0 / self.n as f32;
        for (m, s) in mean.iter_mut().zip(&r.sum) {
            *m = s * scale;
        }
        r.read += 1;
        if r.read == self.n {
            r.sum.fill(0.0);
            r.added = 0;
            r.read = 0;
        }
        Ok(())
    }
}

pub(super) struct Lasgd {
    h: u64,
    round: u64,
    pending: Option<u64>,
    snapshot: Vec<f32>,
    mean: Vec<f32>,
    background: Arc<Background>,
    ring: (u64, u64),
    stats: NodeStats,
}

pub(super) fn nodes(
    cfg: &Resolved,
    models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Vec<(FlatModel, Lasgd)> {
    let n = models.len();
    let round = || {
        (
            Mutex::new(Round {
                sum: vec![0.0; dim],
                added: 0,
                read: 0,
            }),
            Condvar::new(),
        )
    };
    let background = Arc::new(Background {
        rounds: [round(), round()],
        n,
        clock: clock.map(|c| {
            let cost = c.link().ring_allreduce_seconds(n, 4 * dim as u64);
            (Arc::clone(c), (cost * 1e9).round() as Nanos)
        }),
    });
    models
        .into_iter()
        .map(|m| {
            let node = Lasgd {
                h: period(cfg.local_steps),
                round: 0,
                pending: None,
                snapshot: vec![0.0; dim],
                mean: vec![0.0; dim],
                background: Arc::clone(&background),
                ring: ring_allreduce_per_node(n, dim),
                stats: NodeStats::default(),
            };
            (m, node)
        })
        .collect()
}

impl NodeAlgo for Lasgd {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        self.stats.local_steps += 1;
        if self.stats.local_steps % self.h != 0 {
            return Ok(());
        }
        if let Some(r) = self.pending.take() {
            self.background.finish(r, &mut self.mean)?;
            let (mean, snapshot) = (&self.mean, &self.snapshot);
            model.with_params_mut(|p| {
                for ((x, m), s) in p.iter_mut().zip(mean).zip(snapshot) {
                    *x += m - s;
                }
            });
            self.stats.interactions += 1;
        }
        let snapshot = &mut self.snapshot;
        model.with_params_mut(|p| snapshot.copy_from_slice(p));
        self.background.start(self.round, &self.snapshot)?;
        self.pending = Some(self.round);
        self.round += 1;
        self.stats.bytes_written += self.ring.0;
        self.stats.messages += self.ring.1;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
