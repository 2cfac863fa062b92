//! The node's window and the server thread that answers peers' requests on it.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swarmsgd_core::NodeId;

use crate::io::{read_exact_by, wait_first_byte, write_all_by};
use crate::wire::{
    Ack, AckStatus, Header, Hello, Kind, Status, HEADER_LEN, HELLO_LEN, PROTOCOL_VERSION,
};
use crate::{JobAuth, TcpConfig};

/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Locks a mutex; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The published payload.
pub(crate) struct Published {
    /// Publish counter: 0 = never published.
    pub(crate) version: u64,
    pub(crate) len: usize,
    /// `capacity` bytes, of which the first `len` are the payload. Never written once published:
    /// a server answering a read takes a reference under the lock and sends from it after
    /// releasing the lock, while the node fills the next payload into another buffer.
    pub(crate) data: Arc<Vec<u8>>,
}

/// One writer's inbox slot.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) deposited: u64,
    pub(crate) consumed: u64,
    /// The last deposit (at most `capacity` bytes).
    pub(crate) data: Vec<u8>,
}

/// The node's window, shared by the node and its server thread.
pub(crate) struct Shared {
    pub(crate) me: NodeId,
    pub(crate) capacity: usize,
    pub(crate) auth: JobAuth,
    pub(crate) config: TcpConfig,
    pub(crate) published: Mutex<Published>,
    /// One slot per writer, by writer id.
    pub(crate) inbox: Mutex<BTreeMap<NodeId, Slot>>,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// The running server: its accept thread and the open connections, to be shut on drop.
pub(crate) struct Server {
    shutdown: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<JoinHandle<()>>,
    pub(crate) addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let accept = {
            let shutdown = shutdown.clone();
            let conns = conns.clone();
            std::thread::Builder::new()
                .name(format!("tcp-server-{}", shared.me))
                .spawn(move || accept_loop(listener, shared, shutdown, conns))?
        };
        Ok(Server {
            shutdown,
            conns,
            accept: Some(accept),
            addr,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        {
            let conns = lock(&self.conns);
            self.shutdown.store(true, Ordering::SeqCst);
            for stream in conns.values() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_conn = 0u64;
    while !shutdown.load(Ordering::SeqCst) {
        let (stream, from) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!(node = shared.me, error = %e, "accept failed");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        handlers.retain(|h| !h.is_finished());
        let clone = match stream
            .set_nonblocking(false)
            .and_then(|()| stream.try_clone())
        {
            Ok(clone) => clone,
            Err(e) => {
                tracing::warn!(node = shared.me, %from, error = %e, "cannot set up a connection");
                continue;
            }
        };
        let id = next_conn;
        next_conn += 1;
        {
            let mut open = lock(&conns);
            if shutdown.load(Ordering::SeqCst) {
                break;
            }
            if open.len() >= shared.config.max_connections {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = shared.me, %from, "refused: too many connections");
                continue;
            }
            open.insert(id, clone);
        }
        let spawned = {
            let shared = shared.clone();
            let conns = conns.clone();
            std::thread::Builder::new()
                .name(format!("tcp-conn-{}", shared.me))
                .spawn(move || {
                    serve(stream, from, &shared);
                    lock(&conns).remove(&id);
                })
        };
        match spawned {
            Ok(handle) => handlers.push(handle),
            Err(e) => {
                tracing::warn!(node = shared.me, %from, error = %e, "cannot spawn a handler");
                lock(&conns).remove(&id);
            }
        }
    }
    drop(listener);
    for handle in handlers {
        let _ = handle.join();
    }
}

/// Why a connection ended early.
enum End {
    /// The peer closed between frames.
    Closed,
    /// Refused or dropped; already logged and counted.
    Dropped,
}

fn serve(mut stream: TcpStream, from: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Some(peer) = handshake(&mut stream, from, shared) else {
        return;
    };
    tracing::debug!(node = shared.me, peer, %from, "peer connected");
    let mut payload = Vec::new();
    let mut out = Vec::new();
    loop {
        match serve_one(&mut stream, peer, shared, &mut payload, &mut out) {
            Ok(()) => {}
            Err(End::Closed) => return,
            Err(End::Dropped) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Reads and checks the client's hello; answers it. Returns the authenticated peer id.
fn handshake(stream: &mut TcpStream, from: SocketAddr, shared: &Shared) -> Option<NodeId> {
    let deadline = Instant::now() + shared.config.io_timeout;
    let mut bytes = [0u8; HELLO_LEN];
    let refuse = |why: &str| {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = shared.me, %from, "refused connection: {why}");
    };
    if let Err(e) = read_exact_by(stream, &mut bytes, deadline) {
        refuse(&format!("no complete handshake: {e}"));
        return None;
    }
    let hello = match Hello::decode(&bytes) {
        Ok(hello) => hello,
        Err(e) => {
            refuse(&e.to_string());
            return None;
        }
    };
    let claimed = usize::try_from(hello.from).ok();
    let status = if hello.version != PROTOCOL_VERSION {
        AckStatus::BadVersion
    } else if hello.job != shared.auth.job {
        AckStatus::WrongJob
    } else if !shared.auth.secret_matches(&hello.secret) {
        AckStatus::BadSecret
    } else if hello.to != shared.me as u64 || claimed.is_none_or(|p| p == shared.me) {
        AckStatus::WrongNode
    } else {
        AckStatus::Accepted
    };
    let mut status = status;
    if let (AckStatus::Accepted, Some(peer)) = (status, claimed) {
        let mut inbox = lock(&shared.inbox);
        if inbox.len() >= shared.config.max_connections && !inbox.contains_key(&peer) {
            status = AckStatus::TooManyConnections;
        } else {
            inbox.entry(peer).or_default();
        }
    }
    let accepted = match (status, claimed) {
        (AckStatus::Accepted, Some(peer)) => Some(peer),
        _ => {
            // Counted before answering, so that whoever sees the refusal also sees the count.
            refuse(&format!(
                "{status:?} (version {}, job {}, claims node {} and wants node {})",
                hello.version, hello.job, hello.from, hello.to
            ));
            None
        }
    };
    let ack = Ack {
        version: PROTOCOL_VERSION,
        status,
        job: shared.auth.job,
        node: shared.me as u64,
        capacity: shared.capacity as u64,
    };
    if let Err(e) = write_all_by(stream, &ack.encode(), deadline) {
        if accepted.is_some() {
            refuse(&format!("cannot answer the handshake: {e}"));
        }
        return None;
    }
    if accepted.is_some() {
        shared.accepted.fetch_add(1, Ordering::Relaxed);
    }
    accepted
}

fn serve_one(
    stream: &mut TcpStream,
    peer: NodeId,
    shared: &Shared,
    payload: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), End> {
    let drop_conn = |why: &str| {
        tracing::warn!(node = shared.me, peer, "dropping connection: {why}");
        End::Dropped
    };
    let mut bytes = [0u8; HEADER_LEN];
    let mut first = [0u8; 1];
    match wait_first_byte(stream, &mut first) {
        Ok(true) => {}
        Ok(false) => return Err(End::Closed),
        Err(e) => {
            tracing::debug!(node = shared.me, peer, error = %e, "connection ended");
            return Err(End::Closed);
        }
    }
    bytes[0] = first[0];
    let deadline = Instant::now() + shared.config.io_timeout;
    read_exact_by(stream, &mut bytes[1..], deadline)
        .map_err(|e| drop_conn(&format!("incomplete header: {e}")))?;
    let request = Header::decode(&bytes).map_err(|e| drop_conn(&e.to_string()))?;
    if request.status != Status::Ok {
        return Err(drop_conn("request with a status"));
    }
    let reply = |status: Status, a: u64, b: u64| Header {
        kind: request.kind,
        status,
        req: request.req,
        a,
        b,
    };
    out.clear();
    // A read's answer: the published buffer it was taken from, sent after the header.
    let mut snapshot = None;
    match request.kind {
        Kind::Read => {
            let end = request.a.checked_add(request.b);
            let header = match end {
                Some(end) if request.a % 8 == 0 && end <= shared.capacity as u64 => {
                    let (offset, len) = (request.a as usize, request.b as usize);
                    let published = lock(&shared.published);
                    if published.version == 0 {
                        reply(Status::NotPublished, 0, 0)
                    } else if offset + len > published.len {
                        reply(Status::TooLarge, end, published.len as u64)
                    } else {
                        snapshot = Some((published.data.clone(), offset..offset + len));
                        reply(Status::Ok, published.version, len as u64)
                    }
                }
                _ => reply(
                    Status::TooLarge,
                    end.unwrap_or(u64::MAX),
                    shared.capacity as u64,
                ),
            };
            out.extend_from_slice(&header.encode());
        }
        Kind::WriteInbox => {
            if request.b != 0 {
                return Err(drop_conn("write with a non-zero second argument"));
            }
            if request.a > shared.capacity as u64 {
                // The payload cannot be read without trusting its length: answer and hang up.
                let header = reply(Status::TooLarge, request.a, shared.capacity as u64);
                let _ = write_all_by(stream, &header.encode(), deadline);
                return Err(drop_conn("write larger than the window"));
            }
            payload.resize(request.a as usize, 0);
            read_exact_by(stream, payload, deadline)
                .map_err(|e| drop_conn(&format!("incomplete payload: {e}")))?;
            let status = {
                let mut inbox = lock(&shared.inbox);
                let slot = inbox.entry(peer).or_default();
                if slot.consumed != slot.deposited {
                    Status::Busy
                } else {
                    // The slot keeps the received buffer; its old one receives the next deposit.
                    std::mem::swap(&mut slot.data, payload);
                    slot.deposited += 1;
                    Status::Ok
                }
            };
            out.extend_from_slice(&reply(status, 0, 0).encode());
        }
        Kind::SlotFree => {
            if request.a != 0 || request.b != 0 {
                return Err(drop_conn("slot query with arguments"));
            }
            let free = lock(&shared.inbox)
                .get(&peer)
                .is_none_or(|slot| slot.consumed == slot.deposited);
            let status = if free { Status::Ok } else { Status::Busy };
            out.extend_from_slice(&reply(status, 0, 0).encode());
        }
    }
    let body = snapshot
        .as_ref()
        .map_or(&[][..], |(data, range)| &data[range.clone()]);
    for part in [&out[..], body] {
        write_all_by(stream, part, deadline)
            .map_err(|e| drop_conn(&format!("cannot answer: {e}")))?;
    }
    Ok(())
}
