//! Training configuration: defaults, a TOML file, and command-line flags, in that order of precedence.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use swarm_core::{Interaction, LocalSteps};

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
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Swarm => "swarm",
            Algo::Allreduce => "allreduce",
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
    /// How the learning rate moves over the run: constant, or cosine (decays to 0 at the end).
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
    /// Learning-rate schedule over the local steps: constant or cosine [default: cosine].
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
}

/// The learning rate as a function of a node's local step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// Always the same rate.
    Constant(f64),
    /// `peak * (1 + cos(pi * step / total)) / 2`: from `peak` down to 0 over `total` steps.
    Cosine {
        /// Rate at step 0.
        peak: f64,
        /// Steps of the whole run.
        total: usize,
    },
}

impl LrSchedule {
    /// The rate at local step `step`.
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            LrSchedule::Constant(lr) => lr,
            LrSchedule::Cosine { peak, total } => {
                let progress = step.min(total) as f64 / total.max(1) as f64;
                peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl Resolved {
    /// The schedule for a run of `total_steps` local steps per node.
    pub fn lr_schedule(&self, total_steps: usize) -> LrSchedule {
        if self.raw.lr_schedule == "cosine" {
            LrSchedule::Cosine {
                peak: self.raw.lr,
                total: total_steps,
            }
        } else {
            LrSchedule::Constant(self.raw.lr)
        }
    }
}

impl TrainArgs {
    /// Merges defaults, the config file (if any) and the flags, and validates the result.
    pub fn resolve(&self) -> Result<Resolved, TrainError> {
        let mut cfg = match &self.config {
            Some(path) => read_config(path)?,
            None => TrainConfig::default(),
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
            out
        );
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

fn read_config(path: &Path) -> Result<TrainConfig, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        TrainError::Config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    toml::from_str(&text)
        .map_err(|e| TrainError::Config(format!("config file {}: {e}", path.display())))
}

impl TrainConfig {
    /// Parses and checks every field; the error names the field and what to use instead.
    pub fn validate(self) -> Result<Resolved, TrainError> {
        let cfg = |msg: String| TrainError::Config(msg);
        if self.nodes == 0 {
            return Err(cfg("nodes must be at least 1".into()));
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
        if !matches!(self.lr_schedule.as_str(), "constant" | "cosine") {
            return Err(cfg(format!(
                "lr_schedule '{}' is not constant or cosine",
                self.lr_schedule
            )));
        }
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
        Ok(Resolved {
            local_steps,
            interaction,
            quant,
            topology,
            model,
            partition,
            data,
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
    fn cosine_schedule_runs_from_the_peak_to_zero() {
        let s = LrSchedule::Cosine {
            peak: 0.3,
            total: 100,
        };
        assert_eq!(s.at(0), 0.3);
        assert!((s.at(50) - 0.15).abs() < 1e-12);
        assert!(s.at(100).abs() < 1e-12 && s.at(500).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant(0.1).at(77), 0.1);
        let err = TrainArgs {
            lr_schedule: Some("step".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("constant or cosine"), "{err}");
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
