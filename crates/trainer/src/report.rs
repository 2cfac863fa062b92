//! Run outputs: metrics.csv, summary.json and the averaged model as safetensors.

use std::path::Path;

use crate::model::FlatModel;
use crate::train::{EvalRow, Summary};
use crate::TrainError;

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
