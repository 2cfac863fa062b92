//! Training configuration: defaults, a TOML file, and command-line flags, in that order of precedence.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use swarm_core::{Interaction, LocalSteps, Overlap};

use crate::data::Partition;
use crate::model::ModelKind;
use crate::TrainError;

/// The training algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// SwarmSGD: local steps, then averaging with one random neighbour.
    Swarm,
    /// Synchronous data-parallel SGD: gradients averaged over all nodes at every step.
    Allreduce,
    /// Local SGD: H local steps, then every model replaced by the average (all-reduce).
    #[serde(rename = "localsgd")]
    #[value(name = "localsgd")]
    LocalSgd,
    /// D-PSGD: every step, synchronous averaging with all graph neighbours (Metropolis weights).
    Dpsgd,
    /// AD-PSGD: asynchronous; active nodes average atomically with a random passive neighbour
    /// (bipartite topology).
    Adpsgd,
    /// Stochastic gradient push: push-sum over the directed exponential graph, one peer a step.
    Sgp,
    /// Qsparse-local-SGD: H local steps, then the compressed (`quant`) progress with error
    /// feedback, all nodes at once.
    Qsparse,
    /// Qsparse-local-SGD with asynchronous triggers: each node pushes its compressed progress to
    /// a shared model after its own geometric(H) local steps.
    #[serde(rename = "qsparse-async")]
    #[value(name = "qsparse-async")]
    QsparseAsync,
    /// LASGD: local steps, with the all-reduce of the models running in the background.
    Lasgd,
    /// Elastic-consistency asynchronous SGD: sparsified (`quant`) gradients applied to a shared
    /// model, without error feedback.
    Elastic,
    /// The same with error feedback.
    #[serde(rename = "elastic-ef")]
    #[value(name = "elastic-ef")]
    ElasticEf,
}

impl Algo {
    /// Every algorithm, in the order reports list them.
    pub const ALL: [Algo; 11] = [
        Algo::Swarm,
        Algo::Allreduce,
        Algo::LocalSgd,
        Algo::Dpsgd,
        Algo::Adpsgd,
        Algo::Sgp,
        Algo::Qsparse,
        Algo::QsparseAsync,
        Algo::Lasgd,
        Algo::Elastic,
        Algo::ElasticEf,
    ];
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Swarm => "swarm",
            Algo::Allreduce => "allreduce",
            Algo::LocalSgd => "localsgd",
            Algo::Dpsgd => "dpsgd",
            Algo::Adpsgd => "adpsgd",
            Algo::Sgp => "sgp",
            Algo::Qsparse => "qsparse",
            Algo::QsparseAsync => "qsparse-async",
            Algo::Lasgd => "lasgd",
            Algo::Elastic => "elastic",
            Algo::ElasticEf => "elastic-ef",
        })
    }
}

impl std::str::FromStr for Algo {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algo::ALL
            .into_iter()
            .find(|a| a.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Algo::ALL.iter().map(|a| a.to_string()).collect();
                TrainError::Config(format!(
                    "unknown algorithm '{s}': use one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Every setting of a training run, as written in a TOML config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training algorithm.
    pub algo: Algo,
    /// Number of nodes (threads in this process).
    pub nodes: usize,
    /// Communication graph (see `swarm topo gen --help` for the kinds).
    pub topology: String,
    /// Local steps between interactions: `H` or `geometric:H`.
    pub local_steps: String,
    /// Averaging variant: pull, pairwise (blocking runs in the simulator only).
    pub interaction: String,
    /// Codec for the models that nodes read from each other.
    pub quant: String,
    /// Passes over the training data (each node passes over its own shard once per epoch).
    pub epochs: usize,
    /// Examples per local step, per node.
    pub batch_size: usize,
    /// Peak learning rate of plain SGD.
    pub lr: f64,
    /// How the learning rate moves over the run: constant, cosine (decays to 0 at the end), or
    /// step:EPOCHS or step:EPOCHS:GAMMA (multiplied by GAMMA, default 0.1, every EPOCHS epochs).
    pub lr_schedule: String,
    /// Seed of initialisation, partitioning, shuffling and neighbour choice.
    pub seed: u64,
    /// Architecture: mlp, mlp:HIDDEN, cnn.
    pub model: String,
    /// IDX dataset directory; Debian's Fashion-MNIST when absent.
    pub data: Option<PathBuf>,
    /// Division of the training data among nodes: iid, shards, dirichlet:ALPHA.
    pub partition: String,
    /// Use only the first N training examples (quick runs and tests).
    pub train_subset: Option<usize>,
    /// Use only the first N test examples.
    pub test_subset: Option<usize>,
    /// Where metrics.csv, summary.json and model.safetensors go.
    pub out: PathBuf,
    /// Hide the progress bar.
    pub quiet: bool,
    /// SGD momentum factor (0 = plain SGD); the buffer stays with its node, it is not averaged.
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Clip each step's gradient to this global L2 norm.
    pub clip_grad_norm: Option<f64>,
    /// Linear learning-rate warm-up over this many epochs (fractions allowed).
    pub lr_warmup: f64,
    /// Write a checkpoint of every node every this many epochs (and after the last).
    pub checkpoint_every: Option<usize>,
    /// Continue the run saved in this checkpoint directory (or run directory).
    pub resume: Option<PathBuf>,
    /// Where the models compute: cpu, cuda (in-process nodes round-robin over the visible GPUs,
    /// a rank takes the GPU of its local rank) or cuda:K (needs a CUDA libtorch and a GPU).
    pub device: String,
    /// Also evaluate node 0's model every this many of its local steps (`evals.csv`).
    pub eval_every: Option<usize>,
    /// Where the nodes run: `inproc` (threads of this process), `tcp` or `rdma` (this process is
    /// one rank of a multi-process job started by tools/launcher, Slurm or MPI).
    pub transport: String,
    /// Seconds after which an unresponsive peer (or rank, for rank 0's final gathering) counts as
    /// lost (multi-process runs).
    pub peer_timeout: f64,
    /// Reject a peer model farther than this (largest coordinate difference) from the node's own,
    /// and corrections of more than half of it; absent: accept any finite model.
    pub max_peer_distance: Option<f32>,
    /// `on`: a node keeps taking local steps while the partner's model is on the network and
    /// averages it in when it lands; `off`: it waits for every read and write.
    pub overlap: String,
    /// In-process runs: a node thread more than this many local steps ahead of the slowest node
    /// waits for it; `off`: threads run freely; `auto`: 1 when there are more nodes than cores,
    /// else off.
    pub max_lead: String,
    /// Emulate a cluster in virtual time (in-process nodes): a preset (ib-hdr, ib-edr, 100gbe,
    /// 25gbe, 10gbe) with optional items (`10gbe,fixed:5,stragglers:0.1:4`), or a TOML file.
    pub cluster: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algo: Algo::Swarm,
            nodes: 8,
            topology: "complete".into(),
            local_steps: "4".into(),
            interaction: "pairwise".into(),
            quant: "none".into(),
            epochs: 10,
            batch_size: 32,
            lr: 0.3,
            lr_schedule: "cosine".into(),
            seed: 1,
            model: "mlp".into(),
            data: None,
            partition: "iid".into(),
            train_subset: None,
            test_subset: None,
            out: PathBuf::from("runs/latest"),
            quiet: false,
            momentum: 0.0,
            weight_decay: 0.0,
            clip_grad_norm: None,
            lr_warmup: 0.0,
            checkpoint_every: None,
            resume: None,
            device: "cpu".into(),
            eval_every: None,
            transport: "inproc".into(),
            peer_timeout: 30.0,
            max_peer_distance: Some(1000.0),
            overlap: "on".into(),
            max_lead: "auto".into(),
            cluster: None,
        }
    }
}

/// Command-line flags of `swarm train`; each one given overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct TrainArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training algorithm [default: swarm].
    #[arg(long, value_enum)]
    pub algo: Option<Algo>,
    /// Number of nodes [default: 8].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Communication graph: complete, ring, torus2d, hypercube, regular:R, exponential, ... [default: complete].
    #[arg(long)]
    pub topology: Option<String>,
    /// Local steps between interactions: H or geometric:H [default: 4].
    #[arg(long)]
    pub local_steps: Option<String>,
    /// Averaging: pull or pairwise [default: pairwise].
    #[arg(long)]
    pub interaction: Option<String>,
    /// Codec for model reads: none, lattice:BITS, qsgd:LEVELS, minmax:BITS, sign, ... [default: none].
    #[arg(long)]
    pub quant: Option<String>,
    /// Epochs [default: 10].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size per node and step [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate [default: 0.3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule over the local steps: constant, cosine, step:EPOCHS, step:EPOCHS:GAMMA [default: cosine].
    #[arg(long)]
    pub lr_schedule: Option<String>,
    /// Seed [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Model: mlp, mlp:HIDDEN, cnn [default: mlp].
    #[arg(long)]
    pub model: Option<String>,
    /// IDX dataset directory [default: /usr/share/datasets/fashion-mnist].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Partition: iid, shards, dirichlet:ALPHA [default: iid].
    #[arg(long)]
    pub partition: Option<String>,
    /// Train on the first N examples only.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Test on the first N examples only.
    #[arg(long)]
    pub test_subset: Option<usize>,
    /// Output directory [default: runs/latest].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// SGD momentum factor, as torch.optim.SGD [default: 0].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay (L2 penalty added to the gradient) [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip each step's gradient to this global L2 norm [default: no clipping].
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Linear learning-rate warm-up over this many epochs, fractions allowed [default: 0].
    #[arg(long)]
    pub lr_warmup: Option<f64>,
    /// Checkpoint every node every this many epochs, into OUT/checkpoints/epoch-EEEE/ [default: never].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue a run from a checkpoint directory, or a run's output directory (its newest
    /// checkpoint). Settings not given as flags come from the checkpoint's config.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where the models compute: cpu, cuda (nodes round-robin over the visible GPUs; a rank of
    /// a multi-process job takes cuda:LOCAL_RANK) or cuda:K [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Also evaluate node 0's model every this many of its local steps, without pausing the
    /// nodes; rows go to evals.csv [default: only the averaged model at each epoch's end].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Where the nodes run: inproc (threads of this process), tcp or rdma (one rank of a job
    /// started by tools/launcher, Slurm or MPI; RANK/WORLD_SIZE/... from the environment; rdma
    /// picks its device from SWARM_RDMA_DEVICE / SWARM_RDMA_IP) [default: inproc].
    #[arg(long)]
    pub transport: Option<String>,
    /// Seconds after which an unresponsive peer counts as lost (multi-process runs) [default: 30].
    #[arg(long)]
    pub peer_timeout: Option<f64>,
    /// Reject peer models farther than this from the node's own (largest coordinate difference)
    /// [default: 1000].
    #[arg(long)]
    pub max_peer_distance: Option<f32>,
    /// Keep taking local steps while a partner's model is on the network (on), or wait for every
    /// read and write (off) [default: on].
    #[arg(long)]
    pub overlap: Option<String>,
    /// In-process runs: a node thread that is more than STEPS local steps ahead of the slowest
    /// node waits for it; `off`; or `auto`: 1 when there are more nodes than cores, else off.
    /// With more nodes than cores, free-running threads average with peers frozen for a whole
    /// time slice, which costs `pull` accuracy [default: auto].
    #[arg(long, value_name = "STEPS")]
    pub max_lead: Option<String>,
    /// Emulate a cluster in virtual time: N nodes in this process whose steps and messages take
    /// the time the cluster gives them. A network preset (ib-hdr, ib-edr, 100gbe, 25gbe, 10gbe)
    /// or net:LATENCY_US:GBPS, then optional items: shared (one link for all messages, like a
    /// loopback interface), fixed:MS or measured (step time),
    /// lognormal:SIGMA (jitter), `stragglers:FRACTION:FACTOR[:PERIOD_S]`, eval:SECONDS; or a TOML
    /// file with the same settings [default: real time].
    #[arg(long, value_name = "SPEC")]
    pub cluster: Option<String>,
}

/// A validated configuration, with every string parsed.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration as given (after merging), for the summary.
    pub raw: TrainConfig,
    /// Local steps.
    pub local_steps: LocalSteps,
    /// Averaging variant.
    pub interaction: Interaction,
    /// Codec.
    pub quant: quant::CodecSpec,
    /// Graph.
    pub topology: topology::TopologySpec,
    /// Model.
    pub model: ModelKind,
    /// Partition.
    pub partition: Partition,
    /// Dataset directory.
    pub data: PathBuf,
    /// Local optimizer.
    pub sgd: crate::model::SgdConfig,
    /// Where the nodes run.
    pub transport: TransportKind,
    /// In-process runs: how many local steps a node thread may run ahead of the slowest node.
    pub max_lead: Option<u64>,
    /// Whether interactions overlap local steps.
    pub overlap: Overlap,
    /// The cluster emulated in virtual time (`--cluster`), if any.
    pub cluster: Option<crate::vtime::ClusterSpec>,
}

/// Where the nodes of a run live and how they reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Threads of this process sharing memory.
    InProcess,
    /// One node per process, over TCP.
    Tcp,
    /// One node per process, over RDMA verbs.
    Rdma,
}

impl TransportKind {
    /// Whether this process is one rank of a multi-process job.
    pub fn is_multi_process(self) -> bool {
        self != TransportKind::InProcess
    }
}

impl std::str::FromStr for TransportKind {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inproc" => Ok(TransportKind::InProcess),
            "tcp" => Ok(TransportKind::Tcp),
            "rdma" => Ok(TransportKind::Rdma),
            other => Err(TrainError::Config(format!(
                "transport '{other}' is not inproc, tcp or rdma (tcp and rdma run one node per \
                 process, started by tools/launcher)"
            ))),
        }
    }
}

/// The shape of the learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrShape {
    /// Always the peak rate.
    Constant,
    /// `peak * (1 + cos(pi * p)) / 2`, p the progress from the end of warm-up to the end of the run.
    Cosine,
    /// `peak * gamma^(step / every)`.
    Step {
        /// Steps between decays.
        every: usize,
        /// Factor of each decay.
        gamma: f64,
    },
}

/// The learning rate as a function of a node's local step: a linear warm-up from `peak / warmup`
/// to `peak` over the first `warmup` steps, then `shape`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Rate at the end of warm-up.
    pub peak: f64,
    /// Steps of the whole run.
    pub total: usize,
    /// Warm-up steps.
    pub warmup: usize,
    /// Curve after warm-up.
    pub shape: LrShape,
}

impl LrSchedule {
    /// A schedule of `shape` without warm-up.
    pub fn new(peak: f64, total: usize, shape: LrShape) -> Self {
        LrSchedule {
            peak,
            total,
            warmup: 0,
            shape,
        }
    }

    /// The rate at local step `step`.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        match self.shape {
            LrShape::Constant => self.peak,
            LrShape::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1);
                let progress = (step - self.warmup).min(span) as f64 / span as f64;
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            LrShape::Step { every, gamma } => {
                self.peak * gamma.powi((step / every.max(1)).min(i32::MAX as usize) as i32)
            }
        }
    }
}

/// Parses `constant`, `cosine`, `step:EPOCHS[:GAMMA]` into a shape with decays every
/// `EPOCHS * steps_per_epoch` steps.
fn parse_lr_shape(s: &str, steps_per_epoch: usize) -> Result<LrShape, String> {
    match s {
        "constant" => Ok(LrShape::Constant),
        "cosine" => Ok(LrShape::Cosine),
        _ => {
            let bad = || {
                format!(
                    "lr_schedule '{s}' is not constant, cosine or step:EPOCHS[:GAMMA] \
                     (e.g. step:30:0.1, EPOCHS >= 1, 0 < GAMMA <= 1)"
                )
            };
            let rest = s.strip_prefix("step:").ok_or_else(bad)?;
            let mut it = rest.splitn(2, ':');
            let every: usize = it
                .next()
                .and_then(|e| e.parse().ok())
                .filter(|&e| e >= 1)
                .ok_or_else(bad)?;
            let gamma: f64 = match it.next() {
                Some(g) => g
                    .parse()
                    .ok()
                    .filter(|g: &f64| *g > 0.0 && *g <= 1.0)
                    .ok_or_else(bad)?,
                None => 0.1,
            };
            Ok(LrShape::Step {
                every: every * steps_per_epoch.max(1),
                gamma,
            })
        }
    }
}

impl Resolved {
    /// The schedule for a run of `total_steps` local steps per node.
    pub fn lr_schedule(&self, total_steps: usize) -> LrSchedule {
        let per_epoch = total_steps / self.raw.epochs.max(1);
        let shape = parse_lr_shape(&self.raw.lr_schedule, per_epoch).unwrap_or(LrShape::Constant);
        LrSchedule {
            peak: self.raw.lr,
            total: total_steps,
            warmup: (self.raw.lr_warmup * per_epoch as f64).round() as usize,
            shape,
        }
    }
}

impl TrainArgs {
    /// Merges defaults, the config file (if any) and the flags, and validates the result.
    pub fn resolve(&self) -> Result<Resolved, TrainError> {
        let mut cfg = match (&self.config, &self.resume) {
            (Some(path), _) => read_config(path)?,
            // Resuming without a config file: the checkpointed run's settings.
            (None, Some(dir)) => checkpoint_config(dir)?,
            (None, None) => TrainConfig::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { cfg.$f = v.clone(); } )* };
        }
        take!(
            algo,
            nodes,
            topology,
            local_steps,
            interaction,
            quant,
            epochs,
            batch_size,
            lr,
            lr_schedule,
            seed,
            model,
            partition,
            out,
            momentum,
            weight_decay,
            lr_warmup,
            transport,
            peer_timeout,
            overlap,
            max_lead
        );
        if self.max_peer_distance.is_some() {
            cfg.max_peer_distance = self.max_peer_distance;
        }
        if self.cluster.is_some() {
            cfg.cluster = self.cluster.clone();
        }
        if self.clip_grad_norm.is_some() {
            cfg.clip_grad_norm = self.clip_grad_norm;
        }
        if self.checkpoint_every.is_some() {
            cfg.checkpoint_every = self.checkpoint_every;
        }
        if self.resume.is_some() {
            cfg.resume = self.resume.clone();
        }
        if let Some(d) = &self.device {
            cfg.device = d.clone();
        }
        if self.eval_every.is_some() {
            cfg.eval_every = self.eval_every;
        }
        if self.data.is_some() {
            cfg.data = self.data.clone();
        }
        if self.train_subset.is_some() {
            cfg.train_subset = self.train_subset;
        }
        if self.test_subset.is_some() {
            cfg.test_subset = self.test_subset;
        }
        cfg.quiet |= self.quiet;
        cfg.validate()
    }
}

fn checkpoint_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    let path = match crate::checkpoint::resolve_resume_dir(dir) {
        Ok(dir) => crate::checkpoint::node_file(&dir, 0),
        // A multi-process run keeps one checkpoint per rank; they all hold the run's config.
        Err(e) => crate::checkpoint::any_rank_checkpoint(dir).ok_or(e)?,
    };
    let ck = crate::checkpoint::load(&path)?;
    toml::from_str(&ck.config_toml).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: the stored config is not a valid run configuration: {e}",
            path.display()
        ))
    })
}

fn read_config(path: &Path) -> Result<TrainConfig, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        TrainError::Config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    toml::from_str(&text)
        .map_err(|e| TrainError::Config(format!("config file {}: {e}", path.display())))
}

/// `off`, a number of local steps (at least 1), or `auto`: 1 step when the run has more node
/// threads than the machine has cores (they then take turns on the cores, and free-running turns
/// cost `pull` accuracy: issue 18), else off.
fn parse_max_lead(s: &str, nodes: usize, cores: usize) -> Result<Option<u64>, String> {
    match s {
        "off" => Ok(None),
        "auto" => Ok((nodes > cores).then_some(1)),
        _ => match s.parse::<u64>() {
            Ok(steps) if steps >= 1 => Ok(Some(steps)),
            _ => Err(format!(
                "max_lead '{s}': use auto, off or a number of local steps of at least 1"
            )),
        },
    }
}

impl TrainConfig {
    /// Parses and checks every field; the error names the field and what to use instead.
    pub fn validate(self) -> Result<Resolved, TrainError> {
        let cfg = |msg: String| TrainError::Config(msg);
        if self.nodes == 0 {
            return Err(cfg("nodes must be at least 1".into()));
        }
        let transport: TransportKind = self.transport.parse()?;
        let overlap: Overlap = self
            .overlap
            .parse()
            .map_err(|e: swarm_core::SwarmError| cfg(format!("overlap: {e}")))?;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let max_lead = parse_max_lead(&self.max_lead, self.nodes, cores).map_err(cfg)?;
        if !(self.peer_timeout.is_finite() && self.peer_timeout > 0.0) {
            return Err(cfg(format!(
                "peer_timeout {} must be a positive number of seconds",
                self.peer_timeout
            )));
        }
        if self
            .max_peer_distance
            .is_some_and(|d| !(d.is_finite() && d > 0.0))
        {
            return Err(cfg("max_peer_distance must be a positive number".into()));
        }
        if self.epochs == 0 {
            return Err(cfg("epochs must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(cfg("batch_size must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(cfg(format!(
                "lr must be a positive number, got {}",
                self.lr
            )));
        }
        let local_steps: LocalSteps = self
            .local_steps
            .parse()
            .map_err(|e: swarm_core::SwarmError| cfg(format!("local_steps: {e}")))?;
        let interaction: Interaction = self
            .interaction
            .parse()
            .map_err(|e: swarm_core::SwarmError| cfg(format!("interaction: {e}")))?;
        if interaction == Interaction::Blocking {
            return Err(cfg(
                "interaction 'blocking' makes both nodes stop together; it is the simulator's reference \
                 semantics (swarm-core Simulator), not a mode of one-sided training: use pull or pairwise"
                    .into(),
            ));
        }
        parse_lr_shape(&self.lr_schedule, 1).map_err(cfg)?;
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(cfg(format!("{name} must be a number >= 0, got {v}")))
            }
        };
        nonneg("lr_warmup", self.lr_warmup)?;
        nonneg("weight_decay", self.weight_decay)?;
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(cfg(format!(
                "momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(cfg(format!("clip_grad_norm must be > 0, got {c}")));
            }
        }
        if self.checkpoint_every == Some(0) {
            return Err(cfg("checkpoint_every must be at least 1 (epochs)".into()));
        }
        crate::device::check_spec(&self.device)?;
        if self.eval_every == Some(0) {
            return Err(cfg("eval_every must be at least 1 (local steps)".into()));
        }
        let sgd = crate::model::SgdConfig {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            clip_grad_norm: self.clip_grad_norm,
        };
        let quant: quant::CodecSpec = self.quant.parse().map_err(|e| cfg(format!("quant: {e}")))?;
        let topology: topology::TopologySpec = self
            .topology
            .parse()
            .map_err(|e| cfg(format!("topology: {e}")))?;
        let model: ModelKind = self.model.parse()?;
        let partition: Partition = self.partition.parse()?;
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::data::DEBIAN_FASHION_MNIST));
        let cluster = match &self.cluster {
            None => None,
            Some(text) => {
                let spec = crate::vtime::ClusterSpec::parse(text).map_err(cfg)?;
                if transport != TransportKind::InProcess {
                    return Err(cfg(format!(
                        "cluster: an emulated cluster runs its nodes in this process; drop \
                         --transport {} (or drop --cluster to run on the real network)",
                        self.transport
                    )));
                }
                if self.resume.is_some() || self.checkpoint_every.is_some() {
                    return Err(cfg(
                        "cluster: emulated runs are not checkpointed or resumed (they are \
                         deterministic: run again with the same seed and spec)"
                            .into(),
                    ));
                }
                if self.device != "cpu" {
                    return Err(cfg("cluster: emulated runs compute on the cpu".into()));
                }
                Some(spec)
            }
        };
        Ok(Resolved {
            cluster,
            local_steps,
            interaction,
            quant,
            topology,
            model,
            partition,
            data,
            sgd,
            transport,
            overlap,
            max_lead,
            raw: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "nodes = 4\nlr = 0.05\ntopology = \"ring\"\n").unwrap();
        let args = TrainArgs {
            config: Some(path),
            lr: Some(0.2),
            ..Default::default()
        };
        let r = args.resolve().unwrap();
        assert_eq!(
            (r.raw.nodes, r.raw.lr, r.raw.topology.as_str()),
            (4, 0.2, "ring")
        );
        assert_eq!(r.raw.epochs, 10);
    }

    #[test]
    fn max_lead_is_off_or_a_positive_step_count() {
        let resolve = |v: &str| {
            TrainArgs {
                max_lead: Some(v.into()),
                ..TrainArgs::default()
            }
            .resolve()
        };
        assert_eq!(resolve("off").unwrap().max_lead, None);
        assert_eq!(resolve("3").unwrap().max_lead, Some(3));
        assert_eq!(parse_max_lead("auto", 8, 2), Ok(Some(1)));
        assert_eq!(parse_max_lead("auto", 2, 2), Ok(None));
        for bad in ["0", "-1", "soon"] {
            let err = resolve(bad).unwrap_err().to_string();
            assert!(err.contains("max_lead") && err.contains("auto"), "{err}");
        }
    }

    #[test]
    fn overlap_and_transport_parse_into_their_types() {
        let r = TrainArgs::default().resolve().unwrap();
        assert_eq!(
            (r.overlap, r.transport),
            (Overlap::On, TransportKind::InProcess)
        );
        let r = TrainArgs {
            overlap: Some("off".into()),
            transport: Some("rdma".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (r.overlap, r.transport),
            (Overlap::Off, TransportKind::Rdma)
        );
        assert!(r.transport.is_multi_process());
        for (args, expected) in [
            (
                TrainArgs {
                    overlap: Some("sometimes".into()),
                    ..Default::default()
                },
                "use on or off",
            ),
            (
                TrainArgs {
                    transport: Some("udp".into()),
                    ..Default::default()
                },
                "not inproc, tcp or rdma",
            ),
        ] {
            let err = args.resolve().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn cosine_schedule_runs_from_the_peak_to_zero() {
        let s = LrSchedule::new(0.3, 100, LrShape::Cosine);
        assert_eq!(s.at(0), 0.3);
        assert!((s.at(50) - 0.15).abs() < 1e-12);
        assert!(s.at(100).abs() < 1e-12 && s.at(500).abs() < 1e-12);
        assert_eq!(LrSchedule::new(0.1, 100, LrShape::Constant).at(77), 0.1);
        let err = TrainArgs {
            lr_schedule: Some("step".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("step:EPOCHS[:GAMMA]"), "{err}");
    }

    #[test]
    fn warm_up_and_step_schedules_follow_the_epochs() {
        let r = TrainArgs {
            epochs: Some(4),
            lr: Some(0.4),
            lr_schedule: Some("step:2:0.5".into()),
            lr_warmup: Some(0.5),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        // 10 steps per epoch: 5 warm-up steps, then halved every 20 steps.
        let s = r.lr_schedule(40);
        assert_eq!(s.warmup, 5);
        assert!((s.at(0) - 0.08).abs() < 1e-12 && (s.at(4) - 0.4).abs() < 1e-12);
        assert_eq!(
            (s.at(5), s.at(19), s.at(20), s.at(39)),
            (0.4, 0.4, 0.2, 0.2)
        );
        let cos = LrSchedule {
            warmup: 10,
            ..LrSchedule::new(1.0, 110, LrShape::Cosine)
        };
        assert_eq!(cos.at(10), 1.0);
        assert!((cos.at(60) - 0.5).abs() < 1e-12 && cos.at(110).abs() < 1e-12);
        for (flag, expected) in [
            (
                TrainArgs {
                    momentum: Some(1.0),
                    ..Default::default()
                },
                "momentum",
            ),
            (
                TrainArgs {
                    clip_grad_norm: Some(0.0),
                    ..Default::default()
                },
                "clip_grad_norm",
            ),
            (
                TrainArgs {
                    lr_schedule: Some("step:0".into()),
                    ..Default::default()
                },
                "step:EPOCHS",
            ),
            (
                TrainArgs {
                    checkpoint_every: Some(0),
                    ..Default::default()
                },
                "checkpoint_every",
            ),
            (
                TrainArgs {
                    device: Some("gpu".into()),
                    ..Default::default()
                },
                "cpu, cuda or cuda:K",
            ),
            (
                TrainArgs {
                    device: Some("cuda:0".into()),
                    ..Default::default()
                },
                "device cuda:0",
            ),
        ] {
            let e = flag.resolve().unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn malformed_configs_and_impossible_flags_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nodez = 4\n").unwrap();
        let err = TrainArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("nodez") && err.contains("bad.toml"), "{err}");
        let err = TrainArgs {
            nodes: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("nodes must be at least 1"), "{err}");
        let err = TrainArgs {
            local_steps: Some("0".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("local_steps"), "{err}");
        let err = TrainArgs {
            partition: Some("dirichlet:-1".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("dirichlet:ALPHA"), "{err}");
    }
}
