//! A run's set-up, the same whichever driver runs it: the dataset cut to the configured subsets,
//! the communication graph, each node's shard, the steps per epoch and the learning-rate
//! schedule, each node's starting model, and each node's SwarmSGD state.

use swarm_core::{SwarmNode, Transport};

use crate::checkpoint::RunIdentity;
use crate::config::{LrSchedule, Resolved};
use crate::data::{load_dir, Dataset};
use crate::model::FlatModel;
use crate::TrainError;

/// What every node of a run of `n` nodes shares, computed once per process.
pub(crate) struct RunSetup {
    /// Training and test data.
    pub data: Dataset,
    /// Each node's neighbours in the communication graph.
    pub neighbours: Vec<Vec<usize>>,
    /// Each node's shard of the training examples (indices).
    pub parts: Vec<Vec<usize>>,
    /// Output classes of the model.
    pub classes: usize,
    /// Local steps per epoch of every node: one pass of the data over all nodes.
    pub steps_per_epoch: usize,
    /// The learning rate at each local step.
    pub lr: LrSchedule,
    /// What each checkpoint of the run records about it.
    pub identity: RunIdentity,
}

impl RunSetup {
    /// Loads the data and builds the graph and shards for `n` nodes.
    pub(crate) fn new(cfg: &Resolved, n: usize) -> Result<Self, TrainError> {
        let data = load_data(cfg, n)?;
        let graph = cfg
            .topology
            .build(n, cfg.raw.seed)
            .map_err(|e| TrainError::Config(format!("topology: {e}")))?;
        let neighbours = (0..n).map(|i| graph.neighbours(i).to_vec()).collect();
        let parts = cfg.partition.split(&data.train.labels, n, cfg.raw.seed)?;
        let classes = data.train.classes().max(data.test.classes());
        let steps_per_epoch = data.train.len().div_ceil(n * cfg.raw.batch_size);
        let lr = cfg.lr_schedule(steps_per_epoch * cfg.raw.epochs);
        let identity = RunIdentity {
            nodes: n,
            algo: cfg.raw.algo.to_string(),
            model: cfg.raw.model.clone(),
            config_toml: toml::to_string(&cfg.raw)
                .map_err(|e| TrainError::Checkpoint(format!("cannot encode the config: {e}")))?,
        };
        Ok(RunSetup {
            data,
            neighbours,
            parts,
            classes,
            steps_per_epoch,
            lr,
            identity,
        })
    }

    /// The run's common initial model (every node starts from the same point), with the
    /// configured optimizer.
    pub(crate) fn initial_model(
        &self,
        cfg: &Resolved,
        device: tch::Device,
    ) -> Result<FlatModel, TrainError> {
        let mut model = FlatModel::new_on(
            cfg.model,
            self.data.train.shape,
            self.classes,
            cfg.raw.seed,
            device,
        )?;
        model.set_sgd(cfg.sgd);
        Ok(model)
    }
}

/// The run's dataset, cut to the configured subsets; enough examples for `n` nodes.
fn load_data(cfg: &Resolved, n: usize) -> Result<Dataset, TrainError> {
    let mut data = load_dir(&cfg.data)?;
    if let Some(k) = cfg.raw.train_subset {
        data.train = data.train.truncated(k);
    }
    if let Some(k) = cfg.raw.test_subset {
        data.test = data.test.truncated(k);
    }
    if data.train.len() < n {
        return Err(TrainError::Config(format!(
            "{} training examples cannot feed {n} nodes",
            data.train.len()
        )));
    }
    Ok(data)
}

/// Bytes a node's window holds for a model of `dim` parameters: the encoded model padded to 8,
/// the full-precision fallback copy, and slack.
pub(crate) fn window_capacity(cfg: &Resolved, dim: usize) -> usize {
    cfg.quant.encoded_len(dim).div_ceil(8) * 8 + 4 * dim + 64
}

/// Refuses an in-process fabric (a window and one inbox slot per neighbour, of `capacity` bytes
/// each, for every node) larger than half the memory this machine has available.
pub(crate) fn check_fabric_memory(
    neighbours: &[Vec<usize>],
    capacity: usize,
) -> Result<(), TrainError> {
    let bytes: u64 = neighbours
        .iter()
        .map(|list| (1 + list.len() as u64) * capacity as u64)
        .sum();
    let Some(available) = available_memory_bytes() else {
        return Ok(());
    };
    if bytes > available / 2 {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(TrainError::Config(format!(
            "the in-process fabric of {} nodes needs {:.1} GiB (a window and an inbox slot per \
             neighbour, {:.1} MB each) and this machine has {:.1} GiB available: use a sparser \
             --topology (hypercube, regular:8, exponential), fewer nodes, or a smaller model",
            neighbours.len(),
            gib(bytes),
            capacity as f64 / 1e6,
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo, when there is one.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Node `endpoint`'s SwarmSGD state as configured: schedule, codec, distance limit, and for
/// quantized runs the same codec for pairwise corrections.
pub(crate) fn swarm_node<T: Transport>(
    cfg: &Resolved,
    endpoint: T,
    neighbours: Vec<usize>,
    dim: usize,
) -> Result<SwarmNode<T>, TrainError> {
    let quant_error = |e: quant::QuantError| TrainError::Config(format!("quant: {e}"));
    let codec = cfg.quant.build(cfg.raw.seed).map_err(quant_error)?;
    let mut swarm = SwarmNode::new(
        endpoint,
        neighbours,
        dim,
        cfg.interaction,
        cfg.local_steps,
        codec,
        cfg.raw.seed,
    )
    .map_err(|e| TrainError::Config(e.to_string()))?
    .with_overlap(cfg.overlap);
    if let Some(limit) = cfg.raw.max_peer_distance {
        swarm = swarm.with_max_peer_distance(limit);
    }
    if cfg.quant != quant::CodecSpec::None {
        let correction_codec = cfg
            .quant
            .build(cfg.raw.seed ^ 0xC0EE)
            .map_err(quant_error)?;
        swarm = swarm
            .with_correction_codec(correction_codec)
            .map_err(|e| TrainError::Config(e.to_string()))?;
    }
    Ok(swarm)
}
