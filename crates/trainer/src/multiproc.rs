//! One SwarmSGD node per process: the ranks of a job find each other through the rendezvous
//! store, read and write each other's windows over the network, survive the loss of a rank and
//! take a restarted one back.
//!
//! Per rank: detect the job ([`rendezvous::JobEnv`]), rank 0 serves the store, every rank
//! publishes its endpoint address under `endpoint/RANK` and waits for its neighbours'. Training is
//! the same loop as the in-process run (same data shard, same minibatches, same schedule), without
//! barriers between ranks. Every few seconds a rank looks up the neighbours it lost: a restarted
//! rank publishes a new address, and is readmitted. At the end each rank sets `final/RANK` (its
//! model and counters); rank 0 waits for every rank that is still alive (or came back), averages
//! the models, evaluates and writes the run's outputs, then sets `done`. While they wait, finished
//! ranks keep folding the corrections late neighbours deposit, so stragglers still average with
//! them instead of finding their inbox slots busy. Every rank prints one
//! `SWARM_SUMMARY {json}` line on stdout for `tools/launcher`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_transport::{RdmaConfig, RdmaEndpoint};
use rendezvous::{Client, JobEnv, StoreConfig, StoreServer};
use serde::Serialize;
use swarm_core::{NodeId, NodeStats, SwarmNode, Transport};
use tcp_transport::{TcpConfig, TcpEndpoint};

use crate::config::{Algo, Resolved, TransportKind};
use crate::model::FlatModel;
use crate::report::{EpochLine, EvalRow, RunTally, Summary};
use crate::setup::{swarm_node, window_capacity, RunSetup};
use crate::worker::{checkpoint_due, NodeAlgo, Stepper};

pub use crate::checkpoint::{any_rank_checkpoint, rank_checkpoint};
use crate::TrainError;

/// What one rank reports at its end (the `SWARM_SUMMARY` line).
#[derive(Debug, Clone, Serialize)]
pub struct RankSummary {
    /// This process's rank.
    pub rank: usize,
    /// Ranks in the job.
    pub world_size: usize,
    /// `ok`.
    pub status: String,
    /// Epochs this rank trained (all of them, from a checkpoint when resumed).
    pub epochs: usize,
    /// The epoch this rank resumed from (0 for a fresh start).
    pub resumed_from_epoch: usize,
    /// Mean training loss of this rank's last epoch.
    pub final_train_loss: f64,
    /// Test accuracy of this rank's own model at the end.
    pub node_test_accuracy: f64,
    /// This node's counters.
    pub stats: NodeStats,
    /// Neighbours this rank could not reach at the end.
    pub unreachable_peers: Vec<usize>,
    /// Times a lost neighbour came back (restarted) and was readmitted.
    pub readmitted: u64,
    /// Seconds of training (evaluations excluded).
    pub train_seconds: f64,
    /// Rank 0 only: test accuracy of the average of the gathered models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_test_accuracy: Option<f64>,
    /// Rank 0 only: mean of the gathered ranks' own test accuracies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_node_test_accuracy: Option<f64>,
    /// Rank 0 only: ranks whose final model never arrived (dead and not restarted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_ranks: Option<Vec<usize>>,
}

/// Set by Ctrl-C (SIGINT) or SIGTERM: every rank stops at its next step, checkpoints and exits.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = Arc::clone(&flag);
        if let Err(e) = ctrlc::set_handler(move || setter.store(true, Ordering::Relaxed)) {
            eprintln!("swarm: cannot install the Ctrl-C handler ({e}); Ctrl-C kills the rank");
        }
        flag
    })
    .clone()
}

/// Whether this process was asked to stop (SIGINT or SIGTERM).
pub fn interrupted() -> bool {
    stop_flag().load(Ordering::Relaxed)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The address peers reach this rank at: `SWARM_BIND_ADDR` if set; loopback when the store is on
/// loopback; else the local address of the route to the store's host.
fn local_ip(job: &JobEnv) -> Result<IpAddr, TrainError> {
    if let Ok(v) = std::env::var("SWARM_BIND_ADDR") {
        return v.trim().parse().map_err(|_| {
            TrainError::Config(format!("SWARM_BIND_ADDR={v:?} is not an IP address"))
        });
    }
    if is_loopback(&job.master_addr) {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let route = || -> std::io::Result<IpAddr> {
        let probe = UdpSocket::bind("0.0.0.0:0")?;
        probe.connect((job.master_addr.as_str(), job.master_port))?;
        Ok(probe.local_addr()?.ip())
    };
    route().map_err(|e| {
        TrainError::Config(format!(
            "cannot tell which local address reaches the store at {}:{} ({e}); set SWARM_BIND_ADDR",
            job.master_addr, job.master_port
        ))
    })
}

fn store_error(e: rendezvous::RendezvousError) -> TrainError {
    TrainError::Node(format!("rendezvous: {e}"))
}

/// Runs this process's rank of a multi-process job over TCP; rank 0 also writes the run's outputs.
pub fn train_rank(cfg: &Resolved) -> Result<RankSummary, TrainError> {
    let stop = stop_flag();
    let job = JobEnv::detect().map_err(|e| TrainError::Config(e.to_string()))?;
    if cfg.raw.algo != Algo::Swarm {
        return Err(TrainError::Config(format!(
            "--transport {} runs SwarmSGD (algo swarm); {} runs in one process (--transport inproc)",
            cfg.raw.transport, cfg.raw.algo
        )));
    }
    let (rank, n) = (job.rank, job.world_size);
    let peer_timeout = Duration::from_secs_f64(cfg.raw.peer_timeout);
    let started = Instant::now();
    tch::set_num_threads(1);

    let store_config = StoreConfig {
        io_timeout: peer_timeout,
        connect_timeout: peer_timeout.max(Duration::from_secs(60)),
        ..StoreConfig::default()
    };
    let _server = if rank == 0 {
        let ip = if is_loopback(&job.master_addr) {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Some(
            StoreServer::bind(
                SocketAddr::new(ip, job.master_port),
                job.auth.clone(),
                n,
                store_config.clone(),
            )
            .map_err(store_error)?,
        )
    } else {
        None
    };
    let store_addr = format!("{}:{}", job.master_addr, job.master_port);
    let mut store =
        Client::connect(&store_addr, &job.auth, rank as u32, store_config).map_err(store_error)?;

    let setup = RunSetup::new(cfg, n)?;
    let (data, steps_per_epoch) = (&setup.data, setup.steps_per_epoch);
    let neighbours = setup.neighbours[rank].clone();
    let device = crate::device::this_rank_device(&cfg.raw.device, job.local_rank)?;
    let mut model = setup.initial_model(cfg, device)?;
    let dim = model.dim();
    let rank_dir = cfg.raw.out.join(format!("rank-{rank}"));
    std::fs::create_dir_all(&rank_dir)
        .map_err(|e| TrainError::Output(format!("cannot create {}: {e}", rank_dir.display())))?;

    let mut start_epoch = 0;
    if let Some(dir) = &cfg.raw.resume {
        let path = rank_checkpoint(dir, rank);
        if path.is_file() {
            let ck = crate::checkpoint::load(&path)?;
            ck.ensure_fits(&path, rank, n, "swarm", &model.layout())?;
            model.load(&ck.params)?;
            model.load_optimizer_state(&ck.optimizer_state)?;
            start_epoch = ck.epoch;
            eprintln!(
                "rank {rank}: resumed from {} (epoch {}, step {})",
                path.display(),
                ck.epoch,
                ck.step
            );
        } else {
            eprintln!(
                "rank {rank}: no checkpoint at {}: starting this rank from the beginning",
                path.display()
            );
        }
    }

    // The endpoint, published under endpoint/RANK (a restarted rank overwrites its old address).
    let capacity = window_capacity(cfg, dim);
    let mut known: Vec<(usize, String)> = Vec::with_capacity(neighbours.len());
    let endpoint: NodeEndpoint = if cfg.transport == TransportKind::Rdma {
        Box::new(connect_rdma(
            rank,
            &neighbours,
            capacity,
            &mut store,
            peer_timeout,
        )?)
    } else {
        Box::new(connect_tcp(
            &job,
            &neighbours,
            capacity,
            &mut store,
            peer_timeout,
            &mut known,
        )?)
    };
    let my_addr = endpoint.describe();
    let mut swarm = swarm_node(cfg, endpoint, neighbours.clone(), dim)?;
    model.with_params_mut(|p| swarm.publish(p))?;
    eprintln!(
        "rank {rank}/{n}: {} on {my_addr}, neighbours {neighbours:?}, {} ({dim} parameters) on {}, {steps_per_epoch} steps per epoch",
        job.source, cfg.raw.model, crate::device::name(model.device())
    );

    let mut stepper = Stepper::new(
        &data.train,
        &setup.parts[rank],
        (cfg.raw.seed, rank),
        cfg.raw.batch_size,
        setup.lr,
        start_epoch * steps_per_epoch,
    );
    let mut readmitted = 0u64;
    let mut last_lookup = Instant::now();
    let mut rows: Vec<EvalRow> = Vec::new();
    let mut final_train_loss = f64::NAN;
    let training_started = Instant::now();
    let mut eval_seconds = 0.0;
    for epoch in start_epoch..cfg.raw.epochs {
        let tally = stepper
            .run_epoch(&mut model, &mut swarm, steps_per_epoch, |_, swarm, step| {
                if stop.load(Ordering::Relaxed) {
                    return Err(interrupted_error(cfg, rank, epoch, step));
                }
                if last_lookup.elapsed() > Duration::from_secs(2) && !swarm.unreachable().is_empty()
                {
                    last_lookup = Instant::now();
                    readmitted += readmit_restarted(rank, swarm, &mut store, &mut known);
                }
                Ok(ControlFlow::Continue(()))
            })
            .map_err(|e| match e {
                TrainError::Node(why) => TrainError::Node(format!("rank {rank}: {why}")),
                other => other,
            })?;
        swarm.at_epoch_end(&mut model)?;
        final_train_loss = tally.mean_loss();
        let eval_start = Instant::now();
        // Rank 0 shows its own model's accuracy each epoch; the average is evaluated at the end.
        let (test_loss, test_accuracy) = if rank == 0 {
            model.evaluate(&data.test)
        } else {
            (f64::NAN, f64::NAN)
        };
        eval_seconds += eval_start.elapsed().as_secs_f64();
        let stats = swarm.stats();
        let row = EvalRow {
            epoch: epoch + 1,
            train_loss: final_train_loss,
            test_loss,
            test_accuracy,
            train_seconds: training_started.elapsed().as_secs_f64() - eval_seconds,
            bytes_sent_total: stats.bytes_sent(),
            interactions: stats.interactions,
            model_spread: f64::NAN,
        };
        let line = EpochLine {
            rank: Some(rank),
            row: &row,
            epochs: cfg.raw.epochs,
            epochs_trained: epoch + 1 - start_epoch,
            staleness: Some((stats.mean_staleness(), stats.staleness_steps_max)),
            unreachable: Some(swarm.unreachable()),
        };
        eprintln!("{line}");
        rows.push(row);
        if checkpoint_due(cfg.raw.checkpoint_every, epoch + 1, cfg.raw.epochs) {
            let path = rank_checkpoint(&cfg.raw.out, rank);
            let step = stepper.steps();
            let ck = setup.identity.checkpoint(
                rank,
                (epoch + 1, step as u64),
                model.params(),
                model.optimizer_state().to_vec(),
                model.layout(),
            );
            crate::checkpoint::save(&path, &ck)?;
        }
    }
    let train_seconds = training_started.elapsed().as_secs_f64() - eval_seconds;

    // Hand the final model to rank 0 and keep serving the window until it is done.
    let params = model.params();
    let own_accuracy = model.evaluate(&data.test).1;
    let stats = swarm.stats().clone();
    let record = FinalRecord {
        accuracy: own_accuracy,
        stats: stats.clone(),
    };
    let mut value = swarm_core::le_bytes(&params).into_owned();
    value.extend_from_slice(
        serde_json::to_string(&record)
            .map_err(|e| TrainError::Output(e.to_string()))?
            .as_bytes(),
    );
    let mut summary = RankSummary {
        rank,
        world_size: n,
        status: "ok".into(),
        epochs: cfg.raw.epochs,
        resumed_from_epoch: start_epoch,
        final_train_loss,
        node_test_accuracy: own_accuracy,
        stats,
        unreachable_peers: swarm.unreachable().iter().copied().collect(),
        readmitted,
        train_seconds,
        final_test_accuracy: None,
        mean_node_test_accuracy: None,
        lost_ranks: None,
    };
    let published = store.set(&format!("final/{rank}"), &value);
    // How long to wait for the other ranks at the end: stragglers may take twice our training time.
    let patience = peer_timeout + Duration::from_secs_f64(2.0 * train_seconds + 10.0);
    if rank == 0 {
        published.map_err(store_error)?;
        let mut serve = inbox_server(rank);
        let gathered = gather_finals(
            &mut store,
            n,
            dim,
            peer_timeout,
            patience,
            &stop,
            &mut || serve(&mut model, &mut swarm),
        )?;
        let lost: Vec<usize> = (0..n).filter(|r| gathered[*r].is_none()).collect();
        if !lost.is_empty() {
            eprintln!("rank 0: lost rank(s) {lost:?}: their final models never arrived");
        }
        let models: Vec<&[f32]> = gathered
            .iter()
            .flatten()
            .map(|(p, _)| p.as_slice())
            .collect();
        let average: Vec<f32> = crate::report::average_model(models.iter().copied());
        let spread = swarm_core::spread(models.iter().copied());
        model.load(&average)?;
        let (test_loss, test_accuracy) = model.evaluate(&data.test);
        let accuracies: Vec<f64> = gathered.iter().flatten().map(|(_, r)| r.accuracy).collect();
        let node_stats: Vec<NodeStats> = gathered
            .iter()
            .flatten()
            .map(|(_, r)| r.stats.clone())
            .collect();
        let bytes: u64 = node_stats.iter().map(NodeStats::bytes_sent).sum();
        let interactions: u64 = node_stats.iter().map(|s| s.interactions).sum();
        let local_steps_total = node_stats.iter().map(|s| s.local_steps).sum();
        // The run's last row: the averaged model, and every gathered rank's traffic.
        let final_row = rows
            .last_mut()
            .ok_or_else(|| TrainError::Node("no epoch ran".into()))?;
        final_row.test_loss = test_loss;
        final_row.test_accuracy = test_accuracy;
        final_row.bytes_sent_total = bytes;
        final_row.interactions = interactions;
        final_row.model_spread = spread;
        let run = Summary::new(
            cfg,
            n,
            RunTally {
                final_row,
                node_accuracies: &accuracies,
                node_stats,
                local_steps_total,
                wall_seconds: started.elapsed().as_secs_f64(),
                epochs_trained: cfg.raw.epochs - start_epoch,
                parameters: dim,
            },
        );
        crate::report::write_outputs(&cfg.raw.out, &rows, &run, &model)?;
        summary.final_test_accuracy = Some(test_accuracy);
        summary.mean_node_test_accuracy = Some(run.mean_node_test_accuracy);
        summary.lost_ranks = Some(lost);
        let _ = store.set("done", b"1");
    } else {
        match published {
            Ok(()) => {
                // Serve stragglers' reads and fold their corrections until rank 0 has every
                // model; then leave.
                let mut serve = inbox_server(rank);
                let deadline = Instant::now() + patience;
                loop {
                    match store.try_get("done") {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() > deadline => {
                            eprintln!("rank {rank}: rank 0 did not finish in {patience:?}; leaving");
                            break;
                        }
                        Ok(None) if stop.load(Ordering::Relaxed) => break,
                        Ok(None) => {}
                        Err(e) => {
                            eprintln!("rank {rank}: rank 0 did not finish ({e}); leaving");
                            break;
                        }
                    }
                    serve_for_a_while(&mut || serve(&mut model, &mut swarm));
                }
            }
            Err(e) => eprintln!(
                "rank {rank}: cannot hand the final model to rank 0 ({e}); its own outputs are in {}",
                rank_dir.display()
            ),
        }
    }
    let json = serde_json::to_string(&summary).map_err(|e| TrainError::Output(e.to_string()))?;
    std::fs::write(rank_dir.join("summary.json"), format!("{json}\n"))
        .map_err(|e| TrainError::Output(format!("cannot write {}: {e}", rank_dir.display())))?;
    Ok(summary)
}

/// The error of rank `rank` stopped by SIGINT/SIGTERM in epoch `epoch` (from 0) after `step` local
/// steps, saying where its last checkpoint is.
fn interrupted_error(cfg: &Resolved, rank: usize, epoch: usize, step: usize) -> TrainError {
    let path = rank_checkpoint(&cfg.raw.out, rank);
    let saved = if path.is_file() {
        format!(
            "its last checkpoint is {} (continue with --resume {})",
            path.display(),
            cfg.raw.out.display()
        )
    } else {
        "no checkpoint was written (use --checkpoint-every)".to_string()
    };
    TrainError::Node(format!(
        "interrupted in epoch {}, after step {step}; {saved}",
        epoch + 1
    ))
}

/// How long to wait for a neighbour's first endpoint record: ranks start at different times.
fn store_wait(peer_timeout: Duration) -> Duration {
    peer_timeout.max(Duration::from_secs(120))
}

#[derive(Serialize, serde::Deserialize)]
struct FinalRecord {
    accuracy: f64,
    stats: NodeStats,
}

/// Looks up the lost neighbours' endpoint records; one that changed belongs to a restarted rank:
/// connect to the new address and contact it again. Returns how many came back.
fn readmit_restarted(
    rank: usize,
    swarm: &mut SwarmNode<NodeEndpoint>,
    store: &mut Client,
    known: &mut [(usize, String)],
) -> u64 {
    // A transport that cannot reconnect (RDMA): nothing to look up.
    if !swarm.transport().can_reconnect() {
        return 0;
    }
    let mut back = 0;
    let lost: Vec<usize> = swarm.unreachable().iter().copied().collect();
    for peer in lost {
        let Ok(Some(record)) = store.try_get(&format!("endpoint/{peer}")) else {
            continue;
        };
        let addr = String::from_utf8_lossy(&record).into_owned();
        let Some(entry) = known.iter_mut().find(|(p, _)| *p == peer) else {
            continue;
        };
        if entry.1 == addr {
            continue;
        }
        let Ok(sock) = addr.parse::<SocketAddr>() else {
            continue;
        };
        if swarm.transport_mut().reconnect(peer, sock) {
            swarm.readmit(peer);
            eprintln!("rank {rank}: rank {peer} is back at {addr}; averaging with it again");
            entry.1 = addr;
            back += 1;
        }
    }
    back
}

type Gathered = Vec<Option<(Vec<f32>, FinalRecord)>>;

/// Rank 0 collects every rank's final model. A rank counts as lost once it has had no connection
/// to the store for `peer_timeout` (a restarted rank reconnects and is waited for), or when
/// `patience` runs out.
fn gather_finals(
    store: &mut Client,
    n: usize,
    dim: usize,
    peer_timeout: Duration,
    patience: Duration,
    stop: &AtomicBool,
    idle: &mut dyn FnMut(),
) -> Result<Gathered, TrainError> {
    let mut out: Gathered = (0..n).map(|_| None).collect();
    let mut absent_since: Vec<Option<Instant>> = vec![None; n];
    let mut given_up = vec![false; n];
    let deadline = Instant::now() + patience;
    loop {
        for r in 0..n {
            if out[r].is_some() || given_up[r] {
                continue;
            }
            if let Some(value) = store.try_get(&format!("final/{r}")).map_err(store_error)? {
                match parse_final(&value, dim) {
                    Some(v) => out[r] = Some(v),
                    None => {
                        eprintln!("rank 0: rank {r}'s final record is malformed; ignoring it");
                        given_up[r] = true;
                    }
                }
            }
        }
        let live = store.liveness().map_err(store_error)?;
        let now = Instant::now();
        for r in 0..n {
            if out[r].is_some() || given_up[r] {
                continue;
            }
            if live[r].connected {
                absent_since[r] = None;
            } else {
                let since = *absent_since[r].get_or_insert(now);
                if now - since > peer_timeout {
                    given_up[r] = true;
                }
            }
        }
        if (0..n).all(|r| out[r].is_some() || given_up[r])
            || now > deadline
            || stop.load(Ordering::Relaxed)
        {
            return Ok(out);
        }
        serve_for_a_while(idle);
    }
}

/// Between two looks at the store (every 100 ms), a waiting rank serves its inbox every 20 ms.
fn serve_for_a_while(serve: &mut dyn FnMut()) {
    for _ in 0..5 {
        serve();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a rank that finished training does while it waits for the others: fold the corrections
/// late neighbours deposit (and republish), so that their pairwise averages with it still
/// complete instead of finding its inbox slots busy. Its final model was already handed to
/// rank 0; corrections folded afterwards only reach the late neighbours, through its window.
/// A transport error ends the serving (logged once).
fn inbox_server(rank: usize) -> impl FnMut(&mut FlatModel, &mut SwarmNode<NodeEndpoint>) {
    let mut failed = false;
    move |model, swarm| {
        if failed {
            return;
        }
        if let Err(e) = model.with_params_mut(|p| swarm.step_boundary(p)) {
            eprintln!("rank {rank}: stopped folding late corrections: {e}");
            failed = true;
        }
    }
}

fn parse_final(value: &[u8], dim: usize) -> Option<(Vec<f32>, FinalRecord)> {
    let (params, json) = value.split_at_checked(4 * dim)?;
    let record: FinalRecord = serde_json::from_slice(json).ok()?;
    let params: Vec<f32> = swarm_core::le_values(params).collect();
    params
        .iter()
        .all(|v| v.is_finite())
        .then_some((params, record))
}

/// Binds this rank's TCP endpoint, publishes its address under `endpoint/RANK` (a restarted rank
/// overwrites its old one) and connects to the neighbours' addresses, remembered in `known`.
fn connect_tcp(
    job: &JobEnv,
    neighbours: &[usize],
    capacity: usize,
    store: &mut Client,
    peer_timeout: Duration,
    known: &mut Vec<(usize, String)>,
) -> Result<TcpEndpoint, TrainError> {
    let rank = job.rank;
    let tcp_config = TcpConfig {
        connect_timeout: Duration::from_secs(3).min(peer_timeout),
        io_timeout: peer_timeout,
        ..TcpConfig::default()
    };
    let bind = SocketAddr::new(local_ip(job)?, 0);
    let mut endpoint = TcpEndpoint::bind_with(rank, bind, capacity, job.auth.clone(), tcp_config)
        .map_err(|e| TrainError::Node(e.to_string()))?;
    let my_addr = endpoint.local_addr().to_string();
    let addrs = exchange(
        store,
        "endpoint",
        rank,
        my_addr.as_bytes(),
        neighbours,
        peer_timeout,
    )?;
    known.extend(
        neighbours
            .iter()
            .zip(addrs)
            .map(|(&peer, addr)| (peer, String::from_utf8_lossy(&addr).into_owned())),
    );
    let peers: Vec<(usize, SocketAddr)> = known
        .iter()
        .map(|(p, a)| {
            a.parse()
                .map(|addr| (*p, addr))
                .map_err(|_| TrainError::Node(format!("rank {p} published a bad address {a:?}")))
        })
        .collect::<Result<_, _>>()?;
    endpoint
        .connect_peers(&peers)
        .map_err(|e| TrainError::Node(e.to_string()))?;
    Ok(endpoint)
}

/// Opens the RDMA device (`SWARM_RDMA_DEVICE`, `SWARM_RDMA_IP`, `SWARM_RDMA_GID_INDEX`), registers
/// the window, exchanges endpoint records through the store under `rdma/RANK`, connects the queue
/// pairs, and waits until every neighbour has connected too (`rdma-connected/RANK`).
fn connect_rdma(
    rank: usize,
    neighbours: &[usize],
    capacity: usize,
    store: &mut Client,
    peer_timeout: Duration,
) -> Result<RdmaEndpoint, TrainError> {
    let rdma_error = |e: rdma_transport::RdmaError| TrainError::Node(format!("rdma: {e}"));
    let mut config = RdmaConfig::from_env().map_err(rdma_error)?;
    config.op_timeout = peer_timeout;
    let mut endpoint =
        RdmaEndpoint::new(rank, neighbours, capacity, &config).map_err(rdma_error)?;
    let records = exchange(
        store,
        "rdma",
        rank,
        &endpoint.record(),
        neighbours,
        peer_timeout,
    )?;
    endpoint.connect(&records).map_err(rdma_error)?;
    exchange(
        store,
        "rdma-connected",
        rank,
        b"1",
        neighbours,
        peer_timeout,
    )?;
    Ok(endpoint)
}

/// Sets `PREFIX/RANK` to `value` in the store and returns every neighbour's `PREFIX/PEER`, in
/// the order of `neighbours`, waiting for ranks that have not set theirs yet.
fn exchange(
    store: &mut Client,
    prefix: &str,
    rank: usize,
    value: &[u8],
    neighbours: &[usize],
    peer_timeout: Duration,
) -> Result<Vec<Vec<u8>>, TrainError> {
    store
        .set(&format!("{prefix}/{rank}"), value)
        .map_err(store_error)?;
    neighbours
        .iter()
        .map(|peer| {
            store
                .get(&format!("{prefix}/{peer}"), store_wait(peer_timeout))
                .map_err(store_error)
        })
        .collect()
}

/// A rank's network endpoint: a [`Transport`], plus what the rank needs to log it and to take a
/// restarted neighbour back.
pub trait RankEndpoint: Transport {
    /// Where this endpoint listens, for the log.
    fn describe(&self) -> String;

    /// Whether a restarted neighbour can be reconnected (else lost neighbours stay lost).
    fn can_reconnect(&self) -> bool;

    /// Connects to `peer`'s new address after it restarted; returns whether that worked.
    fn reconnect(&mut self, peer: NodeId, addr: SocketAddr) -> bool;
}

impl RankEndpoint for TcpEndpoint {
    fn describe(&self) -> String {
        self.local_addr().to_string()
    }

    fn can_reconnect(&self) -> bool {
        true
    }

    fn reconnect(&mut self, peer: NodeId, addr: SocketAddr) -> bool {
        self.connect_peers(&[(peer, addr)]).is_ok()
    }
}

impl RankEndpoint for RdmaEndpoint {
    fn describe(&self) -> String {
        format!("rdma device {:?}", self.device().name())
    }

    /// Queue pairs are not re-created for a restarted rank.
    fn can_reconnect(&self) -> bool {
        false
    }

    fn reconnect(&mut self, _peer: NodeId, _addr: SocketAddr) -> bool {
        false
    }
}

/// The network a rank's node uses, chosen at run time.
pub type NodeEndpoint = Box<dyn RankEndpoint>;
