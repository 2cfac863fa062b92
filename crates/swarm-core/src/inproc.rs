//! In-process transport: nodes are threads sharing windows in memory.
//!
//! Windows are arrays of atomic words so that concurrent one-sided reads and writes are defined
//! behaviour; a seqlock (odd version while writing) lets a reader detect a copy that changed under it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::transport::{Completion, OpId, ReadOutcome, Transport, WriteOutcome};
use crate::{NodeId, TransportError};

/// How many times a read retries a copy that changed under it before reporting [`ReadOutcome::Torn`].
const READ_ATTEMPTS: usize = 64;

/// Bytes of the scratch buffer through which [`Transport::publish_with`] fills a window: small
/// enough to stay in the first-level cache.
const STORE_CHUNK: usize = 16 * 1024;

struct Words {
    words: Box<[AtomicU64]>,
}

impl Words {
    fn new(bytes: usize) -> Self {
        Words {
            words: (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn capacity(&self) -> usize {
        self.words.len() * 8
    }

    fn store(&self, payload: &[u8]) {
        self.store_at(0, payload);
    }

    /// Fills the first `len` bytes through `fill` (see [`Transport::publish_with`]), one chunk of
    /// a small scratch buffer at a time.
    fn store_with(&self, len: usize, fill: &mut dyn FnMut(usize, &mut [u8])) {
        // Words, so that the chunk is 8-aligned and stores take the word-wise path.
        let mut scratch = [0u64; STORE_CHUNK / 8];
        let scratch: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch);
        let mut offset = 0;
        while offset < len {
            let n = STORE_CHUNK.min(len - offset);
            let chunk = &mut scratch[..n];
            fill(offset, chunk);
            self.store_at(offset, chunk);
            offset += n;
        }
    }

    /// Stores `payload` at byte `offset`, a multiple of 8.
    fn store_at(&self, offset: usize, payload: &[u8]) {
        let first = offset / 8;
        let (head, tail) = payload.split_at(payload.len() / 8 * 8);
        let words = &self.words[first..];
        if let Ok(values) = bytemuck::try_cast_slice::<u8, u64>(head) {
            // An 8-aligned payload (the common case): one plain word per store.
            for (word, &v) in words.iter().zip(values) {
                word.store(u64::from_le(v), Ordering::Relaxed);
            }
        } else {
            for (word, chunk) in words.iter().zip(head.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                word.store(u64::from_le_bytes(b), Ordering::Relaxed);
            }
        }
        if !tail.is_empty() {
            let mut b = [0u8; 8];
            b[..tail.len()].copy_from_slice(tail);
            words[head.len() / 8].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    /// Copies bytes `offset..offset + out.len()`; `offset` must be a multiple of 8.
    fn load(&self, offset: usize, out: &mut [u8]) {
        let first = offset / 8;
        let whole = out.len() / 8 * 8;
        let (head, tail) = out.split_at_mut(whole);
        let words = &self.words[first..];
        if let Ok(values) = bytemuck::try_cast_slice_mut::<u8, u64>(head) {
            // An 8-aligned buffer (as allocations are): one plain word per load.
            for (v, word) in values.iter_mut().zip(words) {
                *v = word.load(Ordering::Relaxed).to_le();
            }
        } else {
            for (chunk, word) in head.chunks_exact_mut(8).zip(words) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
        }
        if !tail.is_empty() {
            let b = words[whole / 8].load(Ordering::Relaxed).to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&b[..n]);
        }
    }
}

struct Slot {
    deposited: AtomicU64,
    consumed: AtomicU64,
    len: AtomicUsize,
    data: Words,
}

struct Window {
    /// 0: never published. Odd: a publish is in progress. Even: stable, `version = seq / 2`.
    seq: AtomicU64,
    len: AtomicUsize,
    data: Words,
    /// Indexed like the owner's neighbour list: slot k belongs to writer `neighbours[k]`.
    slots: Box<[Slot]>,
}

/// The shared memory of an in-process fabric; hand one [`InProcessEndpoint`] to each node's thread.
#[derive(Clone)]
pub struct InProcessFabric {
    windows: Arc<[Window]>,
    neighbours: Arc<[Vec<NodeId>]>,
}

impl InProcessFabric {
    /// A fabric for the undirected graph given by adjacency lists, with windows and inbox slots of
    /// `capacity` bytes.
    pub fn new(neighbours: Vec<Vec<NodeId>>, capacity: usize) -> Result<Self, TransportError> {
        let n = neighbours.len();
        for (me, list) in neighbours.iter().enumerate() {
            for &peer in list {
                if peer >= n || peer == me || !neighbours[peer].contains(&me) {
                    return Err(TransportError::NotANeighbour {
                        me,
                        peer,
                        why: "adjacency lists must describe an undirected simple graph".into(),
                    });
                }
            }
        }
        let windows = neighbours
            .iter()
            .map(|list| Window {
                seq: AtomicU64::new(0),
                len: AtomicUsize::new(0),
                data: Words::new(capacity),
                slots: list
                    .iter()
                    .map(|_| Slot {
                        deposited: AtomicU64::new(0),
                        consumed: AtomicU64::new(0),
                        len: AtomicUsize::new(0),
                        data: Words::new(capacity),
                    })
                    .collect(),
            })
            .collect();
        Ok(InProcessFabric {
            windows,
            neighbours: neighbours.into(),
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.windows.len()
    }

    /// The endpoint of node `me`.
    pub fn endpoint(&self, me: NodeId) -> Result<InProcessEndpoint, TransportError> {
        let list = self
            .neighbours
            .get(me)
            .ok_or_else(|| TransportError::NotANeighbour {
                me,
                peer: me,
                why: format!("the fabric has only {} nodes", self.nodes()),
            })?;
        let my_slot_at = list
            .iter()
            .map(|&peer| {
                let k = self.neighbours[peer]
                    .iter()
                    .position(|&w| w == me)
                    .unwrap_or(usize::MAX);
                (peer, k)
            })
            .collect();
        Ok(InProcessEndpoint {
            fabric: self.clone(),
            me,
            my_slot_at,
            next_op: 0,
            done: VecDeque::new(),
            taken: Vec::new(),
            inbox_buf: Vec::new(),
        })
    }
}

/// One node's view of an [`InProcessFabric`]. Operations complete as soon as they start.
pub struct InProcessEndpoint {
    fabric: InProcessFabric,
    me: NodeId,
    /// For each neighbour, the index of this node's slot in that neighbour's inbox.
    my_slot_at: HashMap<NodeId, usize>,
    next_op: OpId,
    done: VecDeque<Completion>,
    /// Slots visited by the last `take_inbox` (index, deposit counter), freed by `release_inbox`.
    taken: Vec<(usize, u64)>,
    inbox_buf: Vec<u8>,
}

impl InProcessEndpoint {
    fn window(&self, peer: NodeId) -> Result<&Window, TransportError> {
        self.fabric
            .windows
            .get(peer)
            .ok_or_else(|| TransportError::NotANeighbour {
                me: self.me,
                peer,
                why: format!("the fabric has only {} nodes", self.fabric.nodes()),
            })
    }

    fn read_now(
        &self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<ReadOutcome, TransportError> {
        let window = self.window(peer)?;
        if offset % 8 != 0 || offset + len > window.data.capacity() {
            return Err(TransportError::TooLarge {
                len: offset + len,
                capacity: window.data.capacity(),
            });
        }
        buf.resize(len, 0);
        for _ in 0..READ_ATTEMPTS {
            let before = window.seq.load(Ordering::Acquire);
            if before == 0 {
                return Ok(ReadOutcome::NotPublished);
            }
            if before % 2 == 1 {
                // The writer is mid-publish; it may have been descheduled, so let it run.
                std::thread::yield_now();
                continue;
            }
            let published = window.len.load(Ordering::Relaxed);
            window.data.load(offset, buf);
            fence(Ordering::Acquire);
            let after = window.seq.load(Ordering::Relaxed);
            if before == after {
                if offset + len > published {
                    return Err(TransportError::TooLarge {
                        len: offset + len,
                        capacity: published,
                    });
                }
                return Ok(ReadOutcome::Model {
                    version: before / 2,
                });
            }
        }
        Ok(ReadOutcome::Torn)
    }

    fn my_slot(&self, peer: NodeId) -> Result<&Slot, TransportError> {
        let &k = self
            .my_slot_at
            .get(&peer)
            .ok_or_else(|| TransportError::NotANeighbour {
                me: self.me,
                peer,
                why: "not a neighbour, so it holds no inbox slot for this node".into(),
            })?;
        Ok(&self.window(peer)?.slots[k])
    }

    fn write_now(&self, peer: NodeId, payload: &[u8]) -> Result<WriteOutcome, TransportError> {
        let slot = self.my_slot(peer)?;
        if payload.len() > slot.data.capacity() {
            return Err(TransportError::TooLarge {
                len: payload.len(),
                capacity: slot.data.capacity(),
            });
        }
        let deposited = slot.deposited.load(Ordering::Relaxed);
        if slot.consumed.load(Ordering::Acquire) != deposited {
            return Ok(WriteOutcome::SlotBusy);
        }
        slot.data.store(payload);
        slot.len.store(payload.len(), Ordering::Relaxed);
        slot.deposited.store(deposited + 1, Ordering::Release);
        Ok(WriteOutcome::Delivered)
    }

    fn next_op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    /// Writes a payload of `len` bytes into the own window with `write` between the seqlock's odd
    /// and even marks, so that a reader gets all of it or retries.
    fn publish_seqlocked(
        &mut self,
        len: usize,
        write: impl FnOnce(&Words),
    ) -> Result<(), TransportError> {
        let window = &self.fabric.windows[self.me];
        if len > window.data.capacity() {
            return Err(TransportError::TooLarge {
                len,
                capacity: window.data.capacity(),
            });
        }
        let seq = window.seq.load(Ordering::Relaxed);
        window.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        window.len.store(len, Ordering::Relaxed);
        write(&window.data);
        window.seq.store(seq + 2, Ordering::Release);
        Ok(())
    }
}

impl Transport for InProcessEndpoint {
    fn node(&self) -> NodeId {
        self.me
    }

    fn capacity(&self) -> usize {
        self.fabric.windows[self.me].data.capacity()
    }

    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.publish_seqlocked(payload.len(), |data| data.store(payload))
    }

    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        self.publish_seqlocked(len, |data| data.store_with(len, fill))
    }

    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        mut buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        let result = self.read_now(peer, offset, len, &mut buf);
        let op = self.next_op();
        self.done.push_back(Completion::Read {
            op,
            peer,
            buf,
            result,
        });
        Ok(op)
    }

    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        let result = self.write_now(peer, payload);
        let op = self.next_op();
        self.done.push_back(Completion::Write { op, peer, result });
        Ok(op)
    }

    fn poll(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        let slot = self.my_slot(peer)?;
        Ok(slot.consumed.load(Ordering::Acquire) == slot.deposited.load(Ordering::Relaxed))
    }

    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        let window = &self.fabric.windows[self.me];
        let neighbours = &self.fabric.neighbours[self.me];
        self.taken.clear();
        for (k, (slot, &writer)) in window.slots.iter().zip(neighbours).enumerate() {
            let deposited = slot.deposited.load(Ordering::Acquire);
            if deposited == slot.consumed.load(Ordering::Relaxed) {
                continue;
            }
            self.inbox_buf.resize(slot.len.load(Ordering::Relaxed), 0);
            slot.data.load(0, &mut self.inbox_buf);
            visit(writer, &self.inbox_buf);
            self.taken.push((k, deposited));
        }
        Ok(self.taken.len())
    }

    fn release_inbox(&mut self) -> Result<(), TransportError> {
        let window = &self.fabric.windows[self.me];
        for (k, deposited) in self.taken.drain(..) {
            window.slots[k].consumed.store(deposited, Ordering::Release);
        }
        Ok(())
    }
}
