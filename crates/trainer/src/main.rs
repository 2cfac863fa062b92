//! `swarm`: train with SwarmSGD, inspect topologies.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trainer::config::TrainArgs;

#[derive(Parser)]
#[command(
    name = "swarm",
    version,
    about = "Asynchronous decentralized SGD with quantized and local updates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model with SwarmSGD (or all-reduce) on N nodes in this process.
    Train(Box<TrainArgs>),
    /// Communication graphs: generate, analyse, export; hardware locality.
    #[command(subcommand)]
    Topo(TopoCommand),
    /// Measure the network: `bench rdma` (READ/WRITE bandwidth, 8-byte READ latency on this
    /// host's RDMA device, loopback between two queue pairs).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Large-n study in the simulator: spread of the models by topology, H and codec (CSV + PNG).
    Sim(Box<trainer::simstudy::SimArgs>),
    /// Run a matrix of trainings from an experiment file: results.csv, a Markdown report, plots.
    Experiment(Box<trainer::experiment::ExperimentArgs>),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One-sided READ and WRITE bandwidth (64 KiB to 4 MiB) and 8-byte READ latency.
    Rdma(Box<rdma_transport::bench::BenchArgs>),
}

#[derive(Subcommand)]
enum TopoCommand {
    /// Generate a graph and print its statistics and/or an export.
    Gen {
        /// Kind: complete, ring, torus2d or torus2d:RxC, torus3d or torus3d:AxBxC, hypercube, regular:R, erdos-renyi:P,
        /// star, exponential, slimfly:Q, file:PATH.
        #[arg(long)]
        kind: String,
        /// Number of nodes (0 or absent where the kind fixes it).
        #[arg(long, default_value_t = 0)]
        n: usize,
        /// Degree for `regular`.
        #[arg(long)]
        degree: Option<usize>,
        /// Seed for random kinds.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print connectivity, degrees, diameter, spectral gap and mixing bound.
        #[arg(long)]
        stats: bool,
        /// Print the graph as edges, dot or json.
        #[arg(long)]
        format: Option<String>,
    },
    /// NUMA nodes and the CPUs nearest each RDMA device.
    Hw,
}

fn topo(cmd: TopoCommand) -> Result<(), String> {
    match cmd {
        TopoCommand::Gen {
            kind,
            n,
            degree,
            seed,
            stats,
            format,
        } => {
            let mut spec: topology::TopologySpec =
                kind.parse().map_err(|e| format!("--kind: {e}"))?;
            if let Some(r) = degree {
                spec = spec.with_degree(r).map_err(|e| format!("--degree: {e}"))?;
            }
            let graph = spec.build(n, seed).map_err(|e| e.to_string())?;
            if stats || format.is_none() {
                print!("{}", topology::Stats::compute(&graph));
            }
            if let Some(f) = format {
                let f: topology::export::Format =
                    f.parse().map_err(|e| format!("--format: {e}"))?;
                print!("{}", topology::export::render(&graph, f));
            }
            Ok(())
        }
        TopoCommand::Hw => {
            print!("{}", topology::hw::report().map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

/// One rank of a multi-process job; its last stdout line is `SWARM_SUMMARY {json}` for
/// tools/launcher to gather.
fn train_rank(cfg: &trainer::config::Resolved) -> Result<(), String> {
    let s = match trainer::multiproc::train_rank(cfg) {
        Ok(s) => s,
        Err(e) => {
            // Still one summary line, so the launcher's summary says what happened to this rank.
            let message = e.to_string();
            if let Ok(job) = rendezvous::JobEnv::detect() {
                let status = if trainer::multiproc::interrupted() {
                    "interrupted"
                } else {
                    "failed"
                };
                let line = serde_json::json!({
                    "rank": job.rank,
                    "world_size": job.world_size,
                    "status": status,
                    "error": message,
                });
                println!("SWARM_SUMMARY {line}");
            }
            return Err(message);
        }
    };
    if let (Some(acc), Some(lost)) = (s.final_test_accuracy, &s.lost_ranks) {
        println!(
            "swarm over {} on {} ranks: final test accuracy {:.2}% (averaged model of {} ranks), lost ranks {:?}; outputs in {}",
            cfg.raw.transport,
            s.world_size,
            100.0 * acc,
            s.world_size - lost.len(),
            lost,
            cfg.raw.out.display()
        );
    }
    let json = serde_json::to_string(&s).map_err(|e| e.to_string())?;
    println!("SWARM_SUMMARY {json}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => match args.resolve() {
            Ok(cfg) if cfg.transport.is_multi_process() => train_rank(&cfg),
            resolved => resolved.and_then(|cfg| trainer::train::train(&cfg)).map(|s| {
            println!(
                "{} on {} nodes: final test accuracy {:.2}% (averaged model), mean node {:.2}%, {:.2} s/epoch, {} bytes sent, {} interactions; outputs in {}",
                s.algo,
                s.nodes,
                100.0 * s.final_test_accuracy,
                100.0 * s.mean_node_test_accuracy,
                s.seconds_per_epoch,
                s.bytes_sent_total,
                s.interactions,
                s.config.out.display()
            );
        }).map_err(|e| e.to_string()),
        },
        Command::Topo(cmd) => topo(cmd),
        Command::Bench(BenchCommand::Rdma(args)) => rdma_transport::bench::run(&args)
            .map(|report| print!("{report}"))
            .map_err(|e| format!("bench rdma: {e}")),
        Command::Experiment(args) => trainer::experiment::run(&args)
            .map(|r| println!("experiment: {} runs; results in {}", r.len(), args.file.display()))
            .map_err(|e| e.to_string()),
        Command::Sim(args) => trainer::simstudy::run(&args)
            .map(|_| println!("sim: wrote sim.csv and plots to {}", args.out.display()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarm: {e}");
            ExitCode::FAILURE
        }
    }
}
