//! `swarm train --cluster SPEC`: the in-process nodes run in virtual time (see [`crate::vtime`]).
//!
//! The nodes are the in-process run's: the same models, data, minibatch streams and algorithms
//! (`build_nodes`), stepped by the same `worker::Stepper`. What changes is time. Each local step
//! takes the time the cluster's compute model gives; SwarmSGD's reads and writes go through
//! [`VirtualLink`], so a read lands when the emulated network delivers it and holds the partner's
//! window as it was at that instant; the synchronous baselines' barriers are collectives costed
//! on the emulated links (LASGD's all-reduce runs in the background and is waited for at the next
//! synchronisation); the exchanges that happen at once in shared memory (AD-PSGD's averaging,
//! the parameter server of `elastic` and `qsparse-async`) cost their node the messages it counts
//! (latency and bytes, no contention) after its step.
//!
//! Nodes do not stop at epoch ends. The run ends when the nodes have taken as many local steps as
//! the real run would (`nodes * steps_per_epoch * epochs`): the synchronous algorithms take them
//! in lockstep, the asynchronous ones take them as fast as each node goes (a fast node takes more)
//! and follow the learning-rate schedule by the steps of all nodes. The averaged model is
//! evaluated at fixed virtual instants; `metrics.csv`'s `train_seconds` and the summary's times
//! are virtual seconds. Bit-identical for the same seed and spec (with `fixed:MS` step times).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use swarm_core::{Completion, NodeId, NodeStats, OpId, Transport, TransportError};

use super::{build_nodes, Shared};
use crate::config::{Algo, Resolved};
use crate::model::FlatModel;
use crate::report::{EvalRow, RunTally, Summary};
use crate::setup::RunSetup;
use crate::vtime::{ClusterSpec, ComputeModel, Nanos, NodeTime, StepTime, VirtualClock};
use crate::worker::{Alone, NodeAlgo, Stepper};
use crate::TrainError;

struct LinkState<T> {
    inner: T,
    landed: VecDeque<Completion>,
    /// Operations on the emulated network: when each completes, its peer, and whether it reads.
    pending: BTreeMap<OpId, (Nanos, NodeId, bool)>,
}

/// A transport whose reads and writes complete when the emulated network delivers them: the copy
/// (or the deposit) is made at that virtual instant, through the in-process transport inside.
pub struct VirtualLink<T: Transport> {
    me: NodeId,
    clock: Arc<VirtualClock>,
    state: Arc<Mutex<LinkState<T>>>,
    next_op: OpId,
}

impl<T: Transport + 'static> VirtualLink<T> {
    pub(crate) fn new(inner: T, clock: Arc<VirtualClock>) -> Self {
        VirtualLink {
            me: inner.node(),
            clock,
            state: Arc::new(Mutex::new(LinkState {
                inner,
                landed: VecDeque::new(),
                pending: BTreeMap::new(),
            })),
            next_op: 0,
        }
    }

    fn lock(state: &Mutex<LinkState<T>>) -> std::sync::MutexGuard<'_, LinkState<T>> {
        state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers operation `op` completing at `done`, when `run` performs it on the inner
    /// transport and the completion lands.
    fn schedule(
        &mut self,
        (done, peer, read): (Nanos, NodeId, bool),
        run: impl FnOnce(&mut T) -> Completion + Send + 'static,
    ) -> OpId {
        self.next_op += 1;
        let op = self.next_op;
        Self::lock(&self.state)
            .pending
            .insert(op, (done, peer, read));
        let state = Arc::clone(&self.state);
        self.clock.at(
            done,
            Box::new(move || {
                let mut s = Self::lock(&state);
                let completion = match run(&mut s.inner) {
                    Completion::Read {
                        peer, buf, result, ..
                    } => Completion::Read {
                        op,
                        peer,
                        buf,
                        result,
                    },
                    Completion::Write { peer, result, .. } => {
                        Completion::Write { op, peer, result }
                    }
                };
                s.pending.remove(&op);
                s.landed.push_back(completion);
            }),
        );
        op
    }
}

/// Performs a started operation on an in-process transport, which completes at once.
fn finish_now<T: Transport>(
    inner: &mut T,
    started: Result<OpId, TransportError>,
    fallback: Completion,
) -> Completion {
    match started {
        Ok(_) => inner.poll().unwrap_or(fallback),
        Err(e) => match fallback {
            Completion::Read { op, peer, buf, .. } => Completion::Read {
                op,
                peer,
                buf,
                result: Err(e),
            },
            Completion::Write { op, peer, .. } => Completion::Write {
                op,
                peer,
                result: Err(e),
            },
        },
    }
}

fn lost(peer: NodeId) -> TransportError {
    TransportError::Unreachable {
        peer,
        why: "the emulated run stopped".into(),
    }
}

/// A read (or write) of `peer` that will never complete, handed back as failed.
fn lost_op(op: OpId, peer: NodeId, read: bool) -> Completion {
    if read {
        Completion::Read {
            op,
            peer,
            buf: Vec::new(),
            result: Err(lost(peer)),
        }
    } else {
        Completion::Write {
            op,
            peer,
            result: Err(lost(peer)),
        }
    }
}

impl<T: Transport + 'static> Transport for VirtualLink<T> {
    fn node(&self) -> NodeId {
        self.me
    }

    fn capacity(&self) -> usize {
        Self::lock(&self.state).inner.capacity()
    }

    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        Self::lock(&self.state).inner.publish(payload)
    }

    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        Self::lock(&self.state).inner.publish_with(len, fill)
    }

    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        let now = self.clock.now(self.me);
        let done = self.clock.read(self.me, peer, len as u64, now);
        Ok(self.schedule((done, peer, true), move |inner| {
            let started = inner.start_read(peer, offset, len, buf);
            finish_now(inner, started, lost_op(0, peer, true))
        }))
    }

    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        let now = self.clock.now(self.me);
        let done = self.clock.message(self.me, peer, payload.len() as u64, now);
        let payload = payload.to_vec();
        Ok(self.schedule((done, peer, false), move |inner| {
            let started = inner.start_write(peer, &payload);
            finish_now(inner, started, lost_op(0, peer, false))
        }))
    }

    fn poll(&mut self) -> Option<Completion> {
        Self::lock(&self.state).landed.pop_front()
    }

    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        Self::lock(&self.state).inner.slot_free_at(peer)
    }

    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        Self::lock(&self.state).inner.take_inbox(visit)
    }

    fn release_inbox(&mut self) -> Result<(), TransportError> {
        Self::lock(&self.state).inner.release_inbox()
    }

    /// Waits, in virtual time, for the next operation to complete.
    fn idle(&mut self, _empty_polls: u32) {
        let next = Self::lock(&self.state)
            .pending
            .values()
            .map(|&(done, _, _)| done)
            .min();
        let Some(at) = next else {
            return;
        };
        if self.clock.wait_until(self.me, at).is_err() {
            // The run stopped: what was in flight will never land; hand it back as failed.
            let mut s = Self::lock(&self.state);
            for (op, (_, peer, read)) in std::mem::take(&mut s.pending) {
                s.landed.push_back(lost_op(op, peer, read));
            }
        }
    }
}

/// What a node hands the coordinator.
enum Report {
    /// The node's model at the first step boundary at or after eval instant `index`.
    Snapshot {
        node: usize,
        index: usize,
        snap: Snap,
    },
    /// The node's model when it stopped.
    Final {
        node: usize,
        snap: Snap,
    },
    Failed {
        node: usize,
        error: String,
    },
}

#[derive(Clone)]
struct Snap {
    params: Vec<f32>,
    loss_sum: f64,
    steps: u64,
    stats: NodeStats,
    at: Nanos,
}

/// Everything a node thread of the emulation shares.
struct Emulation {
    shared: Arc<Shared>,
    clock: Arc<VirtualClock>,
    compute: Mutex<ComputeModel>,
    /// Local steps of all nodes so far, and the run's budget of them.
    total_steps: AtomicU64,
    budget: u64,
    /// Asynchronous algorithms stop on the run's budget, synchronous ones on their own share.
    asynchronous: bool,
    /// Charge a node's counted messages as blocking network time after its step.
    charge_messages: bool,
    eval_every: Nanos,
}

/// A node's algorithm, charged its compute time before its update and exchange.
struct Timed<'a> {
    node: usize,
    emu: &'a Emulation,
    algo: Box<dyn NodeAlgo + Send>,
}

impl NodeAlgo for Timed<'_> {
    fn at_boundary(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        self.algo.at_boundary(model)
    }

    fn at_epoch_end(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        self.algo.at_epoch_end(model)
    }

    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        let clock = &self.emu.clock;
        let now = clock.now(self.node);
        let step = self
            .emu
            .compute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_step(self.node, now);
        clock.advance(self.node, step, true)?;
        let before = self.emu.charge_messages.then(|| self.algo.stats());
        self.algo.after_step(model, lr)?;
        if let Some(before) = before {
            let after = self.algo.stats();
            let link = clock.link();
            let messages = after.messages - before.messages;
            let bytes = after.bytes_sent() - before.bytes_sent();
            let seconds = messages as f64 * link.latency_seconds + link.wire_seconds(bytes);
            clock.advance(self.node, (seconds * 1e9).round() as Nanos, false)?;
        }
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.algo.stats()
    }
}

fn node_thread(
    node: usize,
    emu: &Emulation,
    tx: &mpsc::Sender<Report>,
    mut model: FlatModel,
    algo: Box<dyn NodeAlgo + Send>,
) {
    let result = (|| -> Result<(), TrainError> {
        let shared = &emu.shared;
        let mut stepper = Stepper::new(
            &shared.train,
            &shared.parts[node],
            (shared.seed, node),
            shared.batch_size,
            shared.lr,
            0,
        );
        let mut timed = Timed { node, emu, algo };
        emu.clock.enter(node)?;
        let n = shared.parts.len() as u64;
        let own_budget = emu.budget / n;
        let (mut loss_sum, mut steps, mut next_eval) = (0.0, 0u64, 1usize);
        loop {
            let total = emu.total_steps.load(Ordering::Relaxed);
            let done = if emu.asynchronous {
                total >= emu.budget
            } else {
                stepper.steps() as u64 >= own_budget
            };
            if done {
                break;
            }
            let schedule_step = if emu.asynchronous {
                (total / n) as usize
            } else {
                stepper.steps()
            };
            loss_sum += stepper.step_at(&mut model, &mut timed, schedule_step)?;
            steps += 1;
            emu.total_steps.fetch_add(1, Ordering::Relaxed);
            let now = emu.clock.now(node);
            while now >= next_eval as Nanos * emu.eval_every {
                let snap = Snap {
                    params: model.params(),
                    loss_sum: std::mem::take(&mut loss_sum),
                    steps: std::mem::take(&mut steps),
                    stats: timed.stats(),
                    at: now,
                };
                let _ = tx.send(Report::Snapshot {
                    node,
                    index: next_eval,
                    snap,
                });
                next_eval += 1;
            }
        }
        timed.at_epoch_end(&mut model)?;
        let snap = Snap {
            params: model.params(),
            loss_sum,
            steps,
            stats: timed.stats(),
            at: emu.clock.now(node),
        };
        let _ = tx.send(Report::Final { node, snap });
        Ok(())
    })();
    if let Err(e) = result {
        emu.clock.fail(format!("node {node}: {e}"));
        let _ = tx.send(Report::Failed {
            node,
            error: e.to_string(),
        });
    }
    emu.clock.leave(node);
}

/// The machine's step time: the median of timed local steps of a node alone.
fn measure_step_seconds(shared: &Shared) -> Result<f64, TrainError> {
    let mut model = shared.new_model(0)?;
    let mut stepper = Stepper::new(
        &shared.train,
        &shared.parts[0],
        (shared.seed, 0),
        shared.batch_size,
        shared.lr,
        0,
    );
    let mut times = Vec::new();
    for k in 0..25 {
        let t = Instant::now();
        stepper.step(&mut model, &mut Alone)?;
        if k >= 5 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    // Rounded to the microsecond, so that `fixed:MS` with the printed value reproduces the run.
    Ok((times[times.len() / 2] * 1e6).round().max(1.0) * 1e-6)
}

/// Per-node virtual time and the emulator's own cost, written to `cluster.json`.
#[derive(Serialize)]
struct ClusterReport<'a> {
    spec: &'a ClusterSpec,
    step_seconds: f64,
    virtual_seconds: f64,
    eval_every_seconds: f64,
    node_time: Vec<NodeTime>,
    /// Real seconds of the emulation (nodes' turns, the clock's hand-offs, evaluations in
    /// parallel); not part of the deterministic outputs.
    real_seconds: f64,
    /// Real seconds during which a node held its turn (its step, its exchange, its bookkeeping).
    turn_seconds: f64,
    /// Real time not spent in nodes' turns, relative to the time in turns.
    overhead: f64,
}

/// Runs `cfg` on the cluster of `cfg.cluster` in virtual time.
pub fn train(cfg: &Resolved) -> Result<Summary, TrainError> {
    let spec = cfg
        .cluster
        .clone()
        .ok_or_else(|| TrainError::Config("no --cluster given".into()))?;
    let started = Instant::now();
    tch::set_num_threads(1);
    let n = cfg.raw.nodes;
    let RunSetup {
        data,
        neighbours,
        parts,
        classes,
        steps_per_epoch,
        lr,
        identity: _,
    } = RunSetup::new(cfg, n)?;
    let shared = Arc::new(super::shared(
        cfg,
        &data.train,
        parts,
        (classes, steps_per_epoch, lr),
        Vec::new(),
        vec![tch::Device::Cpu; n],
    ));
    let step_seconds = match spec.step {
        StepTime::Fixed(s) => s,
        StepTime::Measured => {
            let s = measure_step_seconds(&shared)?;
            eprintln!(
                "measured step time {:.3} ms (median of 20 steps); `fixed:{:.3}` reproduces this run",
                s * 1e3,
                s * 1e3
            );
            s
        }
    };
    let mut eval_model = FlatModel::new_on(
        cfg.model,
        data.train.shape,
        classes,
        cfg.raw.seed,
        tch::Device::Cpu,
    )?;
    let dim = eval_model.dim();
    crate::report::create_output_dir(&cfg.raw.out)?;
    let clock = Arc::new(VirtualClock::new(n, spec.network.clone()));
    let nodes = build_nodes(cfg, &shared, &neighbours, dim, Some(&clock))?;
    let eval_every_seconds = spec
        .eval_every_seconds
        .unwrap_or(step_seconds * steps_per_epoch as f64);
    let emu = Arc::new(Emulation {
        shared: Arc::clone(&shared),
        clock: Arc::clone(&clock),
        compute: Mutex::new(ComputeModel::new(&spec, n, step_seconds, cfg.raw.seed)),
        total_steps: AtomicU64::new(0),
        budget: (n * steps_per_epoch * cfg.raw.epochs) as u64,
        asynchronous: matches!(
            cfg.raw.algo,
            Algo::Swarm | Algo::Adpsgd | Algo::QsparseAsync | Algo::Elastic | Algo::ElasticEf
        ),
        charge_messages: matches!(
            cfg.raw.algo,
            Algo::Adpsgd | Algo::QsparseAsync | Algo::Elastic | Algo::ElasticEf
        ),
        eval_every: ((eval_every_seconds * 1e9).round() as Nanos).max(1),
    });
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, (model, algo))| {
            let (emu, tx) = (Arc::clone(&emu), tx.clone());
            std::thread::spawn(move || node_thread(i, &emu, &tx, model, algo))
        })
        .collect();
    drop(tx);

    let mut pending: BTreeMap<usize, Vec<Option<Snap>>> = BTreeMap::new();
    let mut finals: Vec<Option<Snap>> = vec![None; n];
    let mut rows = Vec::new();
    let mut failure = None;
    let mut evaluate = |snaps: &[&Snap], index: usize, at: Nanos| -> Result<EvalRow, TrainError> {
        let models: Vec<&[f32]> = snaps.iter().map(|s| s.params.as_slice()).collect();
        let average: Vec<f32> = crate::report::average_model(models.iter().copied());
        eval_model.load(&average)?;
        let (test_loss, test_accuracy) = eval_model.evaluate(&data.test);
        let steps: u64 = snaps.iter().map(|s| s.steps).sum();
        Ok(EvalRow {
            epoch: index,
            train_loss: snaps.iter().map(|s| s.loss_sum).sum::<f64>() / steps.max(1) as f64,
            test_loss,
            test_accuracy,
            train_seconds: at as f64 * 1e-9,
            bytes_sent_total: run_bytes(cfg.raw.algo, n, dim, snaps),
            interactions: snaps.iter().map(|s| s.stats.interactions).sum(),
            model_spread: swarm_core::spread(models.iter().copied()),
        })
    };
    for report in rx {
        match report {
            Report::Snapshot { node, index, snap } => {
                pending.entry(index).or_insert_with(|| vec![None; n])[node] = Some(snap);
            }
            Report::Final { node, snap } => finals[node] = Some(snap),
            Report::Failed { node, error } => {
                failure.get_or_insert(format!("node {node}: {error}"));
            }
        }
        // An eval instant is complete when every node sent its snapshot or stopped before it.
        while let Some((&index, snaps)) = pending.iter().next() {
            let ready: Option<Vec<&Snap>> = snaps
                .iter()
                .zip(&finals)
                .map(|(s, f)| s.as_ref().or(f.as_ref()))
                .collect();
            let Some(ready) = ready else { break };
            if failure.is_none() {
                let row = evaluate(&ready, index, index as Nanos * emu.eval_every)?;
                if !cfg.raw.quiet {
                    eprintln!(
                        "virtual {:>9.3} s  steps {:>8}  test acc {:.2}%",
                        row.train_seconds,
                        emu.total_steps.load(Ordering::Relaxed),
                        100.0 * row.test_accuracy
                    );
                }
                rows.push(row);
            }
            pending.remove(&index);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(f) = failure {
        return Err(TrainError::Node(f));
    }
    let finals: Vec<Snap> = finals
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| TrainError::Node("a node stopped without its final model".into()))?;
    let end = finals.iter().map(|s| s.at).max().unwrap_or(0);
    let refs: Vec<&Snap> = finals.iter().collect();
    let final_row = evaluate(&refs, rows.len() + 1, end)?;
    rows.push(final_row.clone());
    let node_accuracies = crate::report::each_accuracy(
        &mut eval_model,
        finals.iter().map(|s| s.params.as_slice()),
        &data.test,
    )?;
    let average: Vec<f32> =
        crate::report::average_model(finals.iter().map(|s| s.params.as_slice()));
    eval_model.load(&average)?;
    let virtual_seconds = end as f64 * 1e-9;
    let summary = Summary::new(
        cfg,
        n,
        RunTally {
            final_row: &final_row,
            node_accuracies: &node_accuracies,
            node_stats: finals.iter().map(|s| s.stats.clone()).collect(),
            local_steps_total: emu.total_steps.load(Ordering::Relaxed),
            wall_seconds: virtual_seconds,
            epochs_trained: cfg.raw.epochs,
            parameters: dim,
        },
    );
    crate::report::write_outputs(&cfg.raw.out, &rows, &summary, &eval_model)?;
    let real_seconds = started.elapsed().as_secs_f64();
    let turn_seconds = clock.held_seconds();
    let report = ClusterReport {
        spec: &spec,
        step_seconds,
        virtual_seconds,
        eval_every_seconds,
        node_time: clock.node_times(),
        real_seconds,
        turn_seconds,
        overhead: clock.handoff_seconds() / turn_seconds.max(1e-9),
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| TrainError::Output(format!("cluster.json: {e}")))?;
    std::fs::write(cfg.raw.out.join("cluster.json"), json)
        .map_err(|e| TrainError::Output(format!("cluster.json: {e}")))?;
    eprintln!(
        "emulated {virtual_seconds:.3} virtual s in {real_seconds:.1} real s; the clock's own \
         time was {:.1}% of the nodes' turns",
        100.0 * report.overhead
    );
    Ok(summary)
}

/// Bytes the nodes sent so far: what they counted, or for all-reduce SGD one ring all-reduce of
/// the gradient per round.
fn run_bytes(algo: Algo, n: usize, dim: usize, snaps: &[&Snap]) -> u64 {
    match algo {
        Algo::Allreduce => {
            let rounds = snaps.iter().map(|s| s.stats.local_steps).max().unwrap_or(0);
            rounds * super::allreduce_bytes_per_round(n, dim)
        }
        _ => snaps.iter().map(|s| s.stats.bytes_sent()).sum(),
    }
}
