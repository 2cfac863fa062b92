//! A deterministic, single-threaded simulator of SwarmSGD: the ground truth for tests and the tool
//! for large-n studies on synthetic objectives.
//!
//! Time advances in events. At each event a uniformly random node is activated: it folds its pending
//! inbox corrections, takes one local gradient step, and, when its schedule says so, interacts with a
//! uniformly random neighbour. Published copies and inbox slots behave as over a real transport:
//! a peer reads the copy published at the end of the node's last interaction (or at start), and a
//! pairwise correction waits in the partner's slot until the partner's next activation.

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
///
/// The hot path allocates nothing: models, published copies and corrections live in buffers that
/// are reused, and with full-precision averaging (no codec set, or only `none` codecs) a read is a
/// plain copy of the published values, counted as the `8 + 4 d` bytes the identity codec would move.
pub struct Simulator<O: Objective> {
    neighbours: Vec<Vec<NodeId>>,
    objective: O,
    cfg: SimConfig,
    rng: StdRng,
    dim: usize,
    models: Vec<Vec<f32>>,
    schedules: Vec<Schedule>,
    codecs: Vec<Box<dyn Codec>>,
    /// True when every codec is the identity: reads skip encoding and decoding.
    identity: bool,
    /// Full-precision twin of every node's published copy, `n * dim` values.
    published_values: Vec<f32>,
    /// Encoded published copy per node (empty with identity codecs).
    published_bytes: Vec<Vec<u8>>,
    /// Whether node `i` has published (a window never published is not a model).
    published: Vec<bool>,
    /// `slots[j]`: the corrections `(i, c)` node i deposited at node j, not yet folded.
    slots: Vec<Vec<(NodeId, Vec<f32>)>>,
    /// Correction buffers no longer in a slot, for reuse.
    spare: Vec<Vec<f32>>,
    /// What a reader decoded (or, for blocking exchanges, the two models exchanged).
    scratch: [Vec<f32>; 2],
    encode_buf: Vec<u8>,
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
        let dim = objective.dim();
        if models.iter().any(|m| m.len() != dim) {
            return Err(SwarmError::Config(format!(
                "every starting model must have the objective's dimension {dim}"
            )));
        }
        // Sorted copies make the symmetry check O(E log d) instead of O(E d) at large n.
        let sorted: Vec<Vec<NodeId>> = neighbours
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.sort_unstable();
                l
            })
            .collect();
        for (i, list) in neighbours.iter().enumerate() {
            if list
                .iter()
                .any(|&j| j >= n || j == i || sorted[j].binary_search(&i).is_err())
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
            dim,
            models,
            schedules,
            codecs,
            identity: true,
            published_values: vec![0.0; n * dim],
            published_bytes: vec![Vec::new(); n],
            published: vec![false; n],
            slots: vec![Vec::new(); n],
            spare: Vec::new(),
            scratch: [vec![0.0; dim], vec![0.0; dim]],
            encode_buf: Vec::new(),
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
        self.identity = codecs.iter().all(|c| c.name() == "none");
        self.codecs = codecs;
        for i in 0..self.models.len() {
            self.publish(i)?;
        }
        Ok(self)
    }

    /// Marks node `i` as never having published (to test the not-yet-published rule).
    pub fn unpublish(&mut self, i: NodeId) {
        if let Some(p) = self.published.get_mut(i) {
            *p = false;
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
        let mut mean = vec![0.0f64; self.dim];
        let pending = self.slots.iter().flatten().map(|(_, c)| c);
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
        let n = self.models.len();
        for _ in 0..events {
            let i = self.rng.random_range(0..n);
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
                let [mut from_j, mut from_i] = std::mem::take(&mut self.scratch);
                self.decode_current(i, j, &mut from_j)?;
                self.decode_current(j, i, &mut from_i)?;
                average_into(&mut self.models[i], &from_j);
                average_into(&mut self.models[j], &from_i);
                self.scratch = [from_j, from_i];
                self.publish(i)?;
                self.publish(j)?;
            }
            Interaction::Pull | Interaction::Pairwise => {
                let pairwise = self.cfg.interaction == Interaction::Pairwise;
                if pairwise && self.slots[j].iter().any(|(from, _)| *from == i) {
                    self.stats.skipped_busy += 1;
                    return Ok(());
                }
                let [mut peer, other] = std::mem::take(&mut self.scratch);
                let read = self.read_published(i, j, &mut peer);
                if !read {
                    self.scratch = [peer, other];
                    self.stats.skipped_unpublished += 1;
                    return Ok(());
                }
                if pairwise {
                    let mut correction = self.spare.pop().unwrap_or_default();
                    correction.resize(self.dim, 0.0);
                    pairwise_average(&mut self.models[i], &peer, &mut correction);
                    self.stats.bytes += 8 + 4 * correction.len() as u64;
                    self.slots[j].push((i, correction));
                } else {
                    average_into(&mut self.models[i], &peer);
                }
                self.scratch = [peer, other];
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
        let mut slots = std::mem::take(&mut self.slots[j]);
        for (_, c) in slots.drain(..) {
            fold_correction(&mut self.models[j], &c);
            self.spare.push(c);
        }
        self.slots[j] = slots;
        self.publish(j)
    }

    fn publish(&mut self, i: NodeId) -> Result<(), SwarmError> {
        let d = self.dim;
        self.published_values[i * d..(i + 1) * d].copy_from_slice(&self.models[i]);
        if !self.identity {
            self.codecs[i].encode(&self.models[i], &mut self.published_bytes[i])?;
        }
        self.published[i] = true;
        Ok(())
    }

    /// What `reader` decodes from `owner`'s published copy, relative to its own model, into
    /// `out`; false when `owner` never published.
    fn read_published(&mut self, reader: NodeId, owner: NodeId, out: &mut [f32]) -> bool {
        if !self.published[owner] {
            return false;
        }
        let d = self.dim;
        let full = &self.published_values[owner * d..(owner + 1) * d];
        if self.identity {
            out.copy_from_slice(full);
            self.stats.bytes += 8 + 4 * d as u64;
        } else {
            decode_or_fall_back(
                self.codecs[reader].as_mut(),
                &self.models[reader],
                &self.published_bytes[owner],
                full,
                out,
                &mut self.stats,
            );
        }
        true
    }

    /// What `reader` decodes from `owner`'s current model, exchanged at this moment, into `out`.
    fn decode_current(
        &mut self,
        reader: NodeId,
        owner: NodeId,
        out: &mut [f32],
    ) -> Result<(), SwarmError> {
        if self.identity {
            out.copy_from_slice(&self.models[owner]);
            self.stats.bytes += 8 + 4 * self.dim as u64;
            return Ok(());
        }
        self.codecs[owner].encode(&self.models[owner], &mut self.encode_buf)?;
        decode_or_fall_back(
            self.codecs[reader].as_mut(),
            &self.models[reader],
            &self.encode_buf,
            &self.models[owner],
            out,
            &mut self.stats,
        );
        Ok(())
    }
}

/// Decodes `encoded` relative to the reader's `reference` into `out`; a decode that fails its
/// check is replaced by the full-precision copy `full` (and its bytes counted). The reader's codec
/// then observes the distance to what was read.
fn decode_or_fall_back(
    codec: &mut dyn Codec,
    reference: &[f32],
    encoded: &[u8],
    full: &[f32],
    out: &mut [f32],
    stats: &mut SimStats,
) {
    stats.bytes += encoded.len() as u64;
    if !matches!(codec.decode(encoded, reference, out), Ok(r) if r.is_ok()) {
        stats.decode_fallbacks += 1;
        stats.bytes += 4 * full.len() as u64;
        out.copy_from_slice(full);
    }
    codec.observe_distance(linf_distance(reference, out));
}
