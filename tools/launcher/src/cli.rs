//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Starts one trainer process per rank (on this host, through Slurm's `srun`, Open MPI's
/// `mpirun`, or over ssh), streams every rank's output prefixed by its rank, propagates
/// failures and gathers the ranks' `SWARM_SUMMARY` lines into one `summary.json`.
///
/// Every rank gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
/// `MASTER_PORT`, `SWARM_JOB_ID` and `SWARM_JOB_SECRET` (fresh random values per job).
#[derive(Parser, Debug)]
#[command(name = "launcher", version)]
pub struct Cli {
    /// How to start the ranks.
    #[command(subcommand)]
    pub mode: Mode,
}

/// The launch modes.
#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Spawn N processes on this host.
    Local(LocalArgs),
    /// Start the ranks as one Slurm job step with `srun` (inside or outside an allocation).
    Slurm(SlurmArgs),
    /// Start the ranks with Open MPI's `mpirun`.
    Mpirun(MpirunArgs),
    /// Start each rank over ssh on the hosts of a hostfile (`host [slots=K]` lines).
    Ssh(SshArgs),
}

/// Options every mode has.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Port rank 0 serves the rendezvous store on. Default: a free port (local), otherwise a
    /// port in 20000-39999 derived from the job id.
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Address of rank 0's host as the other ranks reach it. Default: 127.0.0.1 (local), the
    /// first hostfile host (ssh, mpirun with --hostfile), rank 0's Slurm node (slurm).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Where to write the gathered summary.
    #[arg(long, default_value = "summary.json")]
    pub summary: PathBuf,
    /// Stop the whole job after this many seconds (SIGTERM, grace period, SIGKILL).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL when stopping ranks.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub grace: f64,
    /// Stop every other rank as soon as one rank fails (default: keep going, SwarmSGD
    /// tolerates a lost rank).
    #[arg(long)]
    pub kill_on_failure: bool,
    /// The command each rank runs, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `launcher local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "ntasks", value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Bind each rank to the CPUs nearest the RDMA NIC (round-robin over NICs), or round-robin
    /// over NUMA nodes when there is no NIC; prints each binding.
    #[arg(long)]
    pub pin: bool,
    /// Options every mode has.
    #[command(flatten)]
    pub common: Common,
}

/// `launcher slurm`.
#[derive(Args, Debug)]
pub struct SlurmArgs {
    /// Number of ranks (`srun --ntasks`).
    #[arg(short = 'n', long = "ntasks", value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Number of nodes (`srun --nodes`).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Slurm partition (`srun --partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// One more argument for srun, e.g. `--srun-arg=--time=10`; repeatable.
    #[arg(long = "srun-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub srun_args: Vec<String>,
    /// The srun program.
    #[arg(long, default_value = "srun")]
    pub srun: String,
    /// Options every mode has.
    #[command(flatten)]
    pub common: Common,
}

/// `launcher mpirun`.
#[derive(Args, Debug)]
pub struct MpirunArgs {
    /// Number of ranks (`mpirun -n`).
    #[arg(short = 'n', long = "ntasks", value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Open MPI hostfile (`host slots=K` lines), passed to mpirun.
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// One more argument for mpirun, e.g. `--mpirun-arg=--oversubscribe`; repeatable.
    #[arg(long = "mpirun-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub mpirun_args: Vec<String>,
    /// The mpirun program.
    #[arg(long, default_value = "mpirun")]
    pub mpirun: String,
    /// Options every mode has.
    #[command(flatten)]
    pub common: Common,
}

/// `launcher ssh`.
#[derive(Args, Debug)]
pub struct SshArgs {
    /// Hostfile: one `host [slots=K]` per line (`#` comments); ranks fill each host's slots
    /// in order.
    #[arg(long)]
    pub hostfile: PathBuf,
    /// Number of ranks (at most the hostfile's total slots).
    #[arg(short = 'n', long = "ntasks", value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// Directory the ranks start in on every host (default: the current directory).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// One more argument for ssh, e.g. `--ssh-arg=-p2222`; repeatable.
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub ssh_args: Vec<String>,
    /// The ssh program.
    #[arg(long, default_value = "ssh")]
    pub ssh: String,
    /// Options every mode has.
    #[command(flatten)]
    pub common: Common,
}
