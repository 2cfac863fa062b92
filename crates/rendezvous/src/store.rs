//! The job's key-value store: rank 0 serves it, every rank publishes records and waits for others'.
//!
//! Wire format (little endian). A connection opens with a 56-byte hello: magic `SWRZ`, protocol
//! version (u16), flags (u16, zero), job id (u64), rank (u32, [`OBSERVER`] for a process without
//! one), reserved (u32, zero), the 32-byte secret. The server answers 8 bytes: magic, a status
//! byte ([`HelloStatus`]) and three zero bytes, and closes the connection unless the status is
//! `Accepted`. Then each request is a 12-byte header (op u8, zero u8, key length u16, value
//! length u32, timeout in ms u32), the key (UTF-8) and the value; each response a header (status
//! u8, three zero bytes, value length u32) and the value.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{JobAuth, RendezvousError, SECRET_LEN};

const MAGIC: [u8; 4] = *b"SWRZ";
/// Version of the store's wire protocol; a peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
const HELLO_LEN: usize = 56;
const REQUEST_LEN: usize = 12;
const RESPONSE_LEN: usize = 8;
/// The rank a process without one (a monitoring tool) presents.
pub const OBSERVER: u32 = u32::MAX;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_LAST_SEEN: u8 = 3;
const OP_PING: u8 = 4;

const STATUS_OK: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_REFUSED: u8 = 2;

/// The server's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    /// Credentials match: requests may follow.
    Accepted = 0,
    /// Not this protocol, or another version of it.
    WrongProtocol = 1,
    /// Another job's process.
    WrongJob = 2,
    /// The job id matches but the secret does not.
    WrongSecret = 3,
    /// The rank is outside the job's world size.
    WrongRank = 4,
}

impl HelloStatus {
    fn from_byte(b: u8) -> Option<HelloStatus> {
        [
            HelloStatus::Accepted,
            HelloStatus::WrongProtocol,
            HelloStatus::WrongJob,
            HelloStatus::WrongSecret,
            HelloStatus::WrongRank,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            HelloStatus::Accepted => "accepted",
            HelloStatus::WrongProtocol => "not the same protocol or version",
            HelloStatus::WrongJob => "another job's id",
            HelloStatus::WrongSecret => "wrong job secret",
            HelloStatus::WrongRank => "rank outside the job",
        }
    }
}

/// Limits and timeouts of the store, for the server and its clients.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a new connection may take to present its hello, and a started request or
    /// response to arrive completely.
    pub io_timeout: Duration,
    /// How long a client keeps retrying to reach the store (rank 0 may start last).
    pub connect_timeout: Duration,
    /// Largest value of one key, in bytes.
    pub max_value_len: usize,
    /// Most bytes the store holds in all values together.
    pub max_total_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for StoreConfig {
    /// 10 s I/O, 60 s to reach the store, 1 GiB per value, 8 GiB in all, 4096 connections.
    fn default() -> Self {
        StoreConfig {
            io_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(60),
            max_value_len: 1 << 30,
            max_total_bytes: 8 << 30,
            max_connections: 4096,
        }
    }
}

#[derive(Default)]
struct Table {
    values: HashMap<String, Vec<u8>>,
    total_bytes: usize,
}

struct Peers {
    last_seen: Vec<Option<Instant>>,
    open_connections: Vec<u32>,
}

struct ServerState {
    auth: JobAuth,
    world_size: usize,
    config: StoreConfig,
    table: Mutex<Table>,
    changed: Condvar,
    peers: Mutex<Peers>,
    stop: AtomicBool,
    refused: AtomicU64,
    connections: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rank 0's store server. Dropping it stops the server.
pub struct StoreServer {
    state: Arc<ServerState>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl StoreServer {
    /// Listens on `addr` (port 0 picks a free one) for the job's `world_size` ranks.
    pub fn bind(
        addr: SocketAddr,
        auth: JobAuth,
        world_size: usize,
        config: StoreConfig,
    ) -> Result<StoreServer, RendezvousError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| RendezvousError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RendezvousError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| RendezvousError::Bind { addr, source })?;
        let state = Arc::new(ServerState {
            auth,
            world_size,
            config,
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            peers: Mutex::new(Peers {
                last_seen: vec![None; world_size],
                open_connections: vec![0; world_size],
            }),
            stop: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let acceptor = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("rendezvous-store".into())
                .spawn(move || accept_loop(listener, state))
                .map_err(|source| RendezvousError::Bind { addr, source })?
        };
        Ok(StoreServer {
            state,
            addr,
            acceptor: Some(acceptor),
        })
    }

    /// The address the store listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were refused (bad hello, wrong credentials, malformed requests).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.changed.notify_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
    while !state.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                if state.connections.load(Ordering::Relaxed) >= state.config.max_connections as u64
                {
                    state.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%from, "rendezvous: refused a connection: too many open");
                    continue;
                }
                state.connections.fetch_add(1, Ordering::Relaxed);
                let conn_state = Arc::clone(&state);
                let spawned = std::thread::Builder::new()
                    .name("rendezvous-conn".into())
                    .spawn(move || {
                        serve_connection(stream, from, &conn_state);
                        conn_state.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    state.connections.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(%from, error = %e, "rendezvous: cannot serve a connection");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rendezvous: accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn refuse(state: &ServerState, from: SocketAddr, why: &str) {
    state.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%from, "rendezvous: refused connection: {why}");
}

fn serve_connection(mut stream: TcpStream, from: SocketAddr, state: &ServerState) {
    let io_timeout = state.config.io_timeout;
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(io_timeout)).is_err()
        || stream.set_write_timeout(Some(io_timeout)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut hello = [0u8; HELLO_LEN];
    if let Err(e) = stream.read_exact(&mut hello) {
        refuse(
            state,
            from,
            &format!("no complete hello within the timeout ({e})"),
        );
        return;
    }
    let status = check_hello(&hello, state);
    let mut reply = [0u8; RESPONSE_LEN];
    reply[..4].copy_from_slice(&MAGIC);
    reply[4] = status as u8;
    if status != HelloStatus::Accepted {
        refuse(state, from, status.describe());
        let _ = stream.write_all(&reply);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    if stream.write_all(&reply).is_err() {
        return;
    }
    let rank = u32::from_le_bytes([hello[16], hello[17], hello[18], hello[19]]);
    let rank = (rank != OBSERVER).then_some(rank as usize);
    if let Some(r) = rank {
        let mut peers = lock(&state.peers);
        peers.open_connections[r] += 1;
        peers.last_seen[r] = Some(Instant::now());
    }
    let result = request_loop(&mut stream, rank, state);
    if let Some(r) = rank {
        let mut peers = lock(&state.peers);
        peers.open_connections[r] = peers.open_connections[r].saturating_sub(1);
    }
    if let Err(why) = result {
        refuse(state, from, &why);
    }
}

fn check_hello(hello: &[u8; HELLO_LEN], state: &ServerState) -> HelloStatus {
    let version = u16::from_le_bytes([hello[4], hello[5]]);
    if hello[..4] != MAGIC || version != PROTOCOL_VERSION || hello[6..8] != [0, 0] {
        return HelloStatus::WrongProtocol;
    }
    let job = u64::from_le_bytes(hello[8..16].try_into().unwrap_or_default());
    if job != state.auth.job {
        return HelloStatus::WrongJob;
    }
    let mut secret = [0u8; SECRET_LEN];
    secret.copy_from_slice(&hello[24..24 + SECRET_LEN]);
    if !state.auth.secret_matches(&secret) {
        return HelloStatus::WrongSecret;
    }
    let rank = u32::from_le_bytes([hello[16], hello[17], hello[18], hello[19]]);
    if rank != OBSERVER && rank as usize >= state.world_size {
        return HelloStatus::WrongRank;
    }
    HelloStatus::Accepted
}

/// Serves requests until the peer closes the connection (`Ok`) or misbehaves (`Err(why)`).
fn request_loop(
    stream: &mut TcpStream,
    rank: Option<usize>,
    state: &ServerState,
) -> Result<(), String> {
    loop {
        // Idle connections are fine: wait for the first byte of the next request without limit.
        let mut first = [0u8; 1];
        loop {
            if state.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match stream.read(&mut first) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(()),
            }
        }
        let mut header = [0u8; REQUEST_LEN];
        header[0] = first[0];
        stream
            .read_exact(&mut header[1..])
            .map_err(|e| format!("incomplete request header: {e}"))?;
        let op = header[0];
        let key_len = u16::from_le_bytes([header[2], header[3]]) as usize;
        let value_len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as usize;
        let timeout_ms = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if header[1] != 0 || key_len > MAX_KEY_LEN {
            return Err(format!(
                "malformed request header (op {op}, key length {key_len})"
            ));
        }
        if value_len > state.config.max_value_len {
            return Err(format!(
                "value of {value_len} bytes exceeds the limit of {}",
                state.config.max_value_len
            ));
        }
        let mut key = vec![0u8; key_len];
        stream
            .read_exact(&mut key)
            .map_err(|e| format!("incomplete key: {e}"))?;
        let key = String::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
        if let Some(r) = rank {
            lock(&state.peers).last_seen[r] = Some(Instant::now());
        }
        match op {
            OP_SET => {
                let mut value = Vec::new();
                read_value(stream, value_len, &mut value)?;
                let stored = {
                    let mut table = lock(&state.table);
                    let old = table.values.get(&key).map_or(0, Vec::len);
                    if table.total_bytes - old + value.len() > state.config.max_total_bytes {
                        false
                    } else {
                        table.total_bytes = table.total_bytes - old + value.len();
                        table.values.insert(key, value);
                        true
                    }
                };
                state.changed.notify_all();
                respond(stream, if stored { STATUS_OK } else { STATUS_REFUSED }, &[])?;
            }
            OP_GET if value_len == 0 => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
                let mut table = lock(&state.table);
                let value = loop {
                    if let Some(v) = table.values.get(&key) {
                        break Some(v.clone());
                    }
                    let now = Instant::now();
                    if now >= deadline || state.stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    let wait = (deadline - now).min(Duration::from_millis(200));
                    table = state
                        .changed
                        .wait_timeout(table, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                };
                drop(table);
                match value {
                    Some(v) => respond(stream, STATUS_OK, &v)?,
                    None => respond(stream, STATUS_NOT_FOUND, &[])?,
                }
            }
            OP_LAST_SEEN if value_len == 0 => {
                let now = Instant::now();
                let peers = lock(&state.peers);
                let mut out = Vec::with_capacity(9 * state.world_size);
                for (seen, open) in peers.last_seen.iter().zip(&peers.open_connections) {
                    let age = seen.map_or(u64::MAX, |t| (now - t).as_millis() as u64);
                    out.extend_from_slice(&age.to_le_bytes());
                    out.push(u8::from(*open > 0));
                }
                drop(peers);
                respond(stream, STATUS_OK, &out)?;
            }
            OP_PING if value_len == 0 => respond(stream, STATUS_OK, &[])?,
            _ => return Err(format!("unknown request (op {op})")),
        }
    }
}

fn read_value(stream: &mut TcpStream, len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    // Grow with the bytes that really arrive, so a claimed length costs nothing until sent.
    out.clear();
    let mut chunk = [0u8; 64 * 1024];
    while out.len() < len {
        let want = (len - out.len()).min(chunk.len());
        stream
            .read_exact(&mut chunk[..want])
            .map_err(|e| format!("incomplete value: {e}"))?;
        out.extend_from_slice(&chunk[..want]);
    }
    Ok(())
}

fn respond(stream: &mut TcpStream, status: u8, value: &[u8]) -> Result<(), String> {
    let mut header = [0u8; RESPONSE_LEN];
    header[0] = status;
    header[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
    stream
        .write_all(&header)
        .and_then(|_| stream.write_all(value))
        .map_err(|e| format!("cannot answer: {e}"))
}

/// What the store knows of one rank's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Time since the rank's last request, `None` if it never connected.
    pub last_seen: Option<Duration>,
    /// Whether the rank has a connection open to the store now.
    pub connected: bool,
}

/// A connection to the job's store.
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    config: StoreConfig,
}

impl Client {
    /// Connects to the store at `addr` (`host:port`) as `rank` ([`OBSERVER`] for none), retrying
    /// until `config.connect_timeout` while the store is not up yet.
    pub fn connect(
        addr: &str,
        auth: &JobAuth,
        rank: u32,
        config: StoreConfig,
    ) -> Result<Client, RendezvousError> {
        let deadline = Instant::now() + config.connect_timeout;
        let unreachable = |source: std::io::Error| RendezvousError::Unreachable {
            addr: addr.to_string(),
            source,
        };
        loop {
            let attempt = (|| -> Result<Client, RendezvousError> {
                let resolved = addr
                    .to_socket_addrs()
                    .map_err(|e| RendezvousError::Env(format!("cannot resolve {addr:?}: {e}")))?
                    .next()
                    .ok_or_else(|| RendezvousError::Env(format!("{addr:?} resolves to nothing")))?;
                let stream = TcpStream::connect_timeout(&resolved, config.io_timeout)
                    .map_err(unreachable)?;
                stream
                    .set_read_timeout(Some(config.io_timeout))
                    .and_then(|_| stream.set_write_timeout(Some(config.io_timeout)))
                    .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                let mut client = Client {
                    stream,
                    addr: resolved,
                    config: config.clone(),
                };
                client.hello(auth, rank)?;
                Ok(client)
            })();
            match attempt {
                Ok(c) => return Ok(c),
                Err(e @ (RendezvousError::Refused(_) | RendezvousError::Env(_))) => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn hello(&mut self, auth: &JobAuth, rank: u32) -> Result<(), RendezvousError> {
        let mut hello = [0u8; HELLO_LEN];
        hello[..4].copy_from_slice(&MAGIC);
        hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello[8..16].copy_from_slice(&auth.job.to_le_bytes());
        hello[16..20].copy_from_slice(&rank.to_le_bytes());
        hello[24..24 + SECRET_LEN].copy_from_slice(&auth.secret);
        self.stream.write_all(&hello).map_err(|e| self.lost(e))?;
        let mut reply = [0u8; RESPONSE_LEN];
        self.stream
            .read_exact(&mut reply)
            .map_err(|e| self.lost(e))?;
        if reply[..4] != MAGIC {
            return Err(RendezvousError::Refused(format!(
                "{} is not a swarm rendezvous store",
                self.addr
            )));
        }
        match HelloStatus::from_byte(reply[4]) {
            Some(HelloStatus::Accepted) => Ok(()),
            Some(s) => Err(RendezvousError::Refused(format!(
                "the store at {} refused this process: {}",
                self.addr,
                s.describe()
            ))),
            None => Err(RendezvousError::Refused(format!(
                "the store at {} answered an unknown status {}",
                self.addr, reply[4]
            ))),
        }
    }

    fn lost(&self, e: std::io::Error) -> RendezvousError {
        RendezvousError::Unreachable {
            addr: self.addr.to_string(),
            source: e,
        }
    }

    fn request(
        &mut self,
        op: u8,
        key: &str,
        value: &[u8],
        wait: Duration,
    ) -> Result<(u8, Vec<u8>), RendezvousError> {
        if key.len() > MAX_KEY_LEN {
            return Err(RendezvousError::Usage(format!(
                "key of {} bytes is longer than {MAX_KEY_LEN}",
                key.len()
            )));
        }
        if value.len() > self.config.max_value_len {
            return Err(RendezvousError::Usage(format!(
                "value of {} bytes exceeds the store's limit of {}",
                value.len(),
                self.config.max_value_len
            )));
        }
        let timeout_ms = wait.as_millis().min(u32::MAX as u128) as u32;
        let mut header = [0u8; REQUEST_LEN];
        header[0] = op;
        header[2..4].copy_from_slice(&(key.len() as u16).to_le_bytes());
        header[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&timeout_ms.to_le_bytes());
        let sent = self
            .stream
            .write_all(&header)
            .and_then(|_| self.stream.write_all(key.as_bytes()))
            .and_then(|_| self.stream.write_all(value));
        sent.map_err(|e| self.lost(e))?;
        self.stream
            .set_read_timeout(Some(wait + self.config.io_timeout))
            .map_err(|e| self.lost(e))?;
        let mut response = [0u8; RESPONSE_LEN];
        let got = self.stream.read_exact(&mut response);
        got.map_err(|e| self.lost(e))?;
        let len = u32::from_le_bytes(response[4..8].try_into().unwrap_or_default()) as usize;
        if len > self.config.max_value_len {
            return Err(RendezvousError::Refused(format!(
                "the store at {} answered a value of {len} bytes, over the limit",
                self.addr
            )));
        }
        let mut out = vec![0u8; len];
        self.stream.read_exact(&mut out).map_err(|e| self.lost(e))?;
        Ok((response[0], out))
    }

    /// Stores `value` under `key`, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RendezvousError> {
        match self.request(OP_SET, key, value, Duration::ZERO)? {
            (STATUS_OK, _) => Ok(()),
            _ => Err(RendezvousError::Refused(format!(
                "the store refused {key:?}: it holds too many bytes already"
            ))),
        }
    }

    /// The value under `key`, waiting up to `wait` for some rank to set it.
    pub fn get(&mut self, key: &str, wait: Duration) -> Result<Vec<u8>, RendezvousError> {
        match self.request(OP_GET, key, &[], wait)? {
            (STATUS_OK, v) => Ok(v),
            _ => Err(RendezvousError::Timeout {
                key: key.to_string(),
                waited: wait,
            }),
        }
    }

    /// The value under `key` if some rank has set it, without waiting.
    pub fn try_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, RendezvousError> {
        match self.get(key, Duration::ZERO) {
            Ok(v) => Ok(Some(v)),
            Err(RendezvousError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the store knows of every rank's liveness, indexed by rank.
    pub fn liveness(&mut self) -> Result<Vec<Liveness>, RendezvousError> {
        let (_, bytes) = self.request(OP_LAST_SEEN, "", &[], Duration::ZERO)?;
        if bytes.len() % 9 != 0 {
            return Err(RendezvousError::Refused(
                "malformed liveness answer from the store".into(),
            ));
        }
        Ok(bytes
            .chunks_exact(9)
            .map(|c| {
                let ms = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
                Liveness {
                    last_seen: (ms != u64::MAX).then(|| Duration::from_millis(ms)),
                    connected: c[8] != 0,
                }
            })
            .collect())
    }

    /// Tells the store this rank is alive.
    pub fn ping(&mut self) -> Result<(), RendezvousError> {
        self.request(OP_PING, "", &[], Duration::ZERO).map(|_| ())
    }

    /// The store's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> JobAuth {
        JobAuth::new(9, [5; SECRET_LEN])
    }

    fn quick() -> StoreConfig {
        StoreConfig {
            io_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            max_value_len: 1 << 20,
            max_total_bytes: 3 << 20,
            ..StoreConfig::default()
        }
    }

    fn server() -> StoreServer {
        StoreServer::bind("127.0.0.1:0".parse().unwrap(), auth(), 4, quick()).unwrap()
    }

    #[test]
    fn ranks_exchange_records_and_wait_for_late_ones() {
        let store = server();
        let addr = store.local_addr().to_string();
        let late = {
            let addr = addr.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut c = Client::connect(&addr, &auth(), 3, quick()).unwrap();
                c.set("endpoint/3", b"late record").unwrap();
            })
        };
        let mut c = Client::connect(&addr, &auth(), 0, quick()).unwrap();
        c.set("endpoint/0", &[1, 2, 3]).unwrap();
        assert_eq!(c.get("endpoint/0", Duration::ZERO).unwrap(), [1, 2, 3]);
        let waited = Instant::now();
        assert_eq!(
            c.get("endpoint/3", Duration::from_secs(5)).unwrap(),
            b"late record"
        );
        assert!(waited.elapsed() >= Duration::from_millis(150));
        late.join().unwrap();
        assert!(matches!(
            c.get("never", Duration::from_millis(100)),
            Err(RendezvousError::Timeout { .. })
        ));
        assert_eq!(c.try_get("never").unwrap(), None);
        c.set("endpoint/0", b"replaced").unwrap();
        assert_eq!(c.try_get("endpoint/0").unwrap().unwrap(), b"replaced");
        assert_eq!(store.refused(), 0);
    }

    #[test]
    fn liveness_follows_connections() {
        let store = server();
        let addr = store.local_addr().to_string();
        let mut observer = Client::connect(&addr, &auth(), OBSERVER, quick()).unwrap();
        let two = Client::connect(&addr, &auth(), 2, quick()).unwrap();
        let live = observer.liveness().unwrap();
        assert_eq!(live.len(), 4);
        assert!(live[2].connected && live[2].last_seen.is_some());
        assert!(!live[1].connected && live[1].last_seen.is_none());
        drop(two);
        let deadline = Instant::now() + Duration::from_secs(3);
        while observer.liveness().unwrap()[2].connected {
            assert!(Instant::now() < deadline, "closed connection still counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(observer.liveness().unwrap()[2].last_seen.is_some());
    }

    #[test]
    fn wrong_credentials_are_refused_and_counted() {
        let store = server();
        let addr = store.local_addr().to_string();
        let cases = [
            (JobAuth::new(10, [5; SECRET_LEN]), 0, "another job"),
            (JobAuth::new(9, [6; SECRET_LEN]), 0, "wrong job secret"),
            (auth(), 4, "rank outside"),
        ];
        for (i, (creds, rank, why)) in cases.iter().enumerate() {
            let err = Client::connect(&addr, creds, *rank, quick())
                .err()
                .expect("accepted");
            assert!(err.to_string().contains(why), "{err}");
            assert_eq!(store.refused(), i as u64 + 1);
        }
        // Still serving the job's own ranks.
        let mut c = Client::connect(&addr, &auth(), 1, quick()).unwrap();
        c.set("k", b"v").unwrap();
    }

    #[test]
    fn hostile_bytes_are_refused_without_harm() {
        let store = server();
        let addr = store.local_addr();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..20u64 {
            let mut s = TcpStream::connect(addr).unwrap();
            let len = (round * 7 % 80) as usize;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let _ = s.write_all(&junk);
            if round % 2 == 0 {
                drop(s); // truncated hello
            } else {
                let _ = s.shutdown(Shutdown::Write);
                let mut sink = Vec::new();
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read_to_end(&mut sink);
            }
        }
        // A valid hello followed by a request claiming an oversized value.
        let mut c = Client::connect(&addr.to_string(), &auth(), 0, quick()).unwrap();
        let mut header = [0u8; REQUEST_LEN];
        header[0] = OP_SET;
        header[2..4].copy_from_slice(&1u16.to_le_bytes());
        header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        c.stream.write_all(&header).unwrap();
        c.stream.write_all(b"k").unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(c.stream.read(&mut buf), Ok(0) | Err(_)));
        let deadline = Instant::now() + Duration::from_secs(3);
        while store.refused() < 21 {
            assert!(Instant::now() < deadline, "refused {}", store.refused());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut ok = Client::connect(&addr.to_string(), &auth(), 1, quick()).unwrap();
        ok.set("still", b"works").unwrap();
        assert_eq!(ok.get("still", Duration::ZERO).unwrap(), b"works");
    }

    #[test]
    fn the_store_bounds_its_memory() {
        let store = server();
        let mut c = Client::connect(&store.local_addr().to_string(), &auth(), 0, quick()).unwrap();
        let mb = vec![7u8; 1 << 20];
        c.set("a", &mb).unwrap();
        c.set("b", &mb).unwrap();
        c.set("c", &mb).unwrap();
        let err = c.set("d", &mb).unwrap_err().to_string();
        assert!(err.contains("too many bytes"), "{err}");
        c.set("a", &mb).unwrap(); // replacing frees the old value first
        assert!(c.set("e", &vec![0u8; (1 << 20) + 1]).is_err());
    }

    #[test]
    fn nothing_listens_gives_a_clear_error_in_time() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = StoreConfig {
            connect_timeout: Duration::from_millis(300),
            ..quick()
        };
        let started = Instant::now();
        let err = Client::connect(&format!("127.0.0.1:{port}"), &auth(), 0, cfg)
            .err()
            .expect("connected to nothing");
        assert!(matches!(err, RendezvousError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
