//! One SwarmSGD node driven over a [`Transport`]: the runtime used by the trainer's threads and
//! processes.

use std::collections::BTreeSet;

use quant::{Codec, IdentityCodec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::algorithm::{
    all_finite_le, average_into, average_into_le, fold_correction, fold_correction_le, le_bytes,
    le_values, linf_distance, pairwise_average, pairwise_average_le,
};
use crate::transport::{Completion, OpId, ReadOutcome, Transport, WriteOutcome};
use crate::{Interaction, LocalSteps, NodeId, Schedule, SwarmError, TransportError};

/// What a node did, for metrics and for the tests' accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// Local SGD steps taken.
    pub local_steps: u64,
    /// Interactions completed (a peer's model was averaged in).
    pub interactions: u64,
    /// Interactions skipped because the peer had not published yet.
    pub skipped_unpublished: u64,
    /// Interactions skipped because every copy of the peer's model was torn.
    pub skipped_torn: u64,
    /// Interactions skipped because the peer was unreachable.
    pub skipped_unreachable: u64,
    /// Quantized reads whose decode failed its integrity check and were redone at full precision.
    pub decode_fallbacks: u64,
    /// Peer models rejected because they held non-finite values.
    pub rejected_non_finite: u64,
    /// Peer models and corrections rejected because they lay further from this node's model than
    /// the configured limit ([`SwarmNode::with_max_peer_distance`]).
    pub rejected_absurd: u64,
    /// Peer models read consistently (each moves the encoded model; a failed decode then also
    /// moves the full-precision copy).
    pub models_read: u64,
    /// Bytes this node pulled from peers' windows.
    pub bytes_read: u64,
    /// Bytes this node wrote into peers' inboxes.
    pub bytes_written: u64,
    /// Corrections from peers folded into this node's model.
    pub corrections_folded: u64,
    /// Pairwise interactions skipped because the peer had not yet folded this node's previous
    /// correction.
    pub skipped_busy: u64,
    /// Messages this node put on the network that moved data: model reads (including
    /// full-precision re-reads after a failed decode) and correction writes. The network-time
    /// model charges one latency per message.
    pub messages: u64,
}

impl NodeStats {
    /// Bytes that crossed the network on this node's initiative (reads plus writes).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}

/// A SwarmSGD node: schedule, codec, and the buffers it needs to average with peers.
///
/// The model itself stays with the caller (a flat `&mut [f32]`). The caller's loop is:
/// [`SwarmNode::publish`] once at start; then per step: [`SwarmNode::step_boundary`], a local SGD
/// step, [`SwarmNode::after_local_step`]. Once every node has stopped, one last
/// [`SwarmNode::step_boundary`] per node folds the corrections still in flight.
///
/// Wire layout of the published window: with full precision, the model as raw little-endian f32
/// (no encode or decode pass); with a quantizing codec, the encoded model, zero padding to 8 bytes,
/// then the raw model as the fallback for a failed decode. Pairwise corrections are raw f32.
pub struct SwarmNode<T: Transport> {
    transport: T,
    neighbours: Vec<NodeId>,
    interaction: Interaction,
    schedule: Schedule,
    rng: StdRng,
    codec: Box<dyn Codec>,
    dim: usize,
    /// Bytes of the model at the start of the payload: encoded, or raw f32 (4 * dim).
    encoded_len: usize,
    /// Whether the codec quantizes (the payload then also carries the raw model).
    quantized: bool,
    encoded: Vec<u8>,
    payload: Vec<u8>,
    read_buf: Vec<u8>,
    /// The decoded peer model (quantized reads; raw reads are averaged straight from `read_buf`).
    peer_model: Vec<f32>,
    correction: Vec<f32>,
    /// Encodes pairwise corrections (relative to zero); `None` sends them as raw f32.
    correction_codec: Option<Box<dyn Codec>>,
    correction_bytes: Vec<u8>,
    /// The correction as the partner will decode it.
    correction_decoded: Vec<f32>,
    zeros: Vec<f32>,
    unreachable: BTreeSet<NodeId>,
    max_peer_distance: Option<f32>,
    stats: NodeStats,
}

impl<T: Transport> SwarmNode<T> {
    /// A node of dimension `dim` (model length) with the given neighbours.
    pub fn new(
        transport: T,
        neighbours: Vec<NodeId>,
        dim: usize,
        interaction: Interaction,
        local_steps: LocalSteps,
        mut codec: Box<dyn Codec>,
        seed: u64,
    ) -> Result<Self, SwarmError> {
        if interaction == Interaction::Blocking {
            return Err(SwarmError::Config(
                "blocking averaging needs both nodes to stop together; it is the simulator's \
                 reference semantics, not a mode of one-sided transports: use pull or pairwise"
                    .into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(
            seed ^ (transport.node() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let schedule = Schedule::new(local_steps, &mut rng)?;
        let quantized = codec.name() != IdentityCodec.name();
        let mut encoded = Vec::new();
        codec.encode(&vec![0.0; dim], &mut encoded)?;
        let encoded_len = if quantized { encoded.len() } else { 4 * dim };
        let needed = if quantized {
            encoded_len.div_ceil(8) * 8 + 4 * dim
        } else {
            4 * dim
        };
        if needed > transport.capacity() {
            let capacity = transport.capacity();
            return Err(TransportError::TooLarge {
                len: needed,
                capacity,
            }
            .into());
        }
        Ok(SwarmNode {
            transport,
            neighbours,
            interaction,
            schedule,
            rng,
            codec,
            dim,
            encoded_len,
            quantized,
            encoded,
            payload: Vec::new(),
            read_buf: Vec::new(),
            peer_model: vec![0.0; dim],
            correction: vec![0.0; dim],
            correction_codec: None,
            correction_bytes: Vec::new(),
            correction_decoded: Vec::new(),
            zeros: Vec::new(),
            unreachable: BTreeSet::new(),
            max_peer_distance: None,
            stats: NodeStats::default(),
        })
    }

    /// Sends pairwise corrections encoded with `codec` (decoded relative to a zero vector) instead
    /// of raw f32. The sum of models stays exactly conserved: this node subtracts the correction as
    /// the partner will decode it, not the exact one. A codec whose payload would be as large as the
    /// raw correction is not used.
    pub fn with_correction_codec(mut self, mut codec: Box<dyn Codec>) -> Result<Self, SwarmError> {
        self.zeros = vec![0.0; self.dim];
        codec.encode(&self.zeros, &mut self.correction_bytes)?;
        if self.correction_bytes.len() < 4 * self.dim {
            self.correction_decoded = vec![0.0; self.dim];
            self.correction_codec = Some(codec);
        }
        Ok(self)
    }

    /// Rejects a peer model whose largest coordinate-wise distance from this node's model exceeds
    /// `limit`, and an inbox correction with a coordinate larger than `limit / 2` (a correction is
    /// half a difference of models): a peer gone wrong, or a hostile one, cannot drag this node's
    /// model away. Such copies count in [`NodeStats::rejected_absurd`].
    pub fn with_max_peer_distance(mut self, limit: f32) -> Self {
        self.max_peer_distance = Some(limit);
        self
    }

    /// Contacts `peer` again after it was marked unreachable (e.g. it restarted and its new
    /// address was given to the transport). Returns whether it had been unreachable.
    pub fn readmit(&mut self, peer: NodeId) -> bool {
        self.unreachable.remove(&peer)
    }

    /// The transport, e.g. to give it a restarted peer's new address.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.transport.node()
    }

    /// What the node did so far.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Neighbours that failed and are no longer contacted.
    pub fn unreachable(&self) -> &BTreeSet<NodeId> {
        &self.unreachable
    }

    /// The transport, e.g. to inspect it in tests.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Bytes a window must hold for this node's payload.
    pub fn payload_capacity(&self) -> usize {
        if self.quantized {
            self.full_precision_offset() + 4 * self.dim
        } else {
            4 * self.dim
        }
    }

    /// The payload's raw copy starts at this (8-aligned) byte offset (quantized payloads).
    fn full_precision_offset(&self) -> usize {
        self.encoded_len.div_ceil(8) * 8
    }

    /// Encodes `params` and publishes them in this node's window.
    pub fn publish(&mut self, params: &[f32]) -> Result<(), SwarmError> {
        self.check_len(params)?;
        if !self.quantized {
            self.transport.publish(&le_bytes(params))?;
            return Ok(());
        }
        self.codec.encode(params, &mut self.encoded)?;
        self.payload.clear();
        self.payload.extend_from_slice(&self.encoded);
        self.payload.resize(self.full_precision_offset(), 0);
        self.payload.extend_from_slice(&le_bytes(params));
        self.transport.publish(&self.payload)?;
        Ok(())
    }

    /// Folds every correction waiting in the inbox into `params` and, if there was any, republishes
    /// before freeing the slots. Call before each local step.
    pub fn step_boundary(&mut self, params: &mut [f32]) -> Result<usize, SwarmError> {
        self.check_len(params)?;
        let mut folded = 0u64;
        let mut rejected = 0u64;
        let mut absurd = 0u64;
        let raw_len = 4 * self.dim;
        let half_limit = self.max_peer_distance.map(|d| d / 2.0);
        let within = |values: &mut dyn Iterator<Item = f32>| {
            half_limit.is_none_or(|limit| values.fold(true, |ok, v| ok & (v.abs() <= limit)))
        };
        let (codec, zeros, decoded) = (
            &self.correction_codec,
            &self.zeros,
            &mut self.correction_decoded,
        );
        let taken = self.transport.take_inbox(&mut |_writer, bytes| {
            // Some(true): folded; Some(false): finite but too far (absurd); None: unusable.
            let verdict = if bytes.len() == raw_len {
                all_finite_le(bytes).then(|| {
                    let near = within(&mut le_values(bytes));
                    if near {
                        fold_correction_le(params, bytes);
                    }
                    near
                })
            } else if let Some(codec) = codec {
                (matches!(codec.decode(bytes, zeros, decoded), Ok(r) if r.is_ok())
                    && decoded.iter().all(|v| v.is_finite()))
                .then(|| {
                    let near = within(&mut decoded.iter().copied());
                    if near {
                        fold_correction(params, decoded);
                    }
                    near
                })
            } else {
                None
            };
            match verdict {
                Some(true) => folded += 1,
                Some(false) => absurd += 1,
                None => rejected += 1,
            }
        })?;
        if taken > 0 {
            if folded > 0 {
                self.publish(params)?;
            }
            self.transport.release_inbox()?;
        }
        self.stats.corrections_folded += folded;
        self.stats.rejected_non_finite += rejected;
        self.stats.rejected_absurd += absurd;
        Ok(folded as usize)
    }

    /// Records one local step; when the schedule says so, averages with a random neighbour and
    /// republishes. Returns the peer averaged with, if any.
    pub fn after_local_step(&mut self, params: &mut [f32]) -> Result<Option<NodeId>, SwarmError> {
        self.stats.local_steps += 1;
        if !self.schedule.on_local_step(&mut self.rng) {
            return Ok(None);
        }
        let reachable: Vec<NodeId> = self
            .neighbours
            .iter()
            .copied()
            .filter(|p| !self.unreachable.contains(p))
            .collect();
        let Some(peer) = Schedule::pick_neighbour(&reachable, &mut self.rng) else {
            return Ok(None);
        };
        let averaged = self.interact_with(peer, params)?;
        Ok(averaged.then_some(peer))
    }

    /// Averages `params` with `peer`'s published model (and, for pairwise, deposits the correction
    /// into its inbox), then republishes. Returns false when the interaction was skipped.
    pub fn interact_with(&mut self, peer: NodeId, params: &mut [f32]) -> Result<bool, SwarmError> {
        self.check_len(params)?;
        if self.interaction == Interaction::Pairwise {
            match self.transport.slot_free_at(peer) {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.skipped_busy += 1;
                    return Ok(false);
                }
                Err(e) => {
                    self.mark_unreachable(peer, e);
                    return Ok(false);
                }
            }
        }
        match self.read_peer(peer, params) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(SwarmError::Transport(e)) => {
                self.mark_unreachable(peer, e);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let raw = !self.quantized;
        if !raw {
            // Only quantizing codecs adapt their step to the distance between models.
            let distance = linf_distance(params, &self.peer_model);
            self.codec.observe_distance(distance);
        }
        match self.interaction {
            Interaction::Pull if raw => average_into_le(params, &self.read_buf),
            Interaction::Pull => average_into(params, &self.peer_model),
            Interaction::Pairwise => {
                if raw {
                    pairwise_average_le(params, &self.read_buf, &mut self.correction);
                } else {
                    pairwise_average(params, &self.peer_model, &mut self.correction);
                }
                if !self.deposit_correction(peer, params)? {
                    // Not delivered: undo our half so that the sum of models stays conserved.
                    fold_correction(params, &self.correction);
                    return Ok(false);
                }
            }
            Interaction::Blocking => unreachable!("rejected in SwarmNode::new"),
        }
        self.stats.interactions += 1;
        self.publish(params)?;
        Ok(true)
    }

    /// Writes `self.correction` into `peer`'s inbox, encoded if a correction codec is set (then
    /// `params` and `self.correction` are adjusted to the decoded correction, so that the sum of
    /// models stays exact). Returns whether it was delivered.
    fn deposit_correction(&mut self, peer: NodeId, params: &mut [f32]) -> Result<bool, SwarmError> {
        let mut encoded = false;
        if let Some(codec) = &mut self.correction_codec {
            codec.observe_distance(linf_distance(&self.correction, &self.zeros));
            codec.encode(&self.correction, &mut self.correction_bytes)?;
            let report = codec.decode(
                &self.correction_bytes,
                &self.zeros,
                &mut self.correction_decoded,
            );
            if matches!(report, Ok(r) if r.is_ok())
                && self.correction_decoded.iter().all(|v| v.is_finite())
            {
                for ((x, c), d) in params
                    .iter_mut()
                    .zip(&self.correction)
                    .zip(&self.correction_decoded)
                {
                    *x += c - d;
                }
                self.correction.copy_from_slice(&self.correction_decoded);
                encoded = true;
            }
        }
        let payload: &[u8] = if encoded {
            &self.correction_bytes
        } else {
            &le_bytes(&self.correction)
        };
        let payload_len = payload.len() as u64;
        let started = self.transport.start_write(peer, payload);
        let op = match started {
            Ok(op) => op,
            Err(e) => {
                self.mark_unreachable(peer, e);
                return Ok(false);
            }
        };
        match self.wait(op) {
            Completion::Write {
                result: Ok(WriteOutcome::Delivered),
                ..
            } => {
                self.stats.bytes_written += payload_len;
                self.stats.messages += 1;
                Ok(true)
            }
            Completion::Write {
                result: Ok(WriteOutcome::SlotBusy),
                ..
            } => {
                self.stats.skipped_busy += 1;
                Ok(false)
            }
            Completion::Write { result: Err(e), .. } => {
                self.mark_unreachable(peer, e);
                Ok(false)
            }
            Completion::Read { .. } => unreachable!("wait returns the completion of its own op"),
        }
    }

    fn mark_unreachable(&mut self, peer: NodeId, _why: TransportError) {
        self.unreachable.insert(peer);
        self.stats.skipped_unreachable += 1;
    }

    /// Reads `peer`'s model: raw into `self.read_buf`, or decoded into `self.peer_model`.
    /// Ok(false): skipped (not published, torn, or not finite).
    fn read_peer(&mut self, peer: NodeId, reference: &[f32]) -> Result<bool, SwarmError> {
        if self.read(peer, 0, self.encoded_len)?.is_none() {
            return Ok(false);
        }
        self.stats.bytes_read += self.encoded_len as u64;
        self.stats.models_read += 1;
        self.stats.messages += 1;
        if !self.quantized {
            if !all_finite_le(&self.read_buf) {
                self.stats.rejected_non_finite += 1;
                return Ok(false);
            }
            if let Some(limit) = self.max_peer_distance {
                let far = reference
                    .iter()
                    .zip(le_values(&self.read_buf))
                    .any(|(a, b)| (a - b).abs() > limit);
                if far {
                    self.stats.rejected_absurd += 1;
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let report = self
            .codec
            .decode(&self.read_buf, reference, &mut self.peer_model);
        if !matches!(report, Ok(r) if r.is_ok()) {
            self.stats.decode_fallbacks += 1;
            let offset = self.full_precision_offset();
            if self.read(peer, offset, 4 * self.dim)?.is_none() {
                return Ok(false);
            }
            self.stats.bytes_read += 4 * self.dim as u64;
            self.stats.messages += 1;
            for (v, x) in self.peer_model.iter_mut().zip(le_values(&self.read_buf)) {
                *v = x;
            }
        }
        if !self.peer_model.iter().all(|v| v.is_finite()) {
            self.stats.rejected_non_finite += 1;
            return Ok(false);
        }
        if let Some(limit) = self.max_peer_distance {
            if linf_distance(reference, &self.peer_model) > limit {
                self.stats.rejected_absurd += 1;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One read into `self.read_buf`; Ok(None) if the peer has not published or the copy was torn.
    fn read(&mut self, peer: NodeId, offset: usize, len: usize) -> Result<Option<u64>, SwarmError> {
        let buf = std::mem::take(&mut self.read_buf);
        let op = self.transport.start_read(peer, offset, len, buf)?;
        match self.wait(op) {
            Completion::Read { buf, result, .. } => {
                self.read_buf = buf;
                match result? {
                    ReadOutcome::Model { version } => Ok(Some(version)),
                    ReadOutcome::NotPublished => {
                        self.stats.skipped_unpublished += 1;
                        Ok(None)
                    }
                    ReadOutcome::Torn => {
                        self.stats.skipped_torn += 1;
                        Ok(None)
                    }
                }
            }
            Completion::Write { .. } => unreachable!("wait returns the completion of its own op"),
        }
    }

    /// Polls until `op` completes. Operations are issued one at a time, so no other completion
    /// can be pending.
    fn wait(&mut self, op: OpId) -> Completion {
        let mut polls = 0u32;
        loop {
            if let Some(c) = self.transport.poll() {
                if c.op() == op {
                    return c;
                }
            }
            // Spin briefly for fast (in-process, RDMA) completions, then leave the core to others:
            // networked operations take far longer than a spin, and processes may share cores.
            polls = polls.saturating_add(1);
            if polls < 1024 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn check_len(&self, params: &[f32]) -> Result<(), SwarmError> {
        if params.len() == self.dim {
            Ok(())
        } else {
            Err(SwarmError::Config(format!(
                "model has {} parameters but the node was built for {}",
                params.len(),
                self.dim
            )))
        }
    }
}
