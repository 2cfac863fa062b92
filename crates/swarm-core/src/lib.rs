//! SwarmSGD: asynchronous decentralized SGD with quantized and local updates.
//!
//! Nodes take local SGD steps on their own data, then average their model with one random
//! neighbour (Nadiradze et al., NeurIPS 2021). This crate holds the algorithm as pure state, the
//! thin [`Transport`] trait through which nodes read and write each other's windows, an
//! in-process transport ([`InProcessFabric`]) and a deterministic [`Simulator`].
//!
//! It knows nothing of tensors, verbs or sockets: models are flat `&mut [f32]` buffers.
//!
//! ```
//! use swarmsgd_core::{Interaction, LocalSteps, SimConfig, Simulator, LeastSquares};
//!
//! // 16 nodes on a ring, each holding 4 rows of a 8-dimensional consistent least-squares problem.
//! let ring: Vec<Vec<usize>> = (0..16).map(|i| vec![(i + 15) % 16, (i + 1) % 16]).collect();
//! let objective = LeastSquares::consistent(16, 4, 8, 7);
//! let cfg = SimConfig { interaction: Interaction::Blocking, local_steps: LocalSteps::Fixed(1), lr: 0.05, seed: 1 };
//! let mut sim = Simulator::new(ring, objective, cfg, vec![0.0; 8]).unwrap();
//! sim.run(40_000).unwrap();
//! assert!(sim.max_distance_to(&sim.objective().optimum().to_vec()) < 1e-2);
//! ```

mod algorithm;
mod error;
mod inproc;
mod node;
mod objective;
mod sim;
mod transport;

pub use algorithm::{
    all_finite_le, average_checked_le, average_into, average_into_le, average_publish_le,
    check_copy_le, check_values_le, fold_correction, fold_correction_le, le_bytes, le_values,
    linf_distance, mean_of, pairwise_average, pairwise_average_le, pairwise_checked_le, spread,
    Interaction, LocalSteps, Rejected, Schedule,
};
pub use error::{SwarmError, TransportError};
pub use inproc::{InProcessEndpoint, InProcessFabric};
pub use node::{NodeStats, Overlap, SwarmNode, STALENESS_BUCKETS};
pub use objective::{LeastSquares, LogisticRegression, Objective};
pub use sim::{SimConfig, Simulator};
pub use transport::{Completion, OpId, ReadOutcome, Transport, WriteOutcome, PUBLISH_CHUNK_ALIGN};

/// Index of a node, `0..n`.
pub type NodeId = usize;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
