//! [`RdmaEndpoint`]: one node's window and its queue pairs to its neighbours.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmsgd_core::{
    Completion, NodeId, OpId, ReadOutcome, Transport, TransportError, WriteOutcome,
};

use crate::record::{EndpointRecord, SLOT_HEADER};
use crate::verbs::{self, Access, Cq, Device, Op, Qp, Region, RemoteBuf, Wc, Wr};
use crate::{NumaPlacement, RdmaConfig, RdmaError};

/// Bytes of the scratch buffer through which `publish_with` fills the registered window: a
/// multiple of `PUBLISH_CHUNK_ALIGN`, small enough to stay in cache.
const PUBLISH_SCRATCH: usize = 64 * 1024;

/// Scratch offsets (in each peer's scratch region).
const S_SEQ: usize = 0; // seqlock word read before the payload
const S_LEN: usize = 8; // payload length read with it
const S_SEQ2: usize = 16; // seqlock word read after the payload
const S_CONSUMED: usize = 24; // the owner's consumed counter for our slot
const S_COMMIT: usize = 32; // the deposit word we write

/// Counters of one endpoint (this node's side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RdmaStats {
    /// Reads that returned a consistent model.
    pub models_read: u64,
    /// Read attempts repeated because the copy changed under them.
    pub torn_retries: u64,
    /// Reads reported torn after every attempt.
    pub torn: u64,
    /// Payload bytes moved by RDMA READ (every attempt).
    pub bytes_read: u64,
    /// Deposits delivered.
    pub deposits: u64,
    /// Deposits refused because the slot was busy.
    pub slot_busy: u64,
    /// Payload bytes moved by RDMA WRITE.
    pub bytes_written: u64,
    /// Peers marked unreachable.
    pub peers_lost: u64,
}

struct Remote {
    published: RemoteBuf,
    data_offset: u64,
    inbox: RemoteBuf,
    slot_stride: u64,
    /// This node's slot in the peer's inbox.
    my_slot: u64,
    capacity: usize,
}

enum Pending {
    Read {
        op: OpId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    },
    Write {
        op: OpId,
        payload: Vec<u8>,
    },
    Probe,
}

enum Phase {
    Read {
        offset: usize,
        len: usize,
        buf: Vec<u8>,
        attempt: usize,
    },
    WriteCheck {
        len: usize,
    },
    WriteData {
        len: usize,
    },
    WriteCommit {
        len: usize,
    },
    Probe,
}

struct Active {
    op: OpId,
    phase: Phase,
    outstanding: usize,
    deadline: Instant,
}

struct Peer {
    id: NodeId,
    qp: Qp,
    remote: Option<Remote>,
    stage_read: Arc<Region>,
    stage_write: Arc<Region>,
    scratch: Arc<Region>,
    /// Deposits this node delivered into its slot at the peer (mod 2^32 on the wire).
    deposits: u64,
    /// The slot is known to be free (observed consumed == deposits since the last deposit).
    known_free: bool,
    dead: Option<String>,
    epoch: u64,
    active: Option<Active>,
    queue: VecDeque<Pending>,
    probe: Option<Result<u64, TransportError>>,
}

/// A request to post: op, local region, local offset, length, remote buffer, remote offset, fence.
type Req = (Op, Arc<Region>, usize, usize, RemoteBuf, u64, bool);

const EPOCH_BITS: u32 = 40;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// One node's endpoint: its registered window and one reliable-connection queue pair per
/// neighbour. Implements [`swarmsgd_core::Transport`]; see the crate docs for the protocol.
pub struct RdmaEndpoint {
    me: NodeId,
    capacity: usize,
    cfg: RdmaConfig,
    neighbours: Vec<NodeId>,
    peers: Vec<Peer>,
    index: HashMap<NodeId, usize>,
    published: Arc<Region>,
    data_offset: usize,
    inbox: Arc<Region>,
    slot_stride: usize,
    consumed: Vec<u32>,
    taken: Vec<(usize, u32)>,
    inbox_buf: Vec<u8>,
    cq: Cq,
    wcs: Vec<Wc>,
    next_op: OpId,
    done: VecDeque<Completion>,
    stats: RdmaStats,
    dev: Device,
}

impl std::fmt::Debug for RdmaEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaEndpoint")
            .field("node", &self.me)
            .field("capacity", &self.capacity)
            .field("neighbours", &self.neighbours)
            .field("device", &self.dev)
            .finish()
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl RdmaEndpoint {
    /// Opens the device, registers node `me`'s window (payload `capacity` bytes, one inbox slot
    /// per neighbour) and creates one queue pair per neighbour. Next: hand [`record`](Self::record)
    /// to the neighbours and [`connect`](Self::connect) with theirs.
    pub fn new(
        me: NodeId,
        neighbours: &[NodeId],
        capacity: usize,
        cfg: &RdmaConfig,
    ) -> Result<Self, RdmaError> {
        if capacity > u32::MAX as usize {
            return Err(RdmaError::Config(format!(
                "capacity {capacity} above 4 GiB - 1"
            )));
        }
        let mut index = HashMap::new();
        for (k, &j) in neighbours.iter().enumerate() {
            if j == me || index.insert(j, k).is_some() {
                return Err(RdmaError::Config(format!(
                    "neighbour list {neighbours:?} of node {me} must be distinct other nodes"
                )));
            }
        }
        if neighbours.len() > crate::record::MAX_NEIGHBOURS {
            return Err(RdmaError::Config(format!(
                "{} neighbours",
                neighbours.len()
            )));
        }
        if cfg.chunk == 0 || cfg.max_chunks == 0 || cfg.read_attempts == 0 {
            return Err(RdmaError::Config(
                "chunk, max_chunks and read_attempts must be positive".into(),
            ));
        }
        let mut dev = Device::open(&cfg.device)?;
        match &cfg.numa {
            NumaPlacement::Default => {}
            NumaPlacement::Nodes(nodes) => dev.place_regions_on(nodes.clone(), true),
            NumaPlacement::NearDevice => match crate::verbs::numa::near(dev.name()) {
                Ok(Some(nodes)) => dev.place_regions_on(nodes, false),
                Ok(None) => tracing::debug!(
                    "{}: hwloc reports no NUMA locality; the window keeps the default policy",
                    dev.name()
                ),
                Err(e) => tracing::debug!("{}: no NUMA placement ({e})", dev.name()),
            },
        }
        let deg = neighbours.len();
        let data_offset = round_up(16 + 8 * deg, 64);
        let published = dev.region(data_offset + capacity, Access::RemoteRead)?;
        let slot_stride = round_up(SLOT_HEADER as usize + capacity, 64);
        let inbox = dev.region((slot_stride * deg).max(1), Access::RemoteWrite)?;
        let wrs_per_op = cfg.max_chunks + 4;
        let cq = dev.cq(((wrs_per_op * deg.max(1)) as u32).max(16))?;
        let mut peers = Vec::with_capacity(deg);
        for &j in neighbours {
            peers.push(Peer {
                id: j,
                qp: dev.qp(&cq, wrs_per_op as u32)?,
                remote: None,
                stage_read: dev.region(capacity, Access::Local)?,
                stage_write: dev.region(capacity, Access::Local)?,
                scratch: dev.region(64, Access::Local)?,
                deposits: 0,
                known_free: false,
                dead: Some("not connected yet".into()),
                epoch: 0,
                active: None,
                queue: VecDeque::new(),
                probe: None,
            });
        }
        Ok(RdmaEndpoint {
            me,
            capacity,
            cfg: cfg.clone(),
            neighbours: neighbours.to_vec(),
            peers,
            index,
            published,
            data_offset,
            inbox,
            slot_stride,
            consumed: vec![0; deg],
            taken: Vec::new(),
            inbox_buf: Vec::new(),
            cq,
            wcs: Vec::new(),
            next_op: 0,
            done: VecDeque::new(),
            stats: RdmaStats::default(),
            dev,
        })
    }

    /// The NUMA nodes the window (published model and inbox) was placed on, `None` under the
    /// default policy (see [`RdmaConfig::numa`]).
    pub fn window_numa_nodes(&self) -> Option<Vec<usize>> {
        self.published.numa_nodes().map(<[usize]>::to_vec)
    }

    /// What the operating system reports for the window's pages: the NUMA nodes they are bound
    /// to, or `None` under the default policy. The published region and the inbox agree.
    pub fn window_numa_binding(&self) -> Result<Option<Vec<usize>>, RdmaError> {
        let published = self.published.numa_binding()?;
        let inbox = self.inbox.numa_binding()?;
        if published != inbox {
            return Err(RdmaError::Config(format!(
                "published window bound to {published:?} but the inbox to {inbox:?}"
            )));
        }
        Ok(published)
    }

    /// This endpoint's record (postcard bytes) for its neighbours' [`connect`](Self::connect).
    pub fn record(&self) -> Vec<u8> {
        self.endpoint_record().encode()
    }

    /// This endpoint's record, decoded.
    pub fn endpoint_record(&self) -> EndpointRecord {
        EndpointRecord::new(
            self.me as u64,
            self.capacity as u64,
            self.neighbours.iter().map(|&j| j as u64).collect(),
            self.peers.iter().map(|p| p.qp.address(&self.dev)).collect(),
            RemoteBuf {
                addr: self.published.addr(),
                len: self.published.len() as u64,
                rkey: self.published.rkey(),
            },
            self.data_offset as u64,
            RemoteBuf {
                addr: self.inbox.addr(),
                len: self.inbox.len() as u64,
                rkey: self.inbox.rkey(),
            },
            self.slot_stride as u64,
        )
    }

    /// Connects to every neighbour, given records (any order; records of other nodes are ignored).
    /// Fails if a record is invalid, does not list this node as its neighbour, or a neighbour's
    /// record is missing. Operations may start once the neighbours have connected too (use a
    /// barrier of the rendezvous; until then requests are retried for about a second).
    pub fn connect<B: AsRef<[u8]>>(&mut self, records: &[B]) -> Result<(), RdmaError> {
        let mut by_node = HashMap::new();
        for bytes in records {
            let r = EndpointRecord::decode(bytes.as_ref())?;
            by_node.insert(r.node, r);
        }
        let missing: Vec<NodeId> = self
            .neighbours
            .iter()
            .copied()
            .filter(|&j| !by_node.contains_key(&(j as u64)))
            .collect();
        if !missing.is_empty() {
            return Err(RdmaError::Record(format!(
                "node {}: no record for neighbours {missing:?}",
                self.me
            )));
        }
        for peer in &mut self.peers {
            let r = &by_node[&(peer.id as u64)];
            let slot = r.slot_of(self.me as u64).ok_or_else(|| {
                RdmaError::Record(format!(
                    "node {} does not list node {} as a neighbour (its neighbours: {:?})",
                    r.node, self.me, r.neighbours
                ))
            })?;
            peer.qp
                .connect(&r.qps[slot], self.cfg.ack_timeout, self.cfg.retries)?;
            peer.remote = Some(Remote {
                published: r.published,
                data_offset: r.data_offset,
                inbox: r.inbox,
                slot_stride: r.slot_stride,
                my_slot: slot as u64,
                capacity: r.capacity as usize,
            });
            peer.dead = None;
        }
        Ok(())
    }

    /// The device in use (name, GID, ...).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Changes [`RdmaConfig::op_timeout`] for operations started from now on.
    pub fn set_op_timeout(&mut self, timeout: Duration) {
        self.cfg.op_timeout = timeout;
    }

    /// Counters of this endpoint.
    pub fn stats(&self) -> RdmaStats {
        self.stats
    }

    /// The peers marked unreachable, with the reason.
    pub fn unreachable(&self) -> Vec<(NodeId, String)> {
        self.peers
            .iter()
            .filter(|p| p.remote.is_some())
            .filter_map(|p| p.dead.clone().map(|why| (p.id, why)))
            .collect()
    }

    /// Replaces the remote key this node uses for `peer`'s published region (a test hook for the
    /// wrong-rkey path: the next read fails with a remote access error).
    #[doc(hidden)]
    pub fn corrupt_rkey_for_tests(&mut self, peer: NodeId) {
        if let Some(&k) = self.index.get(&peer) {
            if let Some(r) = self.peers[k].remote.as_mut() {
                r.published.rkey ^= 0x5a5a_5a5a;
            }
        }
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    fn not_neighbour(&self, peer: NodeId) -> TransportError {
        TransportError::NotANeighbour {
            me: self.me,
            peer,
            why: format!("not in this node's neighbour list {:?}", self.neighbours),
        }
    }

    /// Finishes the active operation of peer `k` with `result` (or stores a probe result).
    fn finish(&mut self, k: usize, outcome: Result<Outcome, TransportError>) {
        let peer = &mut self.peers[k];
        let Some(active) = peer.active.take() else {
            return;
        };
        let id = peer.id;
        let completion = match (active.phase, outcome) {
            (Phase::Probe, r) => {
                peer.probe = Some(r.map(|o| match o {
                    Outcome::Consumed(c) => c,
                    _ => 0,
                }));
                None
            }
            (Phase::Read { buf, .. }, r) => Some(Completion::Read {
                op: active.op,
                peer: id,
                buf,
                result: r.map(|o| match o {
                    Outcome::Read(r) => r,
                    _ => ReadOutcome::Torn,
                }),
            }),
            (_, r) => Some(Completion::Write {
                op: active.op,
                peer: id,
                result: r.map(|o| match o {
                    Outcome::Write(w) => w,
                    _ => WriteOutcome::SlotBusy,
                }),
            }),
        };
        if let Some(c) = completion {
            self.done.push_back(c);
        }
    }

    /// Marks peer `k` unreachable, fails its active and queued operations.
    fn kill(&mut self, k: usize, why: String) {
        let peer = &mut self.peers[k];
        if peer.dead.is_none() {
            tracing::warn!(
                node = self.me,
                peer = peer.id,
                "RDMA peer unreachable: {why}"
            );
            self.stats.peers_lost += 1;
            // Flush whatever is still outstanding; the QP may already be in error.
            if let Err(e) = peer.qp.fail() {
                tracing::warn!(node = self.me, peer = peer.id, "{e}");
            }
            peer.dead = Some(why.clone());
        }
        peer.epoch += 1;
        let id = peer.id;
        let err = || TransportError::Unreachable {
            peer: id,
            why: why.clone(),
        };
        self.finish(k, Err(err()));
        let queued: Vec<Pending> = self.peers[k].queue.drain(..).collect();
        for p in queued {
            match p {
                Pending::Read { op, buf, .. } => self.done.push_back(Completion::Read {
                    op,
                    peer: id,
                    buf,
                    result: Err(err()),
                }),
                Pending::Write { op, .. } => self.done.push_back(Completion::Write {
                    op,
                    peer: id,
                    result: Err(err()),
                }),
                Pending::Probe => self.peers[k].probe = Some(Err(err())),
            }
        }
    }

    /// Posts `wrs` for peer `k` as its active operation's next batch.
    fn post(&mut self, k: usize, wrs: Vec<Req>) {
        let peer = &mut self.peers[k];
        peer.epoch = (peer.epoch + 1) & EPOCH_MASK;
        let id = ((k as u64) << EPOCH_BITS) | peer.epoch;
        let list: Vec<Wr<'_>> = wrs
            .iter()
            .map(|(op, local, lo, len, remote, ro, fence)| Wr {
                id,
                op: *op,
                local,
                local_offset: *lo,
                len: *len,
                remote: *remote,
                remote_offset: *ro,
                fence: *fence,
            })
            .collect();
        let n = list.len();
        let res = peer.qp.post(&list);
        drop(list);
        match res {
            Ok(()) => {
                if let Some(a) = peer.active.as_mut() {
                    a.outstanding = n;
                    a.deadline = Instant::now() + self.cfg.op_timeout;
                }
            }
            Err(e) => self.kill(k, format!("posting to the queue pair failed: {e}")),
        }
    }

    /// Posts the reads of one attempt of the active read of peer `k`.
    fn post_read(&mut self, k: usize, offset: usize, len: usize) {
        let peer = &self.peers[k];
        let Some(remote) = peer.remote.as_ref() else {
            return;
        };
        let pubr = remote.published;
        let base = remote.data_offset + offset as u64;
        let scratch = Arc::clone(&peer.scratch);
        let stage = Arc::clone(&peer.stage_read);
        let chunk = self.cfg.chunk.max(len.div_ceil(self.cfg.max_chunks));
        let mut wrs = vec![(Op::Read, Arc::clone(&scratch), S_SEQ, 16, pubr, 0, false)];
        let mut at = 0;
        while at < len {
            let n = chunk.min(len - at);
            wrs.push((
                Op::Read,
                Arc::clone(&stage),
                at,
                n,
                pubr,
                base + at as u64,
                at == 0,
            ));
            at += n;
        }
        wrs.push((Op::Read, scratch, S_SEQ2, 8, pubr, 0, true));
        self.stats.bytes_read += len as u64;
        self.post(k, wrs);
    }

    /// Starts the next queued operation of peer `k` if it is idle.
    fn activate(&mut self, k: usize) {
        if self.peers[k].active.is_some() || self.peers[k].dead.is_some() {
            return;
        }
        let Some(next) = self.peers[k].queue.pop_front() else {
            return;
        };
        let deadline = Instant::now() + self.cfg.op_timeout;
        match next {
            Pending::Read {
                op,
                offset,
                len,
                buf,
            } => {
                self.peers[k].active = Some(Active {
                    op,
                    phase: Phase::Read {
                        offset,
                        len,
                        buf,
                        attempt: 1,
                    },
                    outstanding: 0,
                    deadline,
                });
                self.post_read(k, offset, len);
            }
            Pending::Write { op, payload } => {
                let len = payload.len();
                if let Err(e) = self.peers[k].stage_write.write(0, &payload) {
                    self.peers[k].active = Some(Active {
                        op,
                        phase: Phase::WriteCheck { len },
                        outstanding: 0,
                        deadline,
                    });
                    self.finish(
                        k,
                        Err(TransportError::TooLarge {
                            len,
                            capacity: self.peers[k].stage_write.len(),
                        }),
                    );
                    tracing::debug!("{e}");
                    return;
                }
                let known_free = self.peers[k].known_free;
                self.peers[k].active = Some(Active {
                    op,
                    phase: if known_free {
                        Phase::WriteData { len }
                    } else {
                        Phase::WriteCheck { len }
                    },
                    outstanding: 0,
                    deadline,
                });
                if known_free {
                    self.post_write_data(k, len);
                } else {
                    self.post_consumed_read(k);
                }
            }
            Pending::Probe => {
                self.peers[k].active = Some(Active {
                    op: 0,
                    phase: Phase::Probe,
                    outstanding: 0,
                    deadline,
                });
                self.post_consumed_read(k);
            }
        }
    }

    fn post_consumed_read(&mut self, k: usize) {
        let peer = &self.peers[k];
        let Some(remote) = peer.remote.as_ref() else {
            return;
        };
        let wr = (
            Op::Read,
            Arc::clone(&peer.scratch),
            S_CONSUMED,
            8,
            remote.published,
            16 + 8 * remote.my_slot,
            false,
        );
        self.post(k, vec![wr]);
    }

    fn post_write_data(&mut self, k: usize, len: usize) {
        if len == 0 {
            // Nothing to move: go straight to the commit word.
            if let Some(a) = self.peers[k].active.as_mut() {
                a.phase = Phase::WriteCommit { len };
            }
            self.post_commit(k, len);
            return;
        }
        let peer = &self.peers[k];
        let Some(remote) = peer.remote.as_ref() else {
            return;
        };
        let base = remote.slot_stride * remote.my_slot + SLOT_HEADER;
        let chunk = self.cfg.chunk.max(len.div_ceil(self.cfg.max_chunks));
        let mut wrs = Vec::new();
        let mut at = 0;
        while at < len {
            let n = chunk.min(len - at);
            wrs.push((
                Op::Write,
                Arc::clone(&peer.stage_write),
                at,
                n,
                remote.inbox,
                base + at as u64,
                false,
            ));
            at += n;
        }
        self.stats.bytes_written += len as u64;
        self.post(k, wrs);
    }

    fn post_commit(&mut self, k: usize, len: usize) {
        let peer = &self.peers[k];
        let Some(remote) = peer.remote.as_ref() else {
            return;
        };
        let count = (peer.deposits + 1) & 0xffff_ffff;
        let word = (count << 32) | len as u64;
        if let Err(e) = peer.scratch.store(S_COMMIT, word, Ordering::Release) {
            let why = e.to_string();
            self.kill(k, why);
            return;
        }
        let wr = (
            Op::Write,
            Arc::clone(&peer.scratch),
            S_COMMIT,
            8,
            remote.inbox,
            remote.slot_stride * remote.my_slot,
            false,
        );
        self.post(k, vec![wr]);
    }

    /// The active operation of peer `k` has all its requests completed: take the next step.
    fn step(&mut self, k: usize) {
        let Some(active) = self.peers[k].active.take() else {
            return;
        };
        let op = active.op;
        let deadline = active.deadline;
        let scratch = Arc::clone(&self.peers[k].scratch);
        let load = |off| scratch.load(off, Ordering::Acquire).unwrap_or(1);
        match active.phase {
            Phase::Read {
                offset,
                len,
                mut buf,
                attempt,
            } => {
                let (seq, published_len, seq2) = (load(S_SEQ), load(S_LEN), load(S_SEQ2));
                let restore = |phase| Active {
                    op,
                    phase,
                    outstanding: 0,
                    deadline,
                };
                let outcome = if seq == 0 {
                    Ok(ReadOutcome::NotPublished)
                } else if seq % 2 == 1 || seq != seq2 {
                    if attempt < self.cfg.read_attempts {
                        self.stats.torn_retries += 1;
                        self.peers[k].active = Some(restore(Phase::Read {
                            offset,
                            len,
                            buf,
                            attempt: attempt + 1,
                        }));
                        self.post_read(k, offset, len);
                        return;
                    }
                    self.stats.torn += 1;
                    Ok(ReadOutcome::Torn)
                } else if (offset + len) as u64 > published_len {
                    Err(TransportError::TooLarge {
                        len: offset + len,
                        capacity: published_len as usize,
                    })
                } else {
                    buf.resize(len, 0);
                    match self.peers[k].stage_read.read(0, &mut buf) {
                        Ok(()) => {
                            self.stats.models_read += 1;
                            Ok(ReadOutcome::Model { version: seq / 2 })
                        }
                        Err(e) => Err(TransportError::TooLarge {
                            len,
                            capacity: {
                                tracing::debug!("{e}");
                                self.peers[k].stage_read.len()
                            },
                        }),
                    }
                };
                self.peers[k].active = Some(restore(Phase::Read {
                    offset,
                    len,
                    buf,
                    attempt,
                }));
                self.finish(k, outcome.map(Outcome::Read));
            }
            Phase::WriteCheck { len } => {
                let consumed = load(S_CONSUMED) & 0xffff_ffff;
                let peer = &mut self.peers[k];
                if consumed == peer.deposits & 0xffff_ffff {
                    peer.known_free = true;
                    peer.active = Some(Active {
                        op,
                        phase: Phase::WriteData { len },
                        outstanding: 0,
                        deadline,
                    });
                    self.post_write_data(k, len);
                } else {
                    self.stats.slot_busy += 1;
                    peer.active = Some(Active {
                        op,
                        phase: Phase::WriteCheck { len },
                        outstanding: 0,
                        deadline,
                    });
                    self.finish(k, Ok(Outcome::Write(WriteOutcome::SlotBusy)));
                }
            }
            Phase::WriteData { len } => {
                self.peers[k].active = Some(Active {
                    op,
                    phase: Phase::WriteCommit { len },
                    outstanding: 0,
                    deadline,
                });
                self.post_commit(k, len);
            }
            Phase::WriteCommit { len } => {
                let peer = &mut self.peers[k];
                peer.deposits += 1;
                peer.known_free = false;
                self.stats.deposits += 1;
                peer.active = Some(Active {
                    op,
                    phase: Phase::WriteCommit { len },
                    outstanding: 0,
                    deadline,
                });
                self.finish(k, Ok(Outcome::Write(WriteOutcome::Delivered)));
            }
            Phase::Probe => {
                let consumed = load(S_CONSUMED) & 0xffff_ffff;
                self.peers[k].active = Some(Active {
                    op,
                    phase: Phase::Probe,
                    outstanding: 0,
                    deadline,
                });
                self.finish(k, Ok(Outcome::Consumed(consumed)));
            }
        }
    }

    /// Drains the completion queue, advances operations, enforces deadlines, starts queued work.
    fn progress(&mut self) {
        self.wcs.clear();
        if let Err(e) = self.cq.poll(&mut self.wcs) {
            // A broken CQ breaks every peer.
            for k in 0..self.peers.len() {
                self.kill(k, format!("completion queue failed: {e}"));
            }
        }
        let wcs = std::mem::take(&mut self.wcs);
        for wc in &wcs {
            let k = (wc.id >> EPOCH_BITS) as usize;
            let epoch = wc.id & EPOCH_MASK;
            let Some(peer) = self.peers.get_mut(k) else {
                continue;
            };
            if peer.dead.is_some() || peer.epoch != epoch {
                continue; // a late completion of an abandoned batch
            }
            if !wc.ok() {
                let why = format!(
                    "{} (status {}, vendor error {:#x})",
                    verbs::status_name(wc.status),
                    wc.status,
                    wc.vendor_err
                );
                self.kill(k, why);
                continue;
            }
            let Some(active) = peer.active.as_mut() else {
                continue;
            };
            active.outstanding = active.outstanding.saturating_sub(1);
            if active.outstanding == 0 {
                self.step(k);
            }
        }
        self.wcs = wcs;
        let now = Instant::now();
        for k in 0..self.peers.len() {
            let late = self.peers[k]
                .active
                .as_ref()
                .is_some_and(|a| a.outstanding > 0 && now > a.deadline);
            if late {
                let t = self.cfg.op_timeout;
                self.kill(k, format!("no completion within {t:?}"));
            }
            self.activate(k);
        }
    }

    fn peer_index(&self, peer: NodeId) -> Result<usize, TransportError> {
        self.index
            .get(&peer)
            .copied()
            .ok_or_else(|| self.not_neighbour(peer))
    }

    fn dead_error(&self, k: usize) -> Option<TransportError> {
        self.peers[k]
            .dead
            .as_ref()
            .map(|why| TransportError::Unreachable {
                peer: self.peers[k].id,
                why: why.clone(),
            })
    }

    /// The index of `peer` if an operation touching bytes `..end` of its window may start.
    fn admit(&self, peer: NodeId, end: usize) -> Result<usize, TransportError> {
        let k = self.peer_index(peer)?;
        if let Some(e) = self.dead_error(k) {
            return Err(e);
        }
        match &self.peers[k].remote {
            Some(r) if end > r.capacity => Err(TransportError::TooLarge {
                len: end,
                capacity: r.capacity,
            }),
            Some(_) => Ok(k),
            None => Err(TransportError::Unreachable {
                peer,
                why: "not connected".into(),
            }),
        }
    }

    /// Waits (polling) until every started operation has completed or `timeout` passed; the
    /// completions stay queued for [`Transport::poll`]. Returns whether all completed.
    pub fn quiesce(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            self.progress();
            if self
                .peers
                .iter()
                .all(|p| p.active.is_none() && p.queue.is_empty())
            {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

enum Outcome {
    Read(ReadOutcome),
    Write(WriteOutcome),
    Consumed(u64),
}

impl RdmaEndpoint {
    /// Writes a payload of `len` bytes into the own window with `write(window, data_offset)`
    /// between the seqlock's odd and even marks, so that a peer's read sees all of it or reports
    /// a torn copy.
    fn publish_seqlocked(
        &self,
        len: usize,
        write: impl FnOnce(&Region, usize) -> Result<(), RdmaError>,
    ) -> Result<(), TransportError> {
        if len > self.capacity {
            return Err(TransportError::TooLarge {
                len,
                capacity: self.capacity,
            });
        }
        let w = &self.published;
        let fail = |e: RdmaError| TransportError::Unreachable {
            peer: self.me,
            why: format!("own window: {e}"),
        };
        let seq = w.load(0, Ordering::Relaxed).map_err(fail)?;
        let odd = if seq % 2 == 0 { seq + 1 } else { seq };
        w.store(0, odd, Ordering::Relaxed).map_err(fail)?;
        // The odd word must be visible before any payload byte changes.
        fence(Ordering::SeqCst);
        w.store(8, len as u64, Ordering::Relaxed).map_err(fail)?;
        write(w, self.data_offset).map_err(fail)?;
        fence(Ordering::Release);
        w.store(0, odd + 1, Ordering::Release).map_err(fail)?;
        Ok(())
    }
}

impl Transport for RdmaEndpoint {
    fn node(&self) -> NodeId {
        self.me
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.publish_seqlocked(payload.len(), |w, data_offset| {
            w.write(data_offset, payload)
        })
    }

    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        self.publish_seqlocked(len, |w, data_offset| {
            // Filled through a cache-sized scratch buffer, chunk by chunk, into the registered
            // window.
            let mut scratch = vec![0u8; PUBLISH_SCRATCH.min(len)];
            let mut offset = 0;
            while offset < len {
                let n = scratch.len().min(len - offset);
                fill(offset, &mut scratch[..n]);
                w.write(data_offset + offset, &scratch[..n])?;
                offset += n;
            }
            Ok(())
        })
    }

    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        let op = self.new_op();
        let end = offset.saturating_add(len);
        match self.admit(peer, end) {
            Ok(k) => {
                self.peers[k].queue.push_back(Pending::Read {
                    op,
                    offset,
                    len,
                    buf,
                });
                self.activate(k);
            }
            Err(e) => self.done.push_back(Completion::Read {
                op,
                peer,
                buf,
                result: Err(e),
            }),
        }
        Ok(op)
    }

    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        let op = self.new_op();
        match self.admit(peer, payload.len()) {
            Ok(k) => {
                self.peers[k].queue.push_back(Pending::Write {
                    op,
                    payload: payload.to_vec(),
                });
                self.activate(k);
            }
            Err(e) => self.done.push_back(Completion::Write {
                op,
                peer,
                result: Err(e),
            }),
        }
        Ok(op)
    }

    fn poll(&mut self) -> Option<Completion> {
        if self.done.is_empty() {
            self.progress();
        }
        self.done.pop_front()
    }

    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        let k = self.peer_index(peer)?;
        if let Some(e) = self.dead_error(k) {
            return Err(e);
        }
        if self.peers[k].known_free {
            return Ok(true);
        }
        self.peers[k].probe = None;
        self.peers[k].queue.push_back(Pending::Probe);
        self.activate(k);
        loop {
            if let Some(r) = self.peers[k].probe.take() {
                let consumed = r?;
                let p = &mut self.peers[k];
                let free = consumed == p.deposits & 0xffff_ffff;
                p.known_free = free;
                return Ok(free);
            }
            self.progress();
            std::hint::spin_loop();
        }
    }

    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        self.taken.clear();
        let mut visited = 0;
        for k in 0..self.neighbours.len() {
            let at = k * self.slot_stride;
            let word = self.inbox.load(at, Ordering::Acquire).map_err(|e| {
                TransportError::Unreachable {
                    peer: self.me,
                    why: format!("own inbox: {e}"),
                }
            })?;
            let count = (word >> 32) as u32;
            if count == self.consumed[k] {
                continue;
            }
            let len = (word & 0xffff_ffff) as usize;
            self.taken.push((k, count));
            if len > self.capacity {
                tracing::warn!(
                    node = self.me,
                    writer = self.neighbours[k],
                    "inbox deposit claims {len} bytes in a {}-byte slot; dropped",
                    self.capacity
                );
                continue;
            }
            self.inbox_buf.resize(len, 0);
            if self
                .inbox
                .read(at + SLOT_HEADER as usize, &mut self.inbox_buf)
                .is_ok()
            {
                visit(self.neighbours[k], &self.inbox_buf);
                visited += 1;
            }
        }
        Ok(visited)
    }

    fn release_inbox(&mut self) -> Result<(), TransportError> {
        for (k, count) in std::mem::take(&mut self.taken) {
            self.consumed[k] = count;
            self.published
                .store(16 + 8 * k, u64::from(count), Ordering::Release)
                .map_err(|e| TransportError::Unreachable {
                    peer: self.me,
                    why: format!("own window: {e}"),
                })?;
        }
        Ok(())
    }
}
