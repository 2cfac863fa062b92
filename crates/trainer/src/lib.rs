//! The `swarm` trainer: SwarmSGD and all-reduce SGD of libtorch models on real data.
//!
//! The binary's subcommands are thin wrappers over this library: [`train::train`] runs a
//! configuration ([`config::TrainArgs`]) and writes `metrics.csv`, `summary.json` and
//! `model.safetensors` into its output directory.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod experiment;
mod flat;
pub mod model;
pub mod multiproc;
pub mod netmodel;
mod pace;
pub mod plot;
pub mod report;
mod setup;
pub mod simstudy;
pub mod train;
pub mod vtime;
mod worker;

/// Everything that can stop a run, each with a message that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is malformed or impossible.
    #[error("configuration error: {0}")]
    Config(String),
    /// The dataset is missing or malformed.
    #[error("data error: {0}")]
    Data(String),
    /// A node failed during training.
    #[error("training failed: {0}")]
    Node(String),
    /// The outputs could not be written.
    #[error("output error: {0}")]
    Output(String),
    /// A checkpoint could not be written, or read back, or does not fit the run.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
}

impl From<swarm_core::SwarmError> for TrainError {
    fn from(e: swarm_core::SwarmError) -> Self {
        TrainError::Node(e.to_string())
    }
}
