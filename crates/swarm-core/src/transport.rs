//! The thin transport trait: what SwarmSGD needs from the network, no more.
//!
//! Every node exposes a *window*: its published model (guarded by a version counter so that a torn
//! copy is detected) and one inbox slot per neighbour. Peers read the published model and write
//! into their own slot of a neighbour's inbox, one-sidedly: the owner's CPU takes no part. Operations
//! are started and then polled, so compute can overlap communication.

use crate::{NodeId, TransportError};

/// Chunks handed to the `fill` of [`Transport::publish_with`] (all but the last) are multiples of
/// this many bytes, so that a chunk holds whole f32 (and f64) values.
pub const PUBLISH_CHUNK_ALIGN: usize = 64;

/// Identifies an operation started on a transport.
pub type OpId = u64;

/// How a one-sided read of a peer's published model ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The buffer holds a consistent copy of the requested bytes of the peer's model at `version`.
    Model {
        /// The peer's publish counter for this copy (1 for its first publish).
        version: u64,
    },
    /// The peer has never published: its window holds no model yet.
    NotPublished,
    /// The model changed under every attempt to copy it; the buffer must not be used.
    Torn,
}

/// How a one-sided write into a peer's inbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The payload is in the peer's inbox; the peer will fold it in exactly once.
    Delivered,
    /// The peer has not yet consumed the previous deposit in this slot; nothing was written.
    /// Keep the payload (accumulate further corrections into it) and try again later.
    SlotBusy,
}

/// A finished operation, returned by [`Transport::poll`].
#[derive(Debug)]
pub enum Completion {
    /// A read finished; `buf` is the buffer given to [`Transport::start_read`], handed back.
    Read {
        /// The operation.
        op: OpId,
        /// Whose window was read.
        peer: NodeId,
        /// The buffer, holding the bytes read when the outcome is `Ok(ReadOutcome::Model { .. })`.
        buf: Vec<u8>,
        /// What happened.
        result: Result<ReadOutcome, TransportError>,
    },
    /// A write finished.
    Write {
        /// The operation.
        op: OpId,
        /// Whose inbox was written.
        peer: NodeId,
        /// What happened.
        result: Result<WriteOutcome, TransportError>,
    },
}

impl Completion {
    /// The operation this completion belongs to.
    pub fn op(&self) -> OpId {
        match self {
            Completion::Read { op, .. } | Completion::Write { op, .. } => *op,
        }
    }
}

/// One node's endpoint on a fabric of nodes.
pub trait Transport: Send {
    /// This node's id.
    fn node(&self) -> NodeId;

    /// The largest payload a window (and each inbox slot) holds, in bytes.
    fn capacity(&self) -> usize;

    /// Copies `payload` into this node's published window, bumping its version.
    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError>;

    /// Publishes a payload of `len` bytes that `fill` writes in place, as [`Transport::publish`]
    /// would publish it: `fill(offset, chunk)` is called for consecutive chunks, in increasing
    /// order, and writes bytes `offset..offset + chunk.len()` of the payload; every chunk but the
    /// last is a multiple of [`PUBLISH_CHUNK_ALIGN`] bytes long. A payload computed from the model
    /// (an average, an encoding) then needs no staging copy. The default stages the whole payload
    /// and calls [`Transport::publish`].
    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        let mut payload = vec![0u8; len];
        fill(0, &mut payload);
        self.publish(&payload)
    }

    /// Starts a one-sided read of bytes `offset..offset + len` of `peer`'s published payload into
    /// `buf` (resized to `len`). Poll for the [`Completion::Read`] that hands `buf` back.
    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError>;

    /// Starts a one-sided write of `payload` into this node's inbox slot at `peer`.
    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError>;

    /// Returns one finished operation, if any, without blocking.
    fn poll(&mut self) -> Option<Completion>;

    /// Whether this node's inbox slot at `peer` is free: `peer` has folded (and republished) the
    /// last deposit this node wrote there. Pairwise averaging only reads a peer whose copy already
    /// includes every earlier correction from this node; otherwise corrections computed against
    /// the same stale copy would pile up and overshoot.
    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError>;

    /// Hands every pending inbox deposit to `visit` (writer id, payload), without freeing the
    /// slots. Returns how many deposits were visited.
    fn take_inbox(&mut self, visit: &mut dyn FnMut(NodeId, &[u8]))
        -> Result<usize, TransportError>;

    /// Frees the slots visited by the last [`Transport::take_inbox`] for their writers. Call it
    /// after republishing the model that includes the deposits, so every deposit counts once.
    fn release_inbox(&mut self) -> Result<(), TransportError>;

    /// Called by a node that has nothing to do but wait for its operations in flight, after
    /// `empty_polls` polls in a row found nothing. The default spins briefly for fast (in-process,
    /// RDMA) completions, then leaves the core to others: networked operations take far longer
    /// than a spin, and processes may share cores. A transport on a virtual clock advances the
    /// clock to its next completion instead.
    fn idle(&mut self, empty_polls: u32) {
        if empty_polls < 1024 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// A boxed transport is a transport: drivers that pick the network at run time hold a
/// `Box<dyn Transport>` (or a box of a trait extending it).
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn node(&self) -> NodeId {
        (**self).node()
    }

    fn capacity(&self) -> usize {
        (**self).capacity()
    }

    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        (**self).publish(payload)
    }

    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        (**self).publish_with(len, fill)
    }

    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        (**self).start_read(peer, offset, len, buf)
    }

    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        (**self).start_write(peer, payload)
    }

    fn poll(&mut self) -> Option<Completion> {
        (**self).poll()
    }

    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        (**self).slot_free_at(peer)
    }

    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        (**self).take_inbox(visit)
    }

    fn release_inbox(&mut self) -> Result<(), TransportError> {
        (**self).release_inbox()
    }

    fn idle(&mut self, empty_polls: u32) {
        (**self).idle(empty_polls)
    }
}
