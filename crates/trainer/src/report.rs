//! Run outputs: metrics.csv, summary.json and the averaged model as safetensors.

use std::path::Path;

use serde::Serialize;
use swarm_core::NodeStats;

use crate::model::FlatModel;
use crate::TrainError;

/// The coordinate-wise mean of `models` (summed in f64), as the model every driver evaluates.
pub(crate) fn average_model<'a>(models: impl IntoIterator<Item = &'a [f32]>) -> Vec<f32> {
    swarm_core::mean_of(models)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// Each of `models`' test accuracy, evaluated through `eval_model` (which ends holding the last).
pub(crate) fn each_accuracy<'a>(
    eval_model: &mut FlatModel,
    models: impl IntoIterator<Item = &'a [f32]>,
    test: &crate::data::Split,
) -> Result<Vec<f64>, TrainError> {
    models
        .into_iter()
        .map(|params| {
            eval_model.load(params)?;
            Ok(eval_model.evaluate(test).1)
        })
        .collect()
}

/// Creates a run's output directory, or says which one could not be created.
pub(crate) fn create_output_dir(out: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(out).map_err(|e| {
        TrainError::Output(format!(
            "cannot create output directory {}: {e}",
            out.display()
        ))
    })
}

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

/// What a run's summary is made of, gathered by its driver from the nodes it ran.
pub(crate) struct RunTally<'a> {
    /// The last evaluation of the averaged model (its bytes and interactions are the run's).
    pub final_row: &'a EvalRow,
    /// Each gathered node's own model's test accuracy.
    pub node_accuracies: &'a [f64],
    /// Each gathered node's counters.
    pub node_stats: Vec<NodeStats>,
    /// Local SGD steps of all nodes.
    pub local_steps_total: u64,
    /// Wall time of the whole run.
    pub wall_seconds: f64,
    /// Epochs this process trained (the run's epochs less those a resumed run had done).
    pub epochs_trained: usize,
    /// Parameters per model.
    pub parameters: usize,
}

impl Summary {
    /// The summary of a run of `cfg` on `nodes` nodes.
    pub(crate) fn new(cfg: &crate::config::Resolved, nodes: usize, tally: RunTally<'_>) -> Self {
        let accuracies = tally.node_accuracies;
        let (mean_staleness_steps, max_staleness_steps) = staleness(&tally.node_stats);
        Summary {
            algo: cfg.raw.algo.to_string(),
            nodes,
            final_test_accuracy: tally.final_row.test_accuracy,
            mean_node_test_accuracy: accuracies.iter().sum::<f64>()
                / accuracies.len().max(1) as f64,
            min_node_test_accuracy: accuracies.iter().copied().fold(f64::INFINITY, f64::min),
            bytes_sent_total: tally.final_row.bytes_sent_total,
            interactions: tally.final_row.interactions,
            local_steps_total: tally.local_steps_total,
            wall_seconds: tally.wall_seconds,
            train_seconds: tally.final_row.train_seconds,
            seconds_per_epoch: tally.final_row.train_seconds / tally.epochs_trained.max(1) as f64,
            parameters: tally.parameters,
            mean_staleness_steps,
            max_staleness_steps,
            node_stats: tally.node_stats,
            config: cfg.raw.clone(),
        }
    }
}

/// The line a driver prints at the end of each epoch: for the whole run (in-process, where the
/// averaged model is evaluated) or for one rank (its own model, its own counters).
pub(crate) struct EpochLine<'a> {
    /// The rank printing it, in a multi-process run.
    pub rank: Option<usize>,
    /// The epoch's evaluation; NaN fields are left out of the line.
    pub row: &'a EvalRow,
    /// Epochs of the run.
    pub epochs: usize,
    /// Epochs this process trained so far (for the s/epoch figure).
    pub epochs_trained: usize,
    /// Mean and maximum staleness of the averaged copies so far, for SwarmSGD.
    pub staleness: Option<(f64, u64)>,
    /// Neighbours this rank cannot reach.
    pub unreachable: Option<&'a std::collections::BTreeSet<usize>>,
}

impl std::fmt::Display for EpochLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = self.row;
        if let Some(rank) = self.rank {
            write!(f, "rank {rank} ")?;
        }
        write!(
            f,
            "epoch {:>3}/{}  train loss {:.4}",
            row.epoch, self.epochs, row.train_loss
        )?;
        // A rank evaluates its own model; the in-process run the nodes' average.
        let own = if self.rank.is_some() { "own " } else { "" };
        if !row.test_loss.is_nan() {
            write!(f, "  {own}test loss {:.4}", row.test_loss)?;
        }
        if !row.test_accuracy.is_nan() {
            write!(f, "  {own}test acc {:.2}%", 100.0 * row.test_accuracy)?;
        }
        if !row.model_spread.is_nan() {
            write!(f, "  spread {:.3e}", row.model_spread)?;
        }
        write!(
            f,
            "  {} sent  {} interactions",
            human_bytes(row.bytes_sent_total),
            row.interactions
        )?;
        if let Some((mean, max)) = self.staleness {
            write!(f, "  staleness {mean:.2}/{max} steps (mean/max)")?;
        }
        if let Some(lost) = self.unreachable.filter(|l| !l.is_empty()) {
            write!(f, "  unreachable {lost:?}")?;
        }
        write!(
            f,
            "  {:.2} s/epoch",
            row.train_seconds / self.epochs_trained.max(1) as f64
        )
    }
}

/// `b` bytes in GB, MB or kB.
pub(crate) fn human_bytes(b: u64) -> String {
    human_amount(b as f64, "B")
}

/// `v` of `unit` with a G, M or k prefix (2, 1 and 0 decimals).
pub(crate) fn human_amount(v: f64, unit: &str) -> String {
    if v >= 1e9 {
        format!("{:.2} G{unit}", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} M{unit}", v / 1e6)
    } else {
        format!("{:.0} k{unit}", v / 1e3)
    }
}

/// Mean and maximum staleness (local steps) of the averaged copies of all nodes.
pub(crate) fn staleness<'a>(stats: impl IntoIterator<Item = &'a NodeStats>) -> (f64, u64) {
    let (copies, total, max) = stats.into_iter().fold((0u64, 0u64, 0u64), |(c, t, m), s| {
        (
            c + s.copies_averaged,
            t + s.staleness_steps_total,
            m.max(s.staleness_steps_max),
        )
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(test_loss: f64, test_accuracy: f64, model_spread: f64) -> EvalRow {
        EvalRow {
            epoch: 3,
            train_loss: 0.51234,
            test_loss,
            test_accuracy,
            train_seconds: 6.0,
            bytes_sent_total: 2_500_000_000,
            interactions: 1234,
            model_spread,
        }
    }

    #[test]
    fn the_epoch_line_of_a_run_and_of_a_rank_say_what_each_evaluated() {
        let averaged = row(0.4, 0.8765, 1.5e-3);
        let run = EpochLine {
            rank: None,
            row: &averaged,
            epochs: 10,
            epochs_trained: 2,
            staleness: None,
            unreachable: None,
        };
        assert_eq!(
            run.to_string(),
            "epoch   3/10  train loss 0.5123  test loss 0.4000  test acc 87.65%  spread 1.500e-3  2.50 GB sent  1234 interactions  3.00 s/epoch"
        );
        let own = row(f64::NAN, 0.5, f64::NAN);
        let lost = std::collections::BTreeSet::from([2]);
        let rank = EpochLine {
            rank: Some(1),
            row: &own,
            epochs: 10,
            epochs_trained: 3,
            staleness: Some((1.25, 4)),
            unreachable: Some(&lost),
        };
        assert_eq!(
            rank.to_string(),
            "rank 1 epoch   3/10  train loss 0.5123  own test acc 50.00%  2.50 GB sent  1234 interactions  staleness 1.25/4 steps (mean/max)  unreachable {2}  2.00 s/epoch"
        );
    }

    #[test]
    fn staleness_is_averaged_over_copies_not_nodes() {
        let a = NodeStats {
            copies_averaged: 3,
            staleness_steps_total: 9,
            staleness_steps_max: 5,
            ..NodeStats::default()
        };
        let b = NodeStats {
            copies_averaged: 1,
            staleness_steps_total: 1,
            staleness_steps_max: 1,
            ..NodeStats::default()
        };
        assert_eq!(staleness(&[a, b]), (2.5, 5));
        assert_eq!(staleness(&[] as &[NodeStats]), (0.0, 0));
    }
}
