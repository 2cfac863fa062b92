//! The training runs: SwarmSGD and synchronous all-reduce SGD, one thread per node.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use swarm_core::{InProcessFabric, NodeStats};

use crate::config::{Algo, Resolved};
use crate::data::Split;
use crate::model::{FlatModel, ModelKind};
use crate::report::{EpochLine, RunTally};
use crate::setup::{check_fabric_memory, swarm_node, window_capacity, RunSetup};
use crate::vtime::{LinkModel, Rendezvous, Stopped, VirtualClock};
use crate::worker::{NodeAlgo, Stepper};
use crate::TrainError;

mod baselines;
pub mod emulated;

pub use crate::report::{EvalRow, Summary};

enum NodeMsg {
    /// A node's model at the end of an epoch.
    Snapshot {
        node: usize,
        params: Vec<f32>,
        /// The optimizer state, at checkpoint epochs only (else empty).
        optimizer_state: Vec<f32>,
        loss_sum: f64,
        steps: u64,
        stats: Box<NodeStats>,
        /// CPU time of the node's thread and wall time inside training so far (seconds).
        busy: (f64, f64),
    },
    /// A node failed; the run stops.
    Failed { node: usize, error: String },
    /// Node 0's model after `step` local steps (`--eval-every`), sent without pausing.
    Probe { step: usize, params: Vec<f32> },
}

/// Everything a node thread needs.
struct Shared {
    train: Split,
    parts: Vec<Vec<usize>>,
    kind: ModelKind,
    classes: usize,
    steps_per_epoch: usize,
    epochs: usize,
    batch_size: usize,
    lr: crate::config::LrSchedule,
    seed: u64,
    /// End of an epoch: every node stopped stepping (and, for swarm, may fold its inbox).
    stopped: Barrier,
    /// The coordinator evaluated; nodes may go on.
    resumed: Barrier,
    abort: AtomicBool,
    steps_done: AtomicU64,
    sgd: crate::model::SgdConfig,
    /// Epochs already done (by the run resumed from `resume`).
    start_epoch: usize,
    /// Each node's checkpoint when resuming, else empty.
    resume: Vec<crate::checkpoint::NodeCheckpoint>,
    checkpoint_every: Option<usize>,
    eval_every: Option<usize>,
    /// Keeps node threads within `--max-lead` steps of the slowest.
    pacer: crate::pace::Pacer,
    /// Where each node's model lives (`--device`).
    devices: Vec<tch::Device>,
}

impl Shared {
    /// Node `node`'s model: the run's common initialisation (every node starts from the same
    /// point), or its checkpoint when resuming.
    fn new_model(&self, node: usize) -> Result<FlatModel, TrainError> {
        let device = self.devices[node];
        let mut model =
            FlatModel::new_on(self.kind, self.train.shape, self.classes, self.seed, device)?;
        model.set_sgd(self.sgd);
        if let Some(ck) = self.resume.get(node) {
            model.load(&ck.params)?;
            model.load_optimizer_state(&ck.optimizer_state)?;
        }
        Ok(model)
    }

    /// Whether the end of epoch `epoch` (counted from 1) writes a checkpoint.
    fn checkpoint_due(&self, epoch: usize) -> bool {
        crate::worker::checkpoint_due(self.checkpoint_every, epoch, self.epochs)
    }
}

/// What the node threads of a run share: its data and shards, `(classes, steps_per_epoch, lr)`,
/// each node's checkpoint when resuming, and each node's device.
fn shared(
    cfg: &Resolved,
    train: &Split,
    parts: Vec<Vec<usize>>,
    (classes, steps_per_epoch, lr): (usize, usize, crate::config::LrSchedule),
    resume: Vec<crate::checkpoint::NodeCheckpoint>,
    devices: Vec<tch::Device>,
) -> Shared {
    let n = parts.len();
    let start_epoch = resume.first().map_or(0, |ck| ck.epoch);
    Shared {
        train: train.clone(),
        parts,
        kind: cfg.model,
        classes,
        steps_per_epoch,
        epochs: cfg.raw.epochs,
        batch_size: cfg.raw.batch_size,
        lr,
        seed: cfg.raw.seed,
        stopped: Barrier::new(n),
        resumed: Barrier::new(n + 1),
        abort: AtomicBool::new(false),
        steps_done: AtomicU64::new(0),
        sgd: cfg.sgd,
        start_epoch,
        resume,
        checkpoint_every: cfg.raw.checkpoint_every,
        eval_every: cfg.raw.eval_every,
        pacer: crate::pace::Pacer::new(n, (start_epoch * steps_per_epoch) as u64, cfg.max_lead),
        devices,
    }
}

/// Runs the configured training and writes metrics.csv, summary.json and model.safetensors
/// (in virtual time on an emulated cluster with `--cluster`).
pub fn train(cfg: &Resolved) -> Result<Summary, TrainError> {
    if cfg.cluster.is_some() {
        return emulated::train(cfg);
    }
    train_accounted(cfg).map(|(summary, _)| summary)
}

/// [`train`], also returning each node's cumulative account at the end of every epoch (bytes,
/// messages, compute and wait time), which it writes to `accounting.json` too. An emulated run
/// (`--cluster`) has its times in `cluster.json` instead, and returns no accounts.
pub fn train_accounted(
    cfg: &Resolved,
) -> Result<(Summary, Vec<Vec<crate::netmodel::NodeAccount>>), TrainError> {
    if cfg.cluster.is_some() {
        return emulated::train(cfg).map(|s| (s, Vec::new()));
    }
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
        identity,
    } = RunSetup::new(cfg, n)?;
    let devices = crate::device::this_run_devices(&cfg.raw.device, n)?;
    // Evaluates the averaged model each epoch, and each node's model at the end.
    let mut eval_model = FlatModel::new_on(
        cfg.model,
        data.train.shape,
        classes,
        cfg.raw.seed,
        devices[0],
    )?;
    let dim = eval_model.dim();
    crate::report::create_output_dir(&cfg.raw.out)?;

    let resume = match &cfg.raw.resume {
        Some(dir) => crate::checkpoint::load_for_run(
            dir,
            n,
            &cfg.raw.algo.to_string(),
            &eval_model.layout(),
            steps_per_epoch,
            cfg.raw.epochs,
        )?,
        None => Vec::new(),
    };
    let start_epoch = resume.first().map_or(0, |ck| ck.epoch);
    let shared = Arc::new(shared(
        cfg,
        &data.train,
        parts,
        (classes, steps_per_epoch, lr),
        resume,
        devices,
    ));
    let (tx, rx) = mpsc::channel();
    let training_started = Instant::now();
    let handles: Vec<_> = build_nodes(cfg, &shared, &neighbours, dim, None)?
        .into_iter()
        .enumerate()
        .map(|(i, (model, algo))| {
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            std::thread::spawn(move || node_loop(i, &shared, &tx, model, algo))
        })
        .collect();
    drop(tx);

    let total_steps = (steps_per_epoch * cfg.raw.epochs * n) as u64;
    let bar = if cfg.raw.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut step_evals = Vec::new();
    let mut accounts = Vec::new();
    let mut eval_seconds = 0.0;
    let mut last = None;
    let mut failure = None;
    for epoch in start_epoch + 1..=cfg.raw.epochs {
        let mut snapshots: Vec<Option<(Vec<f32>, NodeStats)>> = vec![None; n];
        let mut busy = vec![(0.0, 0.0); n];
        let mut optimizer_states = vec![Vec::new(); n];
        let (mut loss_sum, mut steps) = (0.0, 0u64);
        let mut received = 0;
        while received < n {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(NodeMsg::Snapshot {
                    node,
                    params,
                    optimizer_state,
                    loss_sum: l,
                    steps: s,
                    stats,
                    busy: b,
                }) => {
                    busy[node] = b;
                    snapshots[node] = Some((params, *stats));
                    optimizer_states[node] = optimizer_state;
                    loss_sum += l;
                    steps += s;
                    received += 1;
                }
                Ok(NodeMsg::Failed { node, error }) => {
                    failure.get_or_insert(format!("node {node}: {error}"));
                    shared.abort.store(true, Ordering::Relaxed);
                    received += 1;
                }
                Ok(NodeMsg::Probe { step, params }) => {
                    let t = Instant::now();
                    if eval_model.load(&params).is_ok() {
                        let (test_loss, test_accuracy) = eval_model.evaluate(&data.test);
                        bar.suspend(|| {
                            eprintln!(
                                "step {step:>6}  node 0  test loss {test_loss:.4}  test acc {:.2}%",
                                100.0 * test_accuracy
                            )
                        });
                        step_evals.push((step, test_loss, test_accuracy));
                    }
                    eval_seconds += t.elapsed().as_secs_f64();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    failure.get_or_insert("a node thread exited unexpectedly".to_string());
                    break;
                }
            }
            bar.set_position(shared.steps_done.load(Ordering::Relaxed));
        }
        if failure.is_some() {
            shared.abort.store(true, Ordering::Relaxed);
            shared.resumed.wait();
            break;
        }
        let eval_start = Instant::now();
        let snapshots: Vec<(Vec<f32>, NodeStats)> = snapshots.into_iter().flatten().collect();
        let models: Vec<&[f32]> = snapshots.iter().map(|(p, _)| p.as_slice()).collect();
        let average: Vec<f32> = crate::report::average_model(models.iter().copied());
        eval_model.load(&average)?;
        let (test_loss, test_accuracy) = eval_model.evaluate(&data.test);
        let train_seconds = training_started.elapsed().as_secs_f64() - eval_seconds;
        let (bytes, interactions) = match cfg.raw.algo {
            Algo::Swarm => (
                snapshots.iter().map(|(_, s)| s.bytes_sent()).sum(),
                snapshots.iter().map(|(_, s)| s.interactions).sum(),
            ),
            Algo::Allreduce => {
                let rounds = (epoch * steps_per_epoch) as u64;
                (rounds * allreduce_bytes_per_round(n, dim), rounds)
            }
            _ => (
                snapshots.iter().map(|(_, s)| s.bytes_sent()).sum(),
                snapshots.iter().map(|(_, s)| s.interactions).sum::<u64>(),
            ),
        };
        accounts.push(
            snapshots
                .iter()
                .zip(&busy)
                .map(|((_, s), b)| crate::netmodel::account(cfg.raw.algo, n, dim, s, b.0, b.1))
                .collect::<Vec<_>>(),
        );
        let row = EvalRow {
            epoch,
            train_loss: loss_sum / steps.max(1) as f64,
            test_loss,
            test_accuracy,
            train_seconds,
            bytes_sent_total: bytes,
            interactions,
            model_spread: swarm_core::spread(models.iter().copied()),
        };
        let line = EpochLine {
            rank: None,
            row: &row,
            epochs: cfg.raw.epochs,
            epochs_trained: epoch - start_epoch,
            staleness: (cfg.raw.algo == Algo::Swarm)
                .then(|| crate::report::staleness(snapshots.iter().map(|(_, s)| s))),
            unreachable: None,
        };
        // Printed also when stderr is not a terminal (indicatif then draws nothing).
        bar.suspend(|| eprintln!("{line}"));
        if shared.checkpoint_due(epoch) {
            if let Err(e) = crate::checkpoint::write_run_epoch(
                &cfg.raw.out,
                &identity,
                (epoch, (epoch * steps_per_epoch) as u64),
                &models,
                optimizer_states,
                &eval_model.layout(),
            ) {
                failure.get_or_insert(e.to_string());
                shared.abort.store(true, Ordering::Relaxed);
                shared.resumed.wait();
                break;
            }
        }
        rows.push(row);
        eval_seconds += eval_start.elapsed().as_secs_f64();
        last = Some((snapshots, average));
        shared.resumed.wait();
    }
    bar.finish_and_clear();
    for h in handles {
        let _ = h.join();
    }
    let (mean_lead, max_lead) = shared.pacer.drift();
    eprintln!(
        "node threads ran {mean_lead:.1} local steps ahead of the slowest node on average, {max_lead} at most (--max-lead {})",
        cfg.max_lead.map_or("off".to_string(), |k| k.to_string())
    );
    if let Some(f) = failure {
        return Err(TrainError::Node(f));
    }
    let Some((snapshots, average)) = last else {
        return Err(TrainError::Node("no epoch completed".into()));
    };
    let node_accuracies = crate::report::each_accuracy(
        &mut eval_model,
        snapshots.iter().map(|(p, _)| p.as_slice()),
        &data.test,
    )?;
    eval_model.load(&average)?;
    let final_row = rows
        .last()
        .cloned()
        .ok_or_else(|| TrainError::Node("no evaluation".into()))?;
    let summary = Summary::new(
        cfg,
        n,
        RunTally {
            final_row: &final_row,
            node_accuracies: &node_accuracies,
            node_stats: snapshots.into_iter().map(|(_, s)| s).collect(),
            local_steps_total: (steps_per_epoch * cfg.raw.epochs * n) as u64,
            wall_seconds: started.elapsed().as_secs_f64(),
            epochs_trained: cfg.raw.epochs - start_epoch,
            parameters: dim,
        },
    );
    crate::report::write_outputs(&cfg.raw.out, &rows, &summary, &eval_model)?;
    if !step_evals.is_empty() {
        crate::report::write_step_evals(&cfg.raw.out, &step_evals)?;
    }
    crate::netmodel::write_accounting(&cfg.raw.out, cfg.raw.algo, &accounts)?;
    Ok((summary, accounts))
}

/// Bytes one ring all-reduce round sends, summed over nodes: each node sends 2 (n - 1) / n of the
/// model (reduce-scatter, then all-gather).
pub fn allreduce_bytes_per_round(n: usize, dim: usize) -> u64 {
    (2 * (n as u64 - 1) * 4 * dim as u64) / n as u64 * n as u64
}

/// The per-node loop of the in-process driver, around any [`NodeAlgo`]: local steps through the
/// node's [`Stepper`], barriers at each epoch's end, snapshots to the coordinator.
fn node_loop(
    node: usize,
    shared: &Shared,
    tx: &mpsc::Sender<NodeMsg>,
    mut model: FlatModel,
    mut algo: impl NodeAlgo,
) {
    let mut stepper = Stepper::new(
        &shared.train,
        &shared.parts[node],
        (shared.seed, node),
        shared.batch_size,
        shared.lr,
        shared.start_epoch * shared.steps_per_epoch,
    );
    // CPU and wall time inside training, barriers and evaluations excluded.
    let (mut cpu, mut wall) = (0.0, 0.0);
    for epoch in shared.start_epoch..shared.epochs {
        let (cpu0, wall0) = (crate::netmodel::thread_cpu_seconds(), Instant::now());
        let epoch_result = stepper.run_epoch(
            &mut model,
            &mut algo,
            shared.steps_per_epoch,
            |model, _, step| {
                shared.pacer.step_done(node, step as u64, &shared.abort);
                shared.steps_done.fetch_add(1, Ordering::Relaxed);
                if node == 0 && shared.eval_every.is_some_and(|k| step % k == 0) {
                    let _ = tx.send(NodeMsg::Probe {
                        step,
                        params: model.params(),
                    });
                }
                Ok(if shared.abort.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        );
        let (cpu1, wall1) = (crate::netmodel::thread_cpu_seconds(), wall0.elapsed());
        shared.stopped.wait();
        let failed = match epoch_result {
            Ok(tally) => algo
                .at_epoch_end(&mut model)
                .map(|()| tally)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        wall += wall1.as_secs_f64();
        cpu += cpu1.zip(cpu0).map_or(0.0, |(b, a)| b - a);
        let msg = match failed {
            Err(error) => NodeMsg::Failed { node, error },
            Ok(tally) => NodeMsg::Snapshot {
                node,
                params: model.params(),
                optimizer_state: if shared.checkpoint_due(epoch + 1) {
                    model.optimizer_state().to_vec()
                } else {
                    Vec::new()
                },
                loss_sum: tally.loss_sum,
                steps: tally.steps,
                stats: Box::new(algo.stats()),
                busy: (cpu, wall),
            },
        };
        let _ = tx.send(msg);
        shared.resumed.wait();
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
    }
    shared.pacer.stopped(node);
}

/// A node's model and its algorithm, chosen at run time.
type BuiltNode = (FlatModel, Box<dyn NodeAlgo + Send>);

/// Every node's model and algorithm for `cfg.raw.algo`. In an emulated cluster (`clock`),
/// SwarmSGD's nodes read and write through the virtual clock and the baselines' barriers are its
/// collectives. Built before any thread starts: a failure stops the run before a node waits.
fn build_nodes(
    cfg: &Resolved,
    shared: &Shared,
    neighbours: &[Vec<usize>],
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Result<Vec<BuiltNode>, TrainError> {
    if cfg.raw.algo != Algo::Swarm {
        let models = (0..neighbours.len())
            .map(|i| shared.new_model(i))
            .collect::<Result<Vec<_>, _>>()?;
        return match cfg.raw.algo {
            Algo::Allreduce => Ok(allreduce_nodes(models, dim, clock)),
            algo => baselines::build(algo, cfg, neighbours, models, dim, clock),
        };
    }
    let capacity = window_capacity(cfg, dim);
    check_fabric_memory(neighbours, capacity)?;
    let fabric = InProcessFabric::new(neighbours.to_vec(), capacity)
        .map_err(|e| TrainError::Node(e.to_string()))?;
    let mut nodes = Vec::new();
    for (i, list) in neighbours.iter().enumerate() {
        let endpoint = fabric
            .endpoint(i)
            .map_err(|e| TrainError::Node(e.to_string()))?;
        let mut model = shared.new_model(i)?;
        let algo: Box<dyn NodeAlgo + Send> = match clock {
            None => {
                let mut swarm = swarm_node(cfg, endpoint, list.clone(), dim)?;
                model.with_params_mut(|p| swarm.publish(p))?;
                Box::new(swarm)
            }
            Some(clock) => {
                let link = emulated::VirtualLink::new(endpoint, Arc::clone(clock));
                let mut swarm = swarm_node(cfg, link, list.clone(), dim)?;
                model.with_params_mut(|p| swarm.publish(p))?;
                Box::new(swarm)
            }
        };
        nodes.push((model, algo));
    }
    Ok(nodes)
}

/// Sums gradients of all nodes in shared memory; two buffers alternate between steps.
struct Reducer {
    sums: [Mutex<(Vec<f32>, usize)>; 2],
    added: Rendezvous,
    n: usize,
}

impl Reducer {
    /// Sums vectors of length `dim` over `n` nodes; in an emulated cluster each sum takes what
    /// `cost` says on the cluster's links (seconds).
    fn new(
        n: usize,
        dim: usize,
        clock: Option<&Arc<VirtualClock>>,
        cost: impl FnOnce(&LinkModel) -> f64,
    ) -> Self {
        Reducer {
            sums: [
                Mutex::new((vec![0.0; dim], 0)),
                Mutex::new((vec![0.0; dim], 0)),
            ],
            added: Rendezvous::new(n, clock, cost),
            n,
        }
    }

    /// [`Reducer::new`] costed as a ring all-reduce of f32 vectors.
    fn ring(n: usize, dim: usize, clock: Option<&Arc<VirtualClock>>) -> Self {
        Self::new(n, dim, clock, |link| {
            link.ring_allreduce_seconds(n, 4 * dim as u64)
        })
    }

    /// Replaces `grad` with the mean of all nodes' `grad` for this `round`.
    fn allreduce(&self, round: u64, grad: &mut [f32]) -> Result<(), Stopped> {
        let (this, other) = ((round % 2) as usize, ((round + 1) % 2) as usize);
        {
            let mut guard = self.sums[this].lock().unwrap_or_else(|p| p.into_inner());
            let (sum, count) = &mut *guard;
            for (s, g) in sum.iter_mut().zip(grad.iter()) {
                *s += *g;
            }
            *count += 1;
            if *count == self.n {
                // Everyone has read the previous round's buffer before adding to this one.
                let mut other = self.sums[other].lock().unwrap_or_else(|p| p.into_inner());
                other.0.fill(0.0);
                other.1 = 0;
            }
        }
        self.added.wait()?;
        let guard = self.sums[this].lock().unwrap_or_else(|p| p.into_inner());
        let scale = 1.0 / self.n as f32;
        for (g, s) in grad.iter_mut().zip(guard.0.iter()) {
            *g = *s * scale;
        }
        Ok(())
    }
}

/// A node of synchronous all-reduce SGD: every step averages the gradients of all nodes.
struct AllreduceNode {
    reducer: Arc<Reducer>,
    rounds: u64,
    grad: Vec<f32>,
}

impl NodeAlgo for AllreduceNode {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        let round = self.rounds;
        self.rounds += 1;
        let reducer = &self.reducer;
        model.with_grad_mut(&mut self.grad, |g| reducer.allreduce(round, g))??;
        model.sgd_step(lr);
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        NodeStats {
            local_steps: self.rounds,
            interactions: self.rounds,
            ..NodeStats::default()
        }
    }
}

fn allreduce_nodes(
    models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Vec<BuiltNode> {
    let reducer = Arc::new(Reducer::ring(models.len(), dim, clock));
    models
        .into_iter()
        .map(|model| {
            let algo: Box<dyn NodeAlgo + Send> = Box::new(AllreduceNode {
                reducer: Arc::clone(&reducer),
                rounds: 0,
                grad: Vec::new(),
            });
            (model, algo)
        })
        .collect()
}
