//! Run outputs: metrics.csv, summary.json and the averaged model as safetensors.

use std::path::Path;

use serde::Serialize;
use swarm_core::NodeStats;

use crate::model::FlatModel;
use crate::TrainError;

/// One evaluation of the nodes' averaged model.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// Epochs completed.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps of all nodes.
    pub train_loss: f64,
    /// Test loss of the averaged model.
    pub test_loss: f64,
    /// Test accuracy of the averaged model.
    pub test_accuracy: f64,
    /// Training time so far, evaluations excluded.
    pub train_seconds: f64,
    /// Bytes moved between nodes so far.
    pub bytes_sent_total: u64,
    /// Interactions (swarm) or all-reduce rounds so far.
    pub interactions: u64,
    /// Sum over nodes of the squared distance of their model to the average.
    pub model_spread: f64,
}

/// What `summary.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Algorithm.
    pub algo: String,
    /// Nodes.
    pub nodes: usize,
    /// Test accuracy of the nodes' averaged model after training.
    pub final_test_accuracy: f64,
    /// Mean over nodes of each node's own model's test accuracy.
    pub mean_node_test_accuracy: f64,
    /// Lowest node test accuracy.
    pub min_node_test_accuracy: f64,
    /// Bytes moved between nodes: models read and corrections written (swarm); for all-reduce,
    /// the volume a ring all-reduce sends, 2 (n - 1) / n * model bytes per node and step.
    pub bytes_sent_total: u64,
    /// Interactions (swarm) or all-reduce rounds.
    pub interactions: u64,
    /// Local SGD steps of all nodes.
    pub local_steps_total: u64,
    /// Wall time of the whole run, data loading and evaluations included.
    pub wall_seconds: f64,
    /// Training time, evaluations excluded.
    pub train_seconds: f64,
    /// `train_seconds / epochs`.
    pub seconds_per_epoch: f64,
    /// Parameters per model.
    pub parameters: usize,
    /// Mean over every averaged copy of the local steps its node took while the copy was on the
    /// network (swarm).
    pub mean_staleness_steps: f64,
    /// The largest such count (swarm).
    pub max_staleness_steps: u64,
    /// Per-node counters (swarm).
    pub node_stats: Vec<NodeStats>,
    /// The configuration.
    pub config: crate::config::TrainConfig,
}

/// Mean and maximum staleness (local steps) of the averaged copies of all nodes.
pub(crate) fn staleness(stats: &[NodeStats]) -> (f64, u64) {
    let copies: u64 = stats.iter().map(|s| s.copies_averaged).sum();
    let total: u64 = stats.iter().map(|s| s.staleness_steps_total).sum();
    let max = stats
        .iter()
        .map(|s| s.staleness_steps_max)
        .max()
        .unwrap_or(0);
    (total as f64 / copies.max(1) as f64, max)
}

/// Writes `metrics.csv`, `summary.json` and `model.safetensors` into `out`.
pub fn write_outputs(
    out: &Path,
    rows: &[EvalRow],
    summary: &Summary,
    model: &FlatModel,
) -> Result<(), TrainError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        TrainError::Output(format!("cannot write {}/{what}: {e}", out.display()))
    };
    let mut csv = String::from(
        "epoch,train_loss,test_loss,test_accuracy,train_seconds,bytes_sent_total,interactions,model_spread\n",
    );
    for r in rows {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.3},{},{},{:.6e}\n",
            r.epoch,
            r.train_loss,
            r.test_loss,
            r.test_accuracy,
            r.train_seconds,
            r.bytes_sent_total,
            r.interactions,
            r.model_spread
        ));
    }
    std::fs::write(out.join("metrics.csv"), csv).map_err(|e| io("metrics.csv", &e))?;
    let json = serde_json::to_string_pretty(summary).map_err(|e| io("summary.json", &e))?;
    std::fs::write(out.join("summary.json"), json + "\n").map_err(|e| io("summary.json", &e))?;
    write_model(&out.join("model.safetensors"), summary, model)
        .map_err(|e| io("model.safetensors", &e))
}

/// Writes `evals.csv`: node 0's test loss and accuracy after every `--eval-every` local steps.
pub fn write_step_evals(out: &Path, evals: &[(usize, f64, f64)]) -> Result<(), TrainError> {
    let mut csv = String::from("step,node,test_loss,test_accuracy\n");
    for (step, loss, acc) in evals {
        csv.push_str(&format!("{step},0,{loss:.6},{acc:.6}\n"));
    }
    std::fs::write(out.join("evals.csv"), csv)
        .map_err(|e| TrainError::Output(format!("cannot write {}/evals.csv: {e}", out.display())))
}

/// Writes the averaged `model` as safetensors: each parameter by its PyTorch name and shape (so
/// `module.load_state_dict(safetensors.torch.load_file(path))` loads it), with string metadata
/// `format` (`swarm-model`), `algo`, `model`, `nodes`, `epoch`, `step` (local steps per node),
/// `parameters` and `config` (the run's TOML). Written atomically.
pub fn write_model(path: &Path, summary: &Summary, model: &FlatModel) -> Result<(), String> {
    let flat = model.params_copy();
    let tensors: Vec<(String, Vec<usize>, &[f32])> = model
        .specs()
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.shape.iter().map(|&d| d as usize).collect(),
                &flat[s.offset..s.offset + s.numel],
            )
        })
        .collect();
    let config = toml::to_string(&summary.config).map_err(|e| e.to_string())?;
    let nodes = summary.nodes.max(1) as u64;
    let metadata = [
        ("format", "swarm-model".to_string()),
        ("algo", summary.algo.clone()),
        ("model", summary.config.model.clone()),
        ("nodes", summary.nodes.to_string()),
        ("epoch", summary.config.epochs.to_string()),
        ("step", (summary.local_steps_total / nodes).to_string()),
        ("parameters", summary.parameters.to_string()),
        ("config", config),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = crate::checkpoint::safetensors_bytes(&tensors, metadata)?;
    crate::checkpoint::write_atomically(path, &bytes)
}
