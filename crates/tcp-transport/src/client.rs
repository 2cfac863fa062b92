//! One client thread per peer: it owns the connection to the peer and carries out this node's
//! operations on the peer's window, one at a time, in the order they were started.

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use swarmsgd_core::{Completion, NodeId, OpId, ReadOutcome, TransportError, WriteOutcome};

use crate::io::{read_exact_by, write_all_by};
use crate::server::lock;
use crate::wire::{
    Ack, AckStatus, Header, Hello, Kind, Status, ACK_LEN, HEADER_LEN, PROTOCOL_VERSION,
};
use crate::{JobAuth, TcpConfig};

/// An operation handed to a peer's client thread.
pub(crate) enum Request {
    Read {
        started: Instant,
        op: OpId,
        offset: usize,
        len: usize,
        buf: Vec<u8>,
    },
    Write {
        started: Instant,
        op: OpId,
        payload: Vec<u8>,
        /// Where the payload's buffer goes once sent, for the next write to reuse.
        recycle: Arc<Mutex<Vec<Vec<u8>>>>,
    },
    SlotFree {
        started: Instant,
        reply: Sender<Result<bool, TransportError>>,
    },
}

/// The connection to one peer.
pub(crate) struct PeerLink {
    pub(crate) me: NodeId,
    pub(crate) peer: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) auth: JobAuth,
    pub(crate) config: TcpConfig,
    conn: Option<Conn>,
    next_req: u64,
}

struct Conn {
    stream: TcpStream,
    /// The peer's window capacity, from its handshake.
    capacity: usize,
}

/// What went wrong talking to the peer: the connection is dropped and the operation fails.
struct Failure(String);

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(e.to_string())
    }
}

/// The answer to one request, before it becomes a completion.
enum Answer {
    Read(ReadOutcome),
    Write(WriteOutcome),
    Slot(bool),
    /// The request did not fit the peer's window.
    TooLarge {
        len: usize,
        capacity: usize,
    },
}

impl PeerLink {
    pub(crate) fn new(
        me: NodeId,
        peer: NodeId,
        addr: SocketAddr,
        auth: JobAuth,
        config: TcpConfig,
    ) -> Self {
        PeerLink {
            me,
            peer,
            addr,
            auth,
            config,
            conn: None,
            next_req: 0,
        }
    }

    /// Serves requests until the endpoint drops its sender. Connects on the first request, and
    /// again on the next request after a failure.
    pub(crate) fn run(mut self, requests: Receiver<Request>, done: Sender<Completion>) {
        while let Ok(request) = requests.recv() {
            let completion = match request {
                Request::Read {
                    started,
                    op,
                    offset,
                    len,
                    mut buf,
                } => {
                    let result = self.run_op(started, Kind::Read, offset, len, &mut buf);
                    Completion::Read {
                        op,
                        peer: self.peer,
                        buf,
                        result: result.and_then(|answer| match answer {
                            Answer::Read(outcome) => Ok(outcome),
                            other => Err(self.too_large_or_bug(other)),
                        }),
                    }
                }
                Request::Write {
                    started,
                    op,
                    mut payload,
                    recycle,
                } => {
                    let len = payload.len();
                    let result = self.run_op(started, Kind::WriteInbox, 0, len, &mut payload);
                    lock(&recycle).push(payload);
                    Completion::Write {
                        op,
                        peer: self.peer,
                        result: result.and_then(|answer| match answer {
                            Answer::Write(outcome) => Ok(outcome),
                            other => Err(self.too_large_or_bug(other)),
                        }),
                    }
                }
                Request::SlotFree { started, reply } => {
                    let result = self
                        .run_op(started, Kind::SlotFree, 0, 0, &mut Vec::new())
                        .and_then(|answer| match answer {
                            Answer::Slot(free) => Ok(free),
                            other => Err(self.too_large_or_bug(other)),
                        });
                    let _ = reply.send(result);
                    continue;
                }
            };
            if done.send(completion).is_err() {
                return;
            }
        }
    }

    fn too_large_or_bug(&self, answer: Answer) -> TransportError {
        match answer {
            Answer::TooLarge { len, capacity } => TransportError::TooLarge { len, capacity },
            _ => self.unreachable("answer of the wrong kind".into()),
        }
    }

    fn unreachable(&self, why: String) -> TransportError {
        TransportError::Unreachable {
            peer: self.peer,
            why,
        }
    }

    /// One operation, retried once on a fresh connection when a kept-alive connection turned out
    /// dead and the operation is a read or a query (repeating a write could deposit it twice).
    /// It ends by `started + connect_timeout + io_timeout`, however long it waited in the queue.
    fn run_op(
        &mut self,
        started: Instant,
        kind: Kind,
        a: usize,
        b: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Answer, TransportError> {
        let deadline = started + self.config.connect_timeout + self.config.io_timeout;
        let reused = self.conn.is_some();
        match self.exchange(kind, a, b, buf, deadline) {
            Ok(answer) => Ok(answer),
            Err(Failure(why)) => {
                self.conn = None;
                if reused && kind != Kind::WriteInbox && Instant::now() < deadline {
                    tracing::debug!(me = self.me, peer = self.peer, %why, "reconnecting");
                    if let Ok(answer) = self.exchange(kind, a, b, buf, deadline) {
                        return Ok(answer);
                    }
                    self.conn = None;
                }
                tracing::debug!(me = self.me, peer = self.peer, %why, "peer unreachable");
                Err(self.unreachable(why))
            }
        }
    }

    /// The open connection, or a new one (connect, handshake).
    fn connection(&mut self, deadline: Instant) -> Result<&mut Conn, Failure> {
        if self.conn.is_none() {
            let conn = self.connect(deadline)?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Failure("no connection".into()))
    }

    fn connect(&self, deadline: Instant) -> Result<Conn, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure("timed out before connecting".into()));
        }
        let mut stream =
            TcpStream::connect_timeout(&self.addr, self.config.connect_timeout.min(left))
                .map_err(|e| Failure(format!("cannot connect to {}: {e}", self.addr)))?;
        stream.set_nodelay(true)?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            job: self.auth.job,
            secret: self.auth.secret,
            from: self.me as u64,
            to: self.peer as u64,
        };
        write_all_by(&mut stream, &hello.encode(), deadline)?;
        let mut bytes = [0u8; ACK_LEN];
        read_exact_by(&mut stream, &mut bytes, deadline)
            .map_err(|e| Failure(format!("no handshake answer from {}: {e}", self.addr)))?;
        let ack = Ack::decode(&bytes).map_err(|e| Failure(e.to_string()))?;
        if ack.version != PROTOCOL_VERSION {
            return Err(Failure(format!(
                "peer speaks protocol version {}, this node {PROTOCOL_VERSION}",
                ack.version
            )));
        }
        if ack.status != AckStatus::Accepted {
            return Err(Failure(format!(
                "peer refused the handshake: {:?}",
                ack.status
            )));
        }
        if ack.job != self.auth.job || ack.node != self.peer as u64 {
            return Err(Failure(format!(
                "{} answered as node {} of job {}, expected node {} of job {}",
                self.addr, ack.node, ack.job, self.peer, self.auth.job
            )));
        }
        let capacity = usize::try_from(ack.capacity)
            .map_err(|_| Failure(format!("absurd capacity {}", ack.capacity)))?;
        Ok(Conn { stream, capacity })
    }

    /// Sends one request and reads its answer. For reads, `buf` receives the bytes; for writes it
    /// holds the payload.
    fn exchange(
        &mut self,
        kind: Kind,
        a: usize,
        b: usize,
        buf: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        self.next_req += 1;
        let req = self.next_req;
        let conn = self.connection(deadline)?;
        // Check the bounds before sending: the server would refuse, but a write's payload would
        // already be on its way.
        let end = a.saturating_add(b);
        let too_large = match kind {
            Kind::Read => a % 8 != 0 || end > conn.capacity,
            Kind::WriteInbox => b > conn.capacity,
            Kind::SlotFree => false,
        };
        if too_large {
            return Ok(Answer::TooLarge {
                len: end,
                capacity: conn.capacity,
            });
        }
        if kind == Kind::Read {
            buf.resize(b, 0);
        }
        let (wa, wb) = match kind {
            Kind::Read => (a as u64, b as u64),
            Kind::WriteInbox => (b as u64, 0),
            Kind::SlotFree => (0, 0),
        };
        let request = Header {
            kind,
            status: Status::Ok,
            req,
            a: wa,
            b: wb,
        };
        write_all_by(&mut conn.stream, &request.encode(), deadline)?;
        if kind == Kind::WriteInbox {
            write_all_by(&mut conn.stream, buf, deadline)?;
        }
        let mut bytes = [0u8; HEADER_LEN];
        read_exact_by(&mut conn.stream, &mut bytes, deadline)?;
        let response = Header::decode(&bytes).map_err(|e| Failure(e.to_string()))?;
        if response.kind != kind || response.req != req {
            return Err(Failure(format!(
                "answer to request {} ({:?}) for request {req} ({kind:?})",
                response.req, response.kind
            )));
        }
        let quiet = response.a == 0 && response.b == 0;
        let answer = match (kind, response.status) {
            (_, Status::TooLarge) => Answer::TooLarge {
                len: usize::try_from(response.a).unwrap_or(usize::MAX),
                capacity: usize::try_from(response.b).unwrap_or(usize::MAX),
            },
            (Kind::Read, Status::Ok) => {
                if response.b != b as u64 || response.a == 0 {
                    return Err(Failure(format!(
                        "read of {b} bytes answered with {} bytes at version {}",
                        response.b, response.a
                    )));
                }
                read_exact_by(&mut conn.stream, buf, deadline)?;
                Answer::Read(ReadOutcome::Model {
                    version: response.a,
                })
            }
            (Kind::Read, Status::NotPublished) if quiet => Answer::Read(ReadOutcome::NotPublished),
            (Kind::Read, Status::Torn) if quiet => Answer::Read(ReadOutcome::Torn),
            (Kind::WriteInbox, Status::Ok) if quiet => Answer::Write(WriteOutcome::Delivered),
            (Kind::WriteInbox, Status::Busy) if quiet => Answer::Write(WriteOutcome::SlotBusy),
            (Kind::SlotFree, Status::Ok) if quiet => Answer::Slot(true),
            (Kind::SlotFree, Status::Busy) if quiet => Answer::Slot(false),
            (kind, status) => {
                return Err(Failure(format!(
                    "{kind:?} answered with {status:?} ({}, {})",
                    response.a, response.b
                )))
            }
        };
        Ok(answer)
    }
}
