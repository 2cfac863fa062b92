//! Qsparse-local-SGD (Basu et al., 2019): H local steps, then each node compresses its progress
//! since the last synchronisation, `delta = x_i - x_hat`, with the run's codec (top-k, rand-k,
//! quantizers, or both composed) and error feedback: what compression lost is added to the next
//! progress. The global model moves by the average of the compressed progress and every node
//! restarts from it.
//!
//! - `qsparse` (synchronous triggers): all nodes synchronise every H steps; the compressed updates
//!   are all-gathered (each node sends its payload to the n - 1 others: `n - 1` messages).
//! - `qsparse-async` (asynchronous triggers): each node synchronises after its own geometric(H)
//!   number of steps: it pushes its compressed progress to a shared model (`x_hat += c_i / n`) and
//!   pulls the model back (two messages: its payload, and the full-precision model).

use std::sync::{Arc, Mutex};

use quant::{Codec, ErrorFeedback};
use rand::rngs::StdRng;
use rand::SeedableRng;
use swarm_core::{LocalSteps, NodeStats, Schedule};

use super::super::Reducer;
use super::{model_bytes, period, NodeAlgo};
use crate::config::{Algo, Resolved};
use crate::model::FlatModel;
use crate::vtime::VirtualClock;
use crate::TrainError;

/// A codec with (or without) error feedback, that returns what the receivers decode.
pub(crate) struct Compressor {
    codec: Coder,
    bytes: Vec<u8>,
    zeros: Vec<f32>,
}

enum Coder {
    Plain(Box<dyn Codec>),
    Feedback(ErrorFeedback),
}

impl Compressor {
    /// `codec`, wrapped in error feedback when `ef`.
    pub fn new(codec: Box<dyn Codec>, ef: bool) -> Self {
        Compressor {
            codec: if ef {
                Coder::Feedback(ErrorFeedback::new(codec))
            } else {
                Coder::Plain(codec)
            },
            bytes: Vec::new(),
            zeros: Vec::new(),
        }
    }

    fn codec(&mut self) -> &mut dyn Codec {
        match &mut self.codec {
            Coder::Plain(c) => c.as_mut(),
            Coder::Feedback(c) => c,
        }
    }

    /// Compresses `v` (plus the residual, with error feedback) and replaces it with what a
    /// receiver decodes; returns the payload's size in bytes.
    pub fn compress(&mut self, v: &mut [f32]) -> Result<u64, TrainError> {
        let err = |e: quant::QuantError| TrainError::Node(format!("compression: {e}"));
        let mut bytes = std::mem::take(&mut self.bytes);
        self.codec().encode(v, &mut bytes).map_err(err)?;
        self.zeros.resize(v.len(), 0.0);
        let zeros = std::mem::take(&mut self.zeros);
        let report = self.codec().decode(&bytes, &zeros, v).map_err(err)?;
        self.zeros = zeros;
        let len = bytes.len() as u64;
        self.bytes = bytes;
        if !report.is_ok() {
            return Err(TrainError::Node(format!(
                "{}: {} buckets failed to decode; use a codec that does not decode relative to \
                 the reader (topk, randk, qsgd, minmax)",
                self.codec().name(),
                report.failed_buckets
            )));
        }
        Ok(len)
    }

    /// The error-feedback residual: everything fed in so far minus everything decoded (empty
    /// without error feedback, or before the first use).
    #[cfg(test)]
    pub fn residual(&self) -> &[f32] {
        match &self.codec {
            Coder::Plain(_) => &[],
            Coder::Feedback(c) => c.residual(),
        }
    }
}

/// The shared model of the asynchronous variant.
struct Master {
    model: Mutex<Vec<f32>>,
}

pub(super) struct Qsparse {
    compressor: Compressor,
    /// The global model this node last synchronised to.
    reference: Vec<f32>,
    delta: Vec<f32>,
    trigger: Trigger,
    n: usize,
    stats: NodeStats,
}

enum Trigger {
    Sync {
        h: u64,
        rounds: u64,
        reducer: Arc<Reducer>,
    },
    Async {
        schedule: Schedule,
        rng: Box<StdRng>,
        master: Arc<Master>,
    },
}

pub(super) fn nodes(
    algo: Algo,
    cfg: &Resolved,
    mut models: Vec<FlatModel>,
    dim: usize,
    clock: Option<&Arc<VirtualClock>>,
) -> Result<Vec<(FlatModel, Qsparse)>, TrainError> {
    let n = models.len();
    let init = models.first_mut().map(|m| m.params()).unwrap_or_default();
    // Every node receives the n - 1 others' compressed progress (an all-gather).
    let payload = cfg.quant.encoded_len(dim) as u64;
    let reducer = Arc::new(Reducer::new(n, dim, clock, |link| {
        (n as f64 - 1.0) * (link.latency_seconds + link.wire_seconds(payload))
    }));
    let master = Arc::new(Master {
        model: Mutex::new(init.clone()),
    });
    let h = period(cfg.local_steps);
    models
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let codec = cfg
                .quant
                .build(cfg.raw.seed ^ (0x95 + i as u64))
                .map_err(|e| TrainError::Config(format!("quant: {e}")))?;
            let trigger = if algo == Algo::QsparseAsync {
                let mut rng = StdRng::seed_from_u64(cfg.raw.seed ^ (0x9A00 + i as u64));
                let schedule = Schedule::new(LocalSteps::Geometric(h as f64), &mut rng)?;
                Trigger::Async {
                    schedule,
                    rng: Box::new(rng),
                    master: Arc::clone(&master),
                }
            } else {
                Trigger::Sync {
                    h,
                    rounds: 0,
                    reducer: Arc::clone(&reducer),
                }
            };
            let node = Qsparse {
                compressor: Compressor::new(codec, true),
                reference: init.clone(),
                delta: vec![0.0; dim],
                trigger,
                n,
                stats: NodeStats::default(),
            };
            Ok((m, node))
        })
        .collect()
}

impl NodeAlgo for Qsparse {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        self.stats.local_steps += 1;
        let due = match &mut self.trigger {
            Trigger::Sync { h, .. } => self.stats.local_steps % *h == 0,
            Trigger::Async { schedule, rng, .. } => schedule.on_local_step(rng.as_mut()),
        };
        if !due {
            return Ok(());
        }
        let (delta, reference) = (&mut self.delta, &self.reference);
        model.with_params_mut(|p| {
            for ((d, x), r) in delta.iter_mut().zip(p.iter()).zip(reference) {
                *d = x - r;
            }
        });
        let payload = self.compressor.compress(&mut self.delta)?;
        let dim = self.delta.len();
        match &mut self.trigger {
            Trigger::Sync {
                rounds, reducer, ..
            } => {
                reducer.allreduce(*rounds, &mut self.delta)?;
                *rounds += 1;
                for (r, d) in self.reference.iter_mut().zip(&self.delta) {
                    *r += d;
                }
                let peers = self.n as u64 - 1;
                self.stats.bytes_written += peers * payload;
                self.stats.messages += peers;
            }
            Trigger::Async { master, .. } => {
                let scale = 1.0 / self.n as f32;
                let mut global = master.model.lock().unwrap_or_else(|e| e.into_inner());
                for (g, d) in global.iter_mut().zip(&self.delta) {
                    *g += scale * d;
                }
                self.reference.copy_from_slice(&global);
                drop(global);
                self.stats.bytes_written += payload;
                self.stats.bytes_read += model_bytes(dim);
                self.stats.messages += 2;
            }
        }
        let reference = &self.reference;
        model.with_params_mut(|p| p.copy_from_slice(reference));
        self.stats.interactions += 1;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        self.stats.clone()
    }
}
