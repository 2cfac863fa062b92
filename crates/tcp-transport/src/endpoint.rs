//! [`TcpEndpoint`]: one node's window, its server, and its client threads to peers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmsgd_core::{Completion, NodeId, OpId, Transport, TransportError};

use crate::client::{PeerLink, Request};
use crate::server::{lock, Published, Server, Shared};
use crate::{JobAuth, TcpConfig, TcpError};

/// Counters of a node's server, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections that completed the handshake.
    pub accepted: u64,
    /// Connections refused before or at the handshake (garbage, wrong version, job, secret or
    /// node id, too many connections, or too slow).
    pub refused: u64,
    /// Authenticated connections dropped for a malformed or incomplete request.
    pub dropped: u64,
}

struct PeerHandle {
    requests: Sender<Request>,
}

/// One node's endpoint on a TCP fabric: implements [`swarmsgd_core::Transport`].
///
/// Create it with [`TcpEndpoint::bind`], publish its [`local_addr`](TcpEndpoint::local_addr)
/// to the other nodes, then register the peers it will read and write with
/// [`connect_peers`](TcpEndpoint::connect_peers). Peers that connect to this node need not be
/// registered: any node of the same job (same [`JobAuth`]) may read its window and gets its own
/// inbox slot. Dropping the endpoint stops its server and closes every connection.
pub struct TcpEndpoint {
    shared: Arc<Shared>,
    server: Server,
    peers: HashMap<NodeId, PeerHandle>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    /// Completions decided without the network (e.g. an unknown peer).
    ready: VecDeque<Completion>,
    next_op: OpId,
    in_flight: usize,
    /// Slots visited by the last `take_inbox` (writer, deposit counter), freed by `release_inbox`.
    taken: Vec<(NodeId, u64)>,
    /// Window buffers: the published one, ones servers are still sending from, and free ones.
    buffers: Vec<Arc<Vec<u8>>>,
    /// Payload buffers for writes, handed back by the client threads once sent.
    payloads: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Empty polls a waiting node spins through before it sleeps on the completion channel.
const IDLE_SPINS: u32 = 64;
/// The longest a waiting node sleeps before it polls again.
const IDLE_SLEEP: Duration = Duration::from_millis(1);

/// Window buffers in the pool past which those no one holds are dropped.
const MAX_BUFFERS: usize = 4;

impl TcpEndpoint {
    /// Node `me` listening on `addr` (port 0 picks a free port) with a window and inbox slots of
    /// `capacity` bytes (rounded up to a multiple of 8), default timeouts ([`TcpConfig::default`]).
    /// `job` is a [`JobAuth`] (or, with the `rendezvous` feature, a `swarmsgd_rendezvous::JobAuth`).
    pub fn bind(
        me: NodeId,
        addr: SocketAddr,
        capacity: usize,
        job: impl Into<JobAuth>,
    ) -> Result<Self, TcpError> {
        Self::bind_with(me, addr, capacity, job, TcpConfig::default())
    }

    /// Like [`TcpEndpoint::bind`], with the given timeouts and limits.
    pub fn bind_with(
        me: NodeId,
        addr: SocketAddr,
        capacity: usize,
        job: impl Into<JobAuth>,
        config: TcpConfig,
    ) -> Result<Self, TcpError> {
        let job = job.into();
        if config.connect_timeout.is_zero() || config.io_timeout.is_zero() {
            return Err(TcpError::Config(
                "timeouts must be positive (a zero timeout would mean waiting forever)".into(),
            ));
        }
        if config.max_connections == 0 {
            return Err(TcpError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let capacity = capacity
            .checked_next_multiple_of(8)
            .filter(|&c| u64::try_from(c).is_ok())
            .ok_or_else(|| TcpError::Config(format!("capacity {capacity} is too large")))?;
        let listener = TcpListener::bind(addr).map_err(|source| TcpError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            me,
            capacity,
            auth: job,
            config,
            published: Mutex::new(Published {
                version: 0,
                len: 0,
                data: Arc::new(Vec::new()),
            }),
            inbox: Mutex::new(BTreeMap::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let server = Server::start(listener, shared.clone())
            .map_err(|source| TcpError::Bind { addr, source })?;
        let (done_tx, done_rx) = mpsc::channel();
        Ok(TcpEndpoint {
            shared,
            server,
            peers: HashMap::new(),
            done_tx,
            done_rx,
            ready: VecDeque::new(),
            next_op: 0,
            in_flight: 0,
            taken: Vec::new(),
            buffers: Vec::new(),
            payloads: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The address the server listens on (with the port actually bound).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The timeouts and limits in force.
    pub fn config(&self) -> &TcpConfig {
        &self.shared.config
    }

    /// Registers the peers this node reads and writes, by id and server address, and starts
    /// connecting to them in the background (a failed connection is retried by each operation).
    /// A peer registered again gets the new address (e.g. after it restarted); operations already
    /// started on the old connection still complete.
    pub fn connect_peers(&mut self, peers: &[(NodeId, SocketAddr)]) -> Result<(), TcpError> {
        if let Some(&(peer, _)) = peers.iter().find(|(peer, _)| *peer == self.shared.me) {
            return Err(TcpError::Config(format!(
                "node {peer} cannot be its own peer"
            )));
        }
        for &(peer, addr) in peers {
            let (requests, incoming) = mpsc::channel();
            let link = PeerLink::new(
                self.shared.me,
                peer,
                addr,
                self.shared.auth.clone(),
                self.shared.config.clone(),
            );
            let done = self.done_tx.clone();
            std::thread::Builder::new()
                .name(format!("tcp-client-{}-{peer}", self.shared.me))
                .spawn(move || link.run(incoming, done))
                .map_err(|e| TcpError::Config(format!("cannot spawn a client thread: {e}")))?;
            self.peers.insert(peer, PeerHandle { requests });
        }
        Ok(())
    }

    /// The registered peers, in increasing id order.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Counters of this node's server.
    pub fn server_stats(&self) -> ServerStats {
        ServerStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    fn not_a_peer(&self, peer: NodeId) -> TransportError {
        TransportError::NotANeighbour {
            me: self.shared.me,
            peer,
            why: "not a registered peer (see TcpEndpoint::connect_peers)".into(),
        }
    }

    fn next_op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    /// Hands `request` to `peer`'s client thread; false if there is none (or it is gone).
    fn send(&mut self, peer: NodeId, request: Request) -> Result<(), Request> {
        match self.peers.get(&peer) {
            Some(handle) => handle.requests.send(request).map_err(|e| e.0),
            None => Err(request),
        }
    }

    fn failed(&self, peer: NodeId) -> TransportError {
        if self.peers.contains_key(&peer) {
            TransportError::Unreachable {
                peer,
                why: "its client thread has stopped".into(),
            }
        } else {
            self.not_a_peer(peer)
        }
    }
}

impl Transport for TcpEndpoint {
    fn node(&self) -> NodeId {
        self.shared.me
    }

    fn capacity(&self) -> usize {
        self.shared.capacity
    }

    fn publish(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.publish_with(payload.len(), &mut |offset, chunk| {
            chunk.copy_from_slice(&payload[offset..offset + chunk.len()]);
        })
    }

    fn publish_with(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]),
    ) -> Result<(), TransportError> {
        if len > self.shared.capacity {
            return Err(TransportError::TooLarge {
                len,
                capacity: self.shared.capacity,
            });
        }
        // Filled outside the lock, in a buffer no server is sending from: publishing never waits
        // for a read being answered, and a read never copies the window.
        // A buffer only this pool holds: servers clone only the published one, under the lock.
        let mut buf = match self.buffers.iter().position(|b| Arc::strong_count(b) == 1) {
            Some(k) => self.buffers.swap_remove(k),
            None => Arc::new(vec![0; self.shared.capacity]),
        };
        // Unshared, so this borrows it in place; it would copy a shared one, never write it.
        fill(0, &mut Arc::make_mut(&mut buf)[..len]);
        let mut published = lock(&self.shared.published);
        published.data = buf.clone();
        published.len = len;
        published.version += 1;
        drop(published);
        // Buffers come back as servers finish sending them; past a few, drop those no one holds.
        if self.buffers.len() >= MAX_BUFFERS {
            self.buffers.retain(|b| Arc::strong_count(b) > 1);
        }
        self.buffers.push(buf);
        Ok(())
    }

    fn start_read(
        &mut self,
        peer: NodeId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    ) -> Result<OpId, TransportError> {
        let op = self.next_op();
        let request = Request::Read {
            started: Instant::now(),
            op,
            offset,
            len,
            buf,
        };
        match self.send(peer, request) {
            Ok(()) => self.in_flight += 1,
            Err(request) => {
                let buf = match request {
                    Request::Read { buf, .. } => buf,
                    _ => Vec::new(),
                };
                let result = Err(self.failed(peer));
                self.ready.push_back(Completion::Read {
                    op,
                    peer,
                    buf,
                    result,
                });
            }
        }
        Ok(op)
    }

    fn start_write(&mut self, peer: NodeId, payload: &[u8]) -> Result<OpId, TransportError> {
        let op = self.next_op();
        let mut buf = lock(&self.payloads).pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        let request = Request::Write {
            started: Instant::now(),
            op,
            payload: buf,
            recycle: self.payloads.clone(),
        };
        match self.send(peer, request) {
            Ok(()) => self.in_flight += 1,
            Err(_) => {
                let result = Err(self.failed(peer));
                self.ready.push_back(Completion::Write { op, peer, result });
            }
        }
        Ok(op)
    }

    fn poll(&mut self) -> Option<Completion> {
        if let Some(done) = self.ready.pop_front() {
            return Some(done);
        }
        // Never yields or sleeps: a node that overlaps polls between local steps, and giving up
        // its core there (to another rank on a shared machine) costs it a scheduler slice.
        let done = self.done_rx.try_recv().ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(done)
    }

    /// A node with nothing to do but wait sleeps until a completion arrives (at most a
    /// millisecond at a time), after a few spins for operations that finish at once.
    fn idle(&mut self, empty_polls: u32) {
        if empty_polls < IDLE_SPINS || self.in_flight == 0 {
            std::hint::spin_loop();
            return;
        }
        if let Ok(done) = self.done_rx.recv_timeout(IDLE_SLEEP) {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.ready.push_back(done);
        }
    }

    fn slot_free_at(&mut self, peer: NodeId) -> Result<bool, TransportError> {
        let (reply, answer) = mpsc::channel();
        if self
            .send(
                peer,
                Request::SlotFree {
                    started: Instant::now(),
                    reply,
                },
            )
            .is_err()
        {
            return Err(self.failed(peer));
        }
        // The client thread always answers within its timeouts; a closed channel means it is gone.
        answer.recv().unwrap_or_else(|_| Err(self.failed(peer)))
    }

    fn take_inbox(
        &mut self,
        visit: &mut dyn FnMut(NodeId, &[u8]),
    ) -> Result<usize, TransportError> {
        self.taken.clear();
        let inbox = lock(&self.shared.inbox);
        for (&writer, slot) in inbox.iter() {
            if slot.deposited != slot.consumed {
                visit(writer, &slot.data);
                self.taken.push((writer, slot.deposited));
            }
        }
        Ok(self.taken.len())
    }

    fn release_inbox(&mut self) -> Result<(), TransportError> {
        let mut inbox = lock(&self.shared.inbox);
        for (writer, deposited) in self.taken.drain(..) {
            if let Some(slot) = inbox.get_mut(&writer) {
                slot.consumed = deposited;
            }
        }
        Ok(())
    }
}
