//! One SwarmSGD node driven over a [`Transport`]: the runtime used by the trainer's threads and
//! processes.
//!
//! The node is a state machine that never waits on the network unless asked to
//! ([`Overlap::Off`], [`SwarmNode::drain`]): an interaction starts a one-sided read of the
//! partner's window and returns; the caller keeps taking local steps and calls the node back
//! between steps; when the copy has landed it is averaged into the caller's *current* model (and,
//! for pairwise averaging, the correction computed against that same model is written into the
//! partner's inbox), so the sum of all models stays exact however stale the copy is.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use quant::{Codec, IdentityCodec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::algorithm::{
    average_into, average_publish_le, check_copy_le, check_values_le, fold_correction,
    fold_correction_le, le_bytes, le_values, linf_distance, pairwise_average, Rejected,
};
use crate::transport::{Completion, OpId, ReadOutcome, Transport, WriteOutcome};
use crate::{Interaction, LocalSteps, NodeId, Schedule, SwarmError, TransportError};

/// What a node did, for metrics and for the tests' accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// Local SGD steps taken.
    pub local_steps: u64,
    /// Interactions completed (a peer's model was averaged in and, for pairwise averaging, the
    /// correction delivered).
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
    /// Peer copies averaged into this node's model.
    pub copies_averaged: u64,
    /// Sum over averaged copies of the local steps this node took between starting the read and
    /// averaging the copy in (0 when the read completed before the next step).
    pub staleness_steps_total: u64,
    /// The largest such count.
    pub staleness_steps_max: u64,
    /// How many averaged copies were k local steps stale, at index k; the last index counts
    /// every copy at least [`STALENESS_BUCKETS`]` - 1` steps stale. Empty until a copy is averaged.
    pub staleness_counts: Vec<u64>,
    /// Interactions that fell due while the previous one was still in flight; each started as
    /// soon as the previous one ended.
    pub deferred: u64,
}

/// Buckets of [`NodeStats::staleness_counts`].
pub const STALENESS_BUCKETS: usize = 64;

impl NodeStats {
    /// Bytes that crossed the network on this node's initiative (reads plus writes).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }

    /// Mean local steps by which an averaged copy was stale (0 without averaged copies).
    pub fn mean_staleness(&self) -> f64 {
        if self.copies_averaged == 0 {
            0.0
        } else {
            self.staleness_steps_total as f64 / self.copies_averaged as f64
        }
    }
}

/// Whether a node keeps computing while its interaction is on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Start the read and return; average the copy into the current model once it has landed.
    #[default]
    On,
    /// Wait for every operation of an interaction before the next local step (the behaviour of
    /// earlier versions, kept for comparison).
    Off,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlap::On => "on",
            Overlap::Off => "off",
        })
    }
}

impl FromStr for Overlap {
    type Err = SwarmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Overlap::On),
            "off" => Ok(Overlap::Off),
            other => Err(SwarmError::Config(format!(
                "unknown overlap '{other}': use on or off"
            ))),
        }
    }
}

/// The operation of the interaction in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading the partner's model as published (encoded, or raw f32).
    ReadModel,
    /// Re-reading the raw copy after the encoded one failed to decode.
    ReadFullPrecision,
    /// Writing the pairwise correction into the partner's inbox (`len` bytes).
    WriteCorrection { len: u64 },
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    peer: NodeId,
    op: OpId,
    stage: Stage,
    /// `stats.local_steps` when the interaction started.
    started_at: u64,
}

/// A SwarmSGD node: schedule, codec, and the buffers it needs to average with peers.
///
/// The model itself stays with the caller (a flat `&mut [f32]`). The caller's loop is:
/// [`SwarmNode::publish`] once at start; then per step: [`SwarmNode::step_boundary`], a local SGD
/// step, [`SwarmNode::after_local_step`]. With [`Overlap::On`] (the default) an interaction may
/// still be on the network when these return; [`SwarmNode::drain`] waits for it (call it before
/// handing the model over, e.g. at the end of training). Once every node has stopped and drained,
/// one last [`SwarmNode::step_boundary`] per node folds the corrections still in inboxes.
///
/// Wire layout of the published window: with full precision, the model as raw little-endian f32
/// (no encode or decode pass); with a quantizing codec, the encoded model, zero padding to 8 bytes,
/// then the raw model as the fallback for a failed decode. Pairwise corrections are raw f32 or
/// encoded by the correction codec.
pub struct SwarmNode<T: Transport> {
    transport: T,
    neighbours: Vec<NodeId>,
    interaction: Interaction,
    schedule: Schedule,
    overlap: Overlap,
    rng: StdRng,
    codec: Box<dyn Codec>,
    dim: usize,
    /// Bytes of the model at the start of the payload: encoded, or raw f32 (4 * dim).
    encoded_len: usize,
    /// Whether the codec quantizes (the payload then also carries the raw model).
    quantized: bool,
    encoded: Vec<u8>,
    /// Lent to the transport while a read is in flight.
    read_buf: Vec<u8>,
    /// The decoded peer model (quantized reads; raw reads are averaged straight from `read_buf`).
    peer_model: Vec<f32>,
    /// The correction of the pairwise interaction in flight, as the partner will fold it.
    correction: Vec<f32>,
    /// Encodes pairwise corrections (relative to zero); `None` sends them as raw f32.
    correction_codec: Option<Box<dyn Codec>>,
    correction_bytes: Vec<u8>,
    /// The correction as the partner will decode it.
    correction_decoded: Vec<f32>,
    zeros: Vec<f32>,
    unreachable: BTreeSet<NodeId>,
    max_peer_distance: Option<f32>,
    in_flight: Option<InFlight>,
    /// An interaction fell due while another was in flight.
    due: bool,
    stats: NodeStats,
    /// Calls that wrote the caller's model (see [`SwarmNode::model_writes`]).
    model_writes: u64,
}

impl<T: Transport> SwarmNode<T> {
    /// A node of dimension `dim` (model length) with the given neighbours, overlapping its
    /// interactions with local steps ([`Overlap::On`]).
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
            overlap: Overlap::On,
            rng,
            codec,
            dim,
            encoded_len,
            quantized,
            encoded,
            read_buf: Vec::new(),
            peer_model: vec![0.0; dim],
            correction: vec![0.0; dim],
            correction_codec: None,
            correction_bytes: Vec::new(),
            correction_decoded: Vec::new(),
            zeros: Vec::new(),
            unreachable: BTreeSet::new(),
            max_peer_distance: None,
            in_flight: None,
            due: false,
            stats: NodeStats::default(),
            model_writes: 0,
        })
    }

    /// Whether interactions overlap local steps ([`Overlap::On`], the default) or each one is
    /// waited for ([`Overlap::Off`]).
    pub fn with_overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
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

    /// Counts this node's writes to the caller's model: it grows during every call that changed
    /// `params` (a copy averaged in, a correction folded, a correction taken back), and only then.
    /// A caller whose model lives elsewhere (e.g. on a GPU, staged through a host copy) compares
    /// it before and after a call to know whether the host copy has to go back.
    pub fn model_writes(&self) -> u64 {
        self.model_writes
    }

    /// The transport, e.g. to inspect it in tests.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Whether an interaction is on the network.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The overlap mode.
    pub fn overlap(&self) -> Overlap {
        self.overlap
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
        // Encoded model, zeros up to the raw copy's 8-aligned offset, raw model: written straight
        // into the window.
        let padding = [0u8; 8];
        let raw = le_bytes(params);
        let parts = [
            &self.encoded[..],
            &padding[..self.full_precision_offset() - self.encoded.len()],
            &raw[..],
        ];
        let len = parts.iter().map(|p| p.len()).sum();
        self.transport.publish_with(len, &mut |offset, chunk| {
            fill_from_parts(&parts, offset, chunk)
        })?;
        Ok(())
    }

    /// Folds every correction waiting in the inbox into `params` and, if there was any, republishes
    /// before freeing the slots; then averages in a copy that has landed meanwhile. Call before
    /// each local step. Returns how many corrections were folded.
    pub fn step_boundary(&mut self, params: &mut [f32]) -> Result<usize, SwarmError> {
        self.check_len(params)?;
        let folded = self.fold_inbox(params)?;
        self.progress(params)?;
        Ok(folded)
    }

    fn fold_inbox(&mut self, params: &mut [f32]) -> Result<usize, SwarmError> {
        let mut folded = 0u64;
        let mut rejected = 0u64;
        let mut absurd = 0u64;
        let raw_len = 4 * self.dim;
        let half_limit = self.max_peer_distance.map_or(f32::INFINITY, |d| d / 2.0);
        let (codec, zeros, decoded) = (
            &self.correction_codec,
            &self.zeros,
            &mut self.correction_decoded,
        );
        let taken = self.transport.take_inbox(&mut |_writer, bytes| {
            // Finite and near are checked in one pass over the correction, then it is folded.
            let verdict = if bytes.len() == raw_len {
                check_values_le(bytes, half_limit)
                    .map(|()| fold_correction_le(params, bytes))
                    .into()
            } else if let Some(codec) = codec {
                match codec.decode(bytes, zeros, decoded) {
                    Ok(report) if report.is_ok() => check_values_le(&le_bytes(decoded), half_limit)
                        .map(|()| fold_correction(params, decoded))
                        .into(),
                    _ => FoldVerdict::Unusable,
                }
            } else {
                FoldVerdict::Unusable
            };
            match verdict {
                FoldVerdict::Folded => folded += 1,
                FoldVerdict::TooFar => absurd += 1,
                FoldVerdict::Unusable => rejected += 1,
            }
        })?;
        if taken > 0 {
            if folded > 0 {
                self.model_writes += 1;
                self.publish(params)?;
            }
            self.transport.release_inbox()?;
        }
        self.stats.corrections_folded += folded;
        self.stats.rejected_non_finite += rejected;
        self.stats.rejected_absurd += absurd;
        Ok(folded as usize)
    }

    /// Records one local step; when the schedule says so, starts an interaction with a random
    /// neighbour (or, if one is still in flight, starts it as soon as that one ends). Then
    /// advances what is in flight: with [`Overlap::Off`] it waits for the interaction to end.
    /// The model is published after every step. Returns the peer averaged with during this
    /// call, if any.
    pub fn after_local_step(&mut self, params: &mut [f32]) -> Result<Option<NodeId>, SwarmError> {
        self.check_len(params)?;
        self.stats.local_steps += 1;
        if self.schedule.on_local_step(&mut self.rng) {
            if self.in_flight.is_some() {
                self.due = true;
                self.stats.deferred += 1;
            } else {
                self.start_random()?;
            }
        }
        // A transport that completes at once (in-process) lands the copy before the next step.
        let averaged = self.progress(params)?;
        if averaged.is_none() {
            // Peers read the model as it is now; publishing only at interactions left them a
            // copy up to H - 1 steps old, which cost `pull` accuracy (issue 18). Averaging in a
            // copy republishes by itself.
            self.publish(params)?;
        }
        if self.overlap == Overlap::Off {
            return Ok(self.wait_idle(params)?.or(averaged));
        }
        Ok(averaged)
    }

    /// Advances the interaction in flight without waiting: lands a copy that has arrived
    /// (averaging it into `params` and, for pairwise, starting the correction's write), finishes
    /// a write that completed, and starts an interaction that fell due meanwhile. Returns the peer
    /// averaged with, if a copy was averaged in.
    pub fn progress(&mut self, params: &mut [f32]) -> Result<Option<NodeId>, SwarmError> {
        self.check_len(params)?;
        let mut averaged = None;
        loop {
            if self.in_flight.is_none() {
                if !self.due {
                    return Ok(averaged);
                }
                self.due = false;
                self.start_random()?;
                if self.in_flight.is_none() {
                    return Ok(averaged);
                }
            }
            let Some(completion) = self.transport.poll() else {
                return Ok(averaged);
            };
            if let Some(peer) = self.complete(completion, params)? {
                averaged = Some(peer);
            }
        }
    }

    /// Waits until no interaction is in flight (an interaction that is due but not started is
    /// dropped). Call before handing the model over: afterwards `params` holds every change this
    /// node made, and every correction it owes has been delivered or taken back.
    pub fn drain(&mut self, params: &mut [f32]) -> Result<(), SwarmError> {
        self.due = false;
        self.wait_idle(params).map(|_| ())
    }

    fn wait_idle(&mut self, params: &mut [f32]) -> Result<Option<NodeId>, SwarmError> {
        let mut averaged = None;
        let mut polls = 0u32;
        loop {
            if let Some(peer) = self.progress(params)? {
                averaged = Some(peer);
            }
            if self.in_flight.is_none() {
                break;
            }
            polls = polls.saturating_add(1);
            self.transport.idle(polls);
        }
        Ok(averaged)
    }

    /// Averages `params` with `peer`'s published model (and, for pairwise, deposits the correction
    /// into its inbox), waiting for the whole interaction whatever the overlap mode. Returns false
    /// when the interaction was skipped.
    pub fn interact_with(&mut self, peer: NodeId, params: &mut [f32]) -> Result<bool, SwarmError> {
        self.check_len(params)?;
        self.drain(params)?;
        let before = self.stats.interactions;
        self.start(peer)?;
        self.wait_idle(params)?;
        Ok(self.stats.interactions > before)
    }

    fn start_random(&mut self) -> Result<(), SwarmError> {
        let reachable: Vec<NodeId> = self
            .neighbours
            .iter()
            .copied()
            .filter(|p| !self.unreachable.contains(p))
            .collect();
        match Schedule::pick_neighbour(&reachable, &mut self.rng) {
            Some(peer) => self.start(peer),
            None => Ok(()),
        }
    }

    /// Starts an interaction with `peer`: checks the inbox slot (pairwise), then starts the read.
    fn start(&mut self, peer: NodeId) -> Result<(), SwarmError> {
        debug_assert!(self.in_flight.is_none());
        if self.interaction == Interaction::Pairwise {
            match self.transport.slot_free_at(peer) {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.skipped_busy += 1;
                    return Ok(());
                }
                Err(e) => {
                    self.mark_unreachable(peer, e);
                    return Ok(());
                }
            }
        }
        let started_at = self.stats.local_steps;
        self.start_read(peer, Stage::ReadModel, 0, self.encoded_len, started_at);
        Ok(())
    }

    fn start_read(&mut self, peer: NodeId, stage: Stage, offset: usize, len: usize, at: u64) {
        let buf = std::mem::take(&mut self.read_buf);
        match self.transport.start_read(peer, offset, len, buf) {
            Ok(op) => {
                self.in_flight = Some(InFlight {
                    peer,
                    op,
                    stage,
                    started_at: at,
                })
            }
            Err(e) => self.mark_unreachable(peer, e),
        }
    }

    /// Handles one completion of the interaction in flight. Returns the peer whose copy was
    /// averaged in, if this completion did that.
    fn complete(
        &mut self,
        completion: Completion,
        params: &mut [f32],
    ) -> Result<Option<NodeId>, SwarmError> {
        let Some(flight) = self.in_flight else {
            return Ok(None);
        };
        if completion.op() != flight.op {
            // Not ours (cannot happen with one operation at a time); ignore it.
            return Ok(None);
        }
        self.in_flight = None;
        match completion {
            Completion::Read { buf, result, .. } => {
                self.read_buf = buf;
                self.land_read(flight, result, params)
            }
            Completion::Write { result, .. } => {
                let Stage::WriteCorrection { len } = flight.stage else {
                    return Ok(None);
                };
                match result {
                    Ok(WriteOutcome::Delivered) => {
                        self.stats.bytes_written += len;
                        self.stats.messages += 1;
                        self.stats.interactions += 1;
                    }
                    Ok(WriteOutcome::SlotBusy) => {
                        self.stats.skipped_busy += 1;
                        self.take_back_correction(params)?;
                    }
                    Err(e) => {
                        self.mark_unreachable(flight.peer, e);
                        self.take_back_correction(params)?;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Not delivered: add our half back so that the sum of models stays conserved.
    fn take_back_correction(&mut self, params: &mut [f32]) -> Result<(), SwarmError> {
        fold_correction(params, &self.correction);
        self.model_writes += 1;
        self.publish(params)
    }

    fn land_read(
        &mut self,
        flight: InFlight,
        result: Result<ReadOutcome, TransportError>,
        params: &mut [f32],
    ) -> Result<Option<NodeId>, SwarmError> {
        let peer = flight.peer;
        match result {
            Ok(ReadOutcome::Model { .. }) => {}
            Ok(ReadOutcome::NotPublished) => {
                self.stats.skipped_unpublished += 1;
                return Ok(None);
            }
            Ok(ReadOutcome::Torn) => {
                self.stats.skipped_torn += 1;
                return Ok(None);
            }
            Err(e) => {
                self.mark_unreachable(peer, e);
                return Ok(None);
            }
        }
        self.stats.bytes_read += self.read_buf.len() as u64;
        self.stats.messages += 1;
        if !self.quantized {
            self.stats.models_read += 1;
            return self.average_raw(flight, params);
        }
        match flight.stage {
            Stage::ReadModel => {
                self.stats.models_read += 1;
                let report = self
                    .codec
                    .decode(&self.read_buf, params, &mut self.peer_model);
                if !matches!(report, Ok(r) if r.is_ok()) {
                    self.stats.decode_fallbacks += 1;
                    let offset = self.full_precision_offset();
                    self.start_read(
                        peer,
                        Stage::ReadFullPrecision,
                        offset,
                        4 * self.dim,
                        flight.started_at,
                    );
                    return Ok(None);
                }
            }
            Stage::ReadFullPrecision => {
                for (v, x) in self.peer_model.iter_mut().zip(le_values(&self.read_buf)) {
                    *v = x;
                }
            }
            Stage::WriteCorrection { .. } => return Ok(None),
        }
        self.average_decoded(flight, params)
    }

    /// Checks the raw copy in `read_buf` (finite, within the distance limit), then averages it
    /// into `params` and publishes the result in the same pass; a rejected copy leaves `params`
    /// untouched.
    fn average_raw(
        &mut self,
        flight: InFlight,
        params: &mut [f32],
    ) -> Result<Option<NodeId>, SwarmError> {
        let limit = self.max_peer_distance.unwrap_or(f32::INFINITY);
        if let Err(why) = check_copy_le(params, &self.read_buf, limit) {
            match why {
                Rejected::NonFinite => self.stats.rejected_non_finite += 1,
                Rejected::TooFar => self.stats.rejected_absurd += 1,
            }
            return Ok(None);
        }
        let pairwise = self.interaction == Interaction::Pairwise;
        let (landed, correction) = (&self.read_buf, &mut self.correction);
        self.transport
            .publish_with(landed.len(), &mut |offset, chunk| {
                let (from, to) = (offset / 4, (offset + chunk.len()) / 4);
                average_publish_le(
                    &mut params[from..to],
                    &landed[offset..offset + chunk.len()],
                    chunk,
                    pairwise.then(|| &mut correction[from..to]),
                );
            })?;
        self.after_average(flight, params, true)
    }

    /// Checks and averages the decoded (or fallback) copy in `peer_model` into `params`.
    fn average_decoded(
        &mut self,
        flight: InFlight,
        params: &mut [f32],
    ) -> Result<Option<NodeId>, SwarmError> {
        if !self.peer_model.iter().all(|v| v.is_finite()) {
            self.stats.rejected_non_finite += 1;
            return Ok(None);
        }
        let distance = linf_distance(params, &self.peer_model);
        if self.max_peer_distance.is_some_and(|limit| distance > limit) {
            self.stats.rejected_absurd += 1;
            return Ok(None);
        }
        // Only quantizing codecs adapt their step to the distance between models.
        self.codec.observe_distance(distance);
        match self.interaction {
            Interaction::Pairwise => {
                pairwise_average(params, &self.peer_model, &mut self.correction)
            }
            _ => average_into(params, &self.peer_model),
        }
        self.after_average(flight, params, false)
    }

    /// The copy is averaged in: count its staleness, publish the new model (unless `published`
    /// already, and not changed since), and for pairwise averaging start writing the correction.
    fn after_average(
        &mut self,
        flight: InFlight,
        params: &mut [f32],
        published: bool,
    ) -> Result<Option<NodeId>, SwarmError> {
        let mut changed = !published;
        self.model_writes += 1;
        let stale = self.stats.local_steps - flight.started_at;
        self.stats.copies_averaged += 1;
        self.stats.staleness_steps_total += stale;
        self.stats.staleness_steps_max = self.stats.staleness_steps_max.max(stale);
        let bucket = (stale as usize).min(STALENESS_BUCKETS - 1);
        let counts = &mut self.stats.staleness_counts;
        if counts.len() <= bucket {
            counts.resize(bucket + 1, 0);
        }
        counts[bucket] += 1;
        if self.interaction == Interaction::Pairwise {
            let encoded = self.encode_correction(params);
            changed |= encoded;
            let payload: &[u8] = if encoded {
                &self.correction_bytes
            } else {
                &le_bytes(&self.correction)
            };
            let len = payload.len() as u64;
            match self.transport.start_write(flight.peer, payload) {
                Ok(op) => {
                    self.in_flight = Some(InFlight {
                        op,
                        stage: Stage::WriteCorrection { len },
                        ..flight
                    });
                }
                Err(e) => {
                    self.mark_unreachable(flight.peer, e);
                    fold_correction(params, &self.correction);
                    changed = true;
                }
            }
        } else {
            self.stats.interactions += 1;
        }
        if changed {
            self.publish(params)?;
        }
        Ok(Some(flight.peer))
    }

    /// Encodes `self.correction` with the correction codec, if one is set and the encoded
    /// correction decodes to finite values; then `params` and `self.correction` are adjusted to
    /// the decoded correction, so that the sum of models stays exact. Returns whether the
    /// encoded form (in `self.correction_bytes`) is to be sent.
    fn encode_correction(&mut self, params: &mut [f32]) -> bool {
        let Some(codec) = &mut self.correction_codec else {
            return false;
        };
        codec.observe_distance(linf_distance(&self.correction, &self.zeros));
        if codec
            .encode(&self.correction, &mut self.correction_bytes)
            .is_err()
        {
            return false;
        }
        let report = codec.decode(
            &self.correction_bytes,
            &self.zeros,
            &mut self.correction_decoded,
        );
        if !(matches!(report, Ok(r) if r.is_ok())
            && self.correction_decoded.iter().all(|v| v.is_finite()))
        {
            return false;
        }
        for ((x, c), d) in params
            .iter_mut()
            .zip(&self.correction)
            .zip(&self.correction_decoded)
        {
            *x += c - d;
        }
        self.correction.copy_from_slice(&self.correction_decoded);
        true
    }

    fn mark_unreachable(&mut self, peer: NodeId, _why: TransportError) {
        self.unreachable.insert(peer);
        self.stats.skipped_unreachable += 1;
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

/// What became of one correction found in the inbox.
enum FoldVerdict {
    Folded,
    /// Finite, but further than the distance limit allows (counted as absurd).
    TooFar,
    /// Undecodable or non-finite.
    Unusable,
}

impl From<Result<(), Rejected>> for FoldVerdict {
    fn from(check: Result<(), Rejected>) -> Self {
        match check {
            Ok(()) => FoldVerdict::Folded,
            Err(Rejected::TooFar) => FoldVerdict::TooFar,
            Err(Rejected::NonFinite) => FoldVerdict::Unusable,
        }
    }
}

/// Fills `chunk`, bytes `offset..offset + chunk.len()` of a payload made of `parts` laid end to
/// end.
fn fill_from_parts(parts: &[&[u8]], offset: usize, chunk: &mut [u8]) {
    let end = offset + chunk.len();
    let mut start = 0;
    for part in parts {
        let (lo, hi) = (offset.max(start), end.min(start + part.len()));
        if lo < hi {
            chunk[lo - offset..hi - offset].copy_from_slice(&part[lo - start..hi - start]);
        }
        start += part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::fill_from_parts;

    #[test]
    fn a_payload_filled_in_chunks_is_its_parts_end_to_end() {
        let parts: [&[u8]; 3] = [b"encoded", &[0, 0, 0], b"raw model bytes"];
        let whole: Vec<u8> = parts.concat();
        for chunk in 1..=whole.len() {
            let mut out = vec![0xAAu8; whole.len()];
            for (k, piece) in out.chunks_mut(chunk).enumerate() {
                fill_from_parts(&parts, k * chunk, piece);
            }
            assert_eq!(out, whole, "chunks of {chunk}");
        }
    }
}
