//! A deterministic, single-threaded simulator of SwarmSGD: the ground truth for tests and the tool
//! for large-n studies on synthetic objectives.
//!
//! Time advances in events. At each event a uniformly random node is activated: it folds its pending
//! inbox corrections, takes one local gradient step, and, when its schedule says so, interacts with a
//! uniformly random neighbour. Published copies and inbox slots behave as over a real transport:
//! a peer reads the copy published at the end of the node's last interaction (or at start), and a
//! pairwise correction waits in the partner's slot until the partner's next activation.

use std::collections::BTreeMap;

use quant::{Codec, IdentityCodec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::algorithm::{average_into, fold_correction, linf_distance, pairwise_average, spread};
use crate::{Interaction, LocalSteps, NodeId, Objective, Schedule, SwarmError};

/// Settings of a simulation.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Averaging variant.
    pub interaction: Interaction,
    /// Local steps between interactions.
    pub local_steps: LocalSteps,
    /// Learning rate of the local steps (0 for pure averaging).
    pub lr: f32,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Counters of a simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events (node activations) so far.
    pub events: u64,
    /// Local steps taken by all nodes.
    pub local_steps: u64,
    /// Interactions performed.
    pub interactions: u64,
    /// Interactions with a peer that had not published yet (skipped).
    pub skipped_unpublished: u64,
    /// Pairwise interactions skipped because the peer had not folded the previous correction.
    pub skipped_busy: u64,
    /// Quantized decodes that failed their check and fell back to full precision.
    pub decode_fallbacks: u64,
    /// Bytes of encoded models read, plus bytes of corrections written.
    pub bytes: u64,
}

/// The simulator. See the module documentation for its event model.
pub struct Simulator<O: Objective> {
    neighbours: Vec<Vec<NodeId>>,
    objective: O,
    cfg: SimConfig,
    rng: StdRng,
    models: Vec<Vec<f32>>,
    schedules: Vec<Schedule>,
    codecs: Vec<Box<dyn Codec>>,
    /// Encoded published copy and its full-precision twin, per node (None: never published).
    published: Vec<Option<(Vec<u8>, Vec<f32>)>>,
    /// `slots[j][i]`: the correction node i deposited at node j, not yet folded.
    slots: Vec<BTreeMap<NodeId, Vec<f32>>>,
    stats: SimStats,
}

impl<O: Objective> Simulator<O> {
    /// A simulation where every node starts from `init` and publishes it. Uses full-precision
    /// averaging; see [`Simulator::with_codecs`].
    pub fn new(
        neighbours: Vec<Vec<NodeId>>,
        objective: O,
        cfg: SimConfig,
        init: Vec<f32>,
    ) -> Result<Self, SwarmError> {
        let models = vec![init; neighbours.len()];
        Self::with_models(neighbours, objective, cfg, models)
    }

    /// A simulation from given per-node starting models (all published at start).
    pub fn with_models(
        neighbours: Vec<Vec<NodeId>>,
        objective: O,
        cfg: SimConfig,
        models: Vec<Vec<f32>>,
    ) -> Result<Self, SwarmError> {
        let n = neighbours.len();
        if n == 0 || models.len() != n || objective.nodes() != n {
            return Err(SwarmError::Config(format!(
                "graph has {n} nodes, {} starting models and the objective {} shards: they must agree and be >= 1",
                models.len(),
                objective.nodes()
            )));
        }
        if models.iter().any(|m| m.len() != objective.dim()) {
            return Err(SwarmError::Config(format!(
                "every starting model must have the objective's dimension {}",
                objective.dim()
            )));
        }
        for (i, list) in neighbours.iter().enumerate() {
            if list
                .iter()
                .any(|&j| j >= n || j == i || !neighbours[j].contains(&i))
            {
                return Err(SwarmError::Config(format!(
                    "adjacency of node {i} is not part of an undirected simple graph on {n} nodes"
                )));
            }
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let schedules = (0..n)
            .map(|_| Schedule::new(cfg.local_steps, &mut rng))
            .collect::<Result<_, _>>()?;
        let codecs = (0..n)
            .map(|_| Box::new(IdentityCodec) as Box<dyn Codec>)
            .collect();
        let mut sim = Simulator {
            neighbours,
            objective,
            cfg,
            rng,
            models,
            schedules,
            codecs,
            published: vec![None; n],
            slots: vec![BTreeMap::new(); n],
            stats: SimStats::default(),
        };
        for i in 0..n {
            sim.publish(i)?;
        }
        Ok(sim)
    }

    /// Replaces every node's codec (one per node, e.g. built from the same spec) and republishes.
    pub fn with_codecs(mut self, codecs: Vec<Box<dyn Codec>>) -> Result<Self, SwarmError> {
        if codecs.len() != self.models.len() {
            return Err(SwarmError::Config("one codec per node is needed".into()));
        }
        self.codecs = codecs;
        for i in 0..self.models.len() {
            self.publish(i)?;
        }
        Ok(self)
    }

    /// Marks node `i` as never having published (to test the not-yet-published rule).
    pub fn unpublish(&mut self, i: NodeId) {
        if let Some(p) = self.published.get_mut(i) {
            *p = None;
        }
    }

    /// The nodes' current models.
    pub fn models(&self) -> &[Vec<f32>] {
        &self.models
    }

    /// The objective.
    pub fn objective(&self) -> &O {
        &self.objective
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Sum over nodes of the squared distance to the mean model.
    pub fn spread(&self) -> f64 {
        spread(self.models.iter().map(|m| m.as_slice()))
    }

    /// The mean of the nodes' models, plus the corrections still in flight in inbox slots: the
    /// quantity pairwise averaging conserves.
    pub fn mean_with_pending(&self) -> Vec<f64> {
        let n = self.models.len() as f64;
        let mut mean = vec![0.0f64; self.objective.dim()];
        let pending = self.slots.iter().flat_map(|m| m.values());
        for v in self.models.iter().chain(pending) {
            for (s, x) in mean.iter_mut().zip(v) {
                *s += f64::from(*x) / n;
            }
        }
        mean
    }

    /// The largest Euclidean distance from any node's model to `target`.
    pub fn max_distance_to(&self, target: &[f32]) -> f64 {
        self.models
            .iter()
            .map(|m| {
                m.iter()
                    .zip(target)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(0.0, f64::max)
    }

    /// Runs `events` activations.
    pub fn run(&mut self, events: u64) -> Result<(), SwarmError> {
        for _ in 0..events {
            let i = self.rng.random_range(0..self.models.len());
            self.activate(i)?;
        }
        Ok(())
    }

    /// Activates node `i` once: fold inbox, one local step, maybe one interaction.
    pub fn activate(&mut self, i: NodeId) -> Result<(), SwarmError> {
        self.stats.events += 1;
        self.fold_inbox(i)?;
        if self.cfg.lr != 0.0 {
            self.objective
                .step(i, &mut self.models[i], self.cfg.lr, &mut self.rng);
        }
        self.stats.local_steps += 1;
        if self.schedules[i].on_local_step(&mut self.rng) {
            if let Some(j) = Schedule::pick_neighbour(&self.neighbours[i], &mut self.rng) {
                self.interact(i, j)?;
            }
        }
        Ok(())
    }

    /// Performs one interaction of `i` with its neighbour `j` now, with the configured variant.
    pub fn interact(&mut self, i: NodeId, j: NodeId) -> Result<(), SwarmError> {
        match self.cfg.interaction {
            Interaction::Blocking => {
                self.fold_inbox(j)?;
                // Both stop and exchange their current models.
                let xi = self.models[i].clone();
                let xj = self.models[j].clone();
                let from_j = self.decode_current(i, j, &xj)?;
                let from_i = self.decode_current(j, i, &xi)?;
                average_into(&mut self.models[i], &from_j);
                average_into(&mut self.models[j], &from_i);
                self.publish(i)?;
                self.publish(j)?;
            }
            Interaction::Pull | Interaction::Pairwise => {
                if self.cfg.interaction == Interaction::Pairwise && self.slots[j].contains_key(&i) {
                    self.stats.skipped_busy += 1;
                    return Ok(());
                }
                let Some(peer) = self.read_published(i, j) else {
                    self.stats.skipped_unpublished += 1;
                    return Ok(());
                };
                if self.cfg.interaction == Interaction::Pull {
                    average_into(&mut self.models[i], &peer);
                } else {
                    let mut correction = vec![0.0; peer.len()];
                    pairwise_average(&mut self.models[i], &peer, &mut correction);
                    self.stats.bytes += 8 + 4 * correction.len() as u64;
                    self.slots[j].insert(i, correction);
                }
                self.publish(i)?;
            }
        }
        self.stats.interactions += 1;
        Ok(())
    }

    /// Folds every correction still in flight (as every node does at its next activation).
    pub fn settle(&mut self) -> Result<(), SwarmError> {
        for j in 0..self.models.len() {
            self.fold_inbox(j)?;
        }
        Ok(())
    }

    /// Node `j` folds its pending corrections and republishes, which frees the slots.
    fn fold_inbox(&mut self, j: NodeId) -> Result<(), SwarmError> {
        if self.slots[j].is_empty() {
            return Ok(());
        }
        let slots = std::mem::take(&mut self.slots[j]);
        for c in slots.values() {
            fold_correction(&mut self.models[j], c);
        }
        self.publish(j)
    }

    fn publish(&mut self, i: NodeId) -> Result<(), SwarmError> {
        let mut encoded = Vec::new();
        self.codecs[i].encode(&self.models[i], &mut encoded)?;
        self.published[i] = Some((encoded, self.models[i].clone()));
        Ok(())
    }

    /// What `reader` decodes from `owner`'s published copy, relative to its own model.
    fn read_published(&mut self, reader: NodeId, owner: NodeId) -> Option<Vec<f32>> {
        let (encoded, full) = self.published[owner].as_ref()?;
        Some(decode_or_fall_back(
            self.codecs[reader].as_mut(),
            &self.models[reader],
            encoded,
            full,
            &mut self.stats,
        ))
    }

    /// What `reader` decodes from `owner`'s current model `x`, exchanged at this moment.
    fn decode_current(
        &mut self,
        reader: NodeId,
        owner: NodeId,
        x: &[f32],
    ) -> Result<Vec<f32>, SwarmError> {
        let mut encoded = Vec::new();
        self.codecs[owner].encode(x, &mut encoded)?;
        Ok(decode_or_fall_back(
            self.codecs[reader].as_mut(),
            &self.models[reader],
            &encoded,
            x,
            &mut self.stats,
        ))
    }
}

/// Decodes `encoded` relative to the reader's `reference`; a decode that fails its check is
/// replaced by the full-precision copy `full` (and its bytes counted). The reader's codec then
/// observes the distance to what was read.
fn decode_or_fall_back(
    codec: &mut dyn Codec,
    reference: &[f32],
    encoded: &[u8],
    full: &[f32],
    stats: &mut SimStats,
) -> Vec<f32> {
    let mut out = vec![0.0; full.len()];
    stats.bytes += encoded.len() as u64;
    if !matches!(codec.decode(encoded, reference, &mut out), Ok(r) if r.is_ok()) {
        stats.decode_fallbacks += 1;
        stats.bytes += 4 * full.len() as u64;
        out.copy_from_slice(full);
    }
    codec.observe_distance(linf_distance(reference, &out));
    out
}
