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
    let named = model.named_tensors();
    tch::Tensor::write_safetensors(&named, out.join("model.safetensors"))
        .map_err(|e| io("model.safetensors", &e))?;
    Ok(())
}
