//! The wire format, hand-rolled little-endian with fixed-size headers.
//!
//! Fixed sizes make every length check trivial: a frame header is read into a stack array, checked
//! field by field (magic, version, zero padding, known kinds and statuses), and only then is a
//! payload length trusted, and only up to the window capacity.
//!
//! # Handshake
//!
//! The client opens a TCP connection and sends a [`Hello`] ([`HELLO_LEN`] = 72 bytes):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `b"SWARMTCP"` |
//! | 8..10 | protocol version, `u16` ([`PROTOCOL_VERSION`]) |
//! | 10..16 | zero |
//! | 16..24 | job id, `u64` |
//! | 24..56 | per-job secret, 32 bytes |
//! | 56..64 | the client's node id, `u64` |
//! | 64..72 | the node id the client expects to reach, `u64` |
//!
//! The server answers with an [`Ack`] ([`ACK_LEN`] = 40 bytes) unless the magic or padding is wrong
//! (then it closes without a word):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `b"SWARMTCP"` |
//! | 8..10 | the server's protocol version, `u16` |
//! | 10..12 | status, `u16` ([`AckStatus`]; 0 = accepted) |
//! | 12..16 | zero |
//! | 16..24 | job id, `u64` (echo of the server's job) |
//! | 24..32 | the server's node id, `u64` |
//! | 32..40 | the server's window capacity in bytes, `u64` |
//!
//! Any status other than accepted is followed by the server closing the connection. The client
//! checks the magic, version, status, job and node id of the ack before sending anything else.
//!
//! # Requests and responses
//!
//! After the handshake the client sends requests and the server answers each one in order. Both
//! directions use the same [`HEADER_LEN`] = 32-byte [`Header`]:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | kind, `u8` ([`Kind`]) |
//! | 1 | status, `u8` (0 in requests; [`Status`] in responses) |
//! | 2..8 | zero |
//! | 8..16 | request id, `u64`, echoed by the response |
//! | 16..24 | `a`, `u64` |
//! | 24..32 | `b`, `u64` |
//!
//! | request | `a` | `b` | followed by |
//! |---|---|---|---|
//! | `Read` | offset | length | — |
//! | `WriteInbox` | payload length | 0 | the payload |
//! | `SlotFree` | 0 | 0 | — |
//!
//! | response status | meaning | `a` | `b` | followed by |
//! |---|---|---|---|---|
//! | `Ok` | read: model; write: delivered; slot: free | read: version | read: length | read: `b` bytes |
//! | `NotPublished` | read: never published | 0 | 0 | — |
//! | `Torn` | read: torn (never sent by this server; accepted for peers that are) | 0 | 0 | — |
//! | `Busy` | write: slot busy; slot: not free | 0 | 0 | — |
//! | `TooLarge` | bounds exceeded | requested end | capacity | — |
//!
//! A malformed request (unknown kind, non-zero padding or status, a write larger than the window)
//! makes the server drop the connection. A malformed response makes the client drop it and report
//! the peer unreachable.

use crate::TcpError;

/// The first eight bytes of every handshake frame.
pub const MAGIC: [u8; 8] = *b"SWARMTCP";
/// The protocol version this crate speaks. Peers of another version are refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of a [`Hello`].
pub const HELLO_LEN: usize = 72;
/// Bytes of an [`Ack`].
pub const ACK_LEN: usize = 40;
/// Bytes of a request or response [`Header`].
pub const HEADER_LEN: usize = 32;
/// Bytes of the per-job secret.
pub const SECRET_LEN: usize = 32;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The client's opening frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Job id.
    pub job: u64,
    /// Per-job secret.
    pub secret: [u8; SECRET_LEN],
    /// The client's node id.
    pub from: u64,
    /// The node id the client expects to reach.
    pub to: u64,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("job", &self.job)
            .field("secret", &"<redacted>")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl Hello {
    /// The frame's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.job.to_le_bytes());
        b[24..56].copy_from_slice(&self.secret);
        b[56..64].copy_from_slice(&self.from.to_le_bytes());
        b[64..72].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Parses a frame, checking the magic and the zero padding (not the version: the server
    /// answers a peer of another version with [`AckStatus::BadVersion`]).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, TcpError> {
        if b[0..8] != MAGIC {
            return Err(TcpError::Wire("hello: bad magic".into()));
        }
        if b[10..16].iter().any(|&x| x != 0) {
            return Err(TcpError::Wire("hello: non-zero padding".into()));
        }
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&b[24..56]);
        Ok(Hello {
            version: u16_at(b, 8),
            job: u64_at(b, 16),
            secret,
            from: u64_at(b, 56),
            to: u64_at(b, 64),
        })
    }
}

/// Why a server refused a handshake (or that it accepted it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum AckStatus {
    /// Authenticated: requests may follow.
    Accepted = 0,
    /// The client speaks another protocol version.
    BadVersion = 1,
    /// The client belongs to another job.
    WrongJob = 2,
    /// The secret does not match.
    BadSecret = 3,
    /// The client addressed another node, or claimed the server's own id.
    WrongNode = 4,
    /// The server has reached its connection or peer limit.
    TooManyConnections = 5,
}

impl AckStatus {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => AckStatus::Accepted,
            1 => AckStatus::BadVersion,
            2 => AckStatus::WrongJob,
            3 => AckStatus::BadSecret,
            4 => AckStatus::WrongNode,
            5 => AckStatus::TooManyConnections,
            _ => return None,
        })
    }
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Protocol version the server speaks.
    pub version: u16,
    /// Accepted, or why not.
    pub status: AckStatus,
    /// The server's job id.
    pub job: u64,
    /// The server's node id.
    pub node: u64,
    /// The server's window capacity in bytes.
    pub capacity: u64,
}

impl Ack {
    /// The frame's bytes.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut b = [0u8; ACK_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(self.status as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.job.to_le_bytes());
        b[24..32].copy_from_slice(&self.node.to_le_bytes());
        b[32..40].copy_from_slice(&self.capacity.to_le_bytes());
        b
    }

    /// Parses a frame, checking the magic, padding and status code.
    pub fn decode(b: &[u8; ACK_LEN]) -> Result<Self, TcpError> {
        if b[0..8] != MAGIC {
            return Err(TcpError::Wire("ack: bad magic".into()));
        }
        if b[12..16].iter().any(|&x| x != 0) {
            return Err(TcpError::Wire("ack: non-zero padding".into()));
        }
        let status = AckStatus::from_u16(u16_at(b, 10))
            .ok_or_else(|| TcpError::Wire(format!("ack: unknown status {}", u16_at(b, 10))))?;
        Ok(Ack {
            version: u16_at(b, 8),
            status,
            job: u64_at(b, 16),
            node: u64_at(b, 24),
            capacity: u64_at(b, 32),
        })
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Read bytes `a..a + b` of the published payload.
    Read = 1,
    /// Deposit an `a`-byte payload into the client's inbox slot.
    WriteInbox = 2,
    /// Is the client's inbox slot free?
    SlotFree = 3,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Read: a consistent model follows. Write: delivered. Slot: free. (Also the status of every
    /// request.)
    Ok = 0,
    /// Read: the window was never published.
    NotPublished = 1,
    /// Read: the copy was torn.
    Torn = 2,
    /// Write: the slot holds an unconsumed deposit. Slot: not free.
    Busy = 3,
    /// The request exceeds the window (`a`: requested end, `b`: capacity).
    TooLarge = 4,
}

/// A request or response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request kind.
    pub kind: Kind,
    /// [`Status::Ok`] in requests.
    pub status: Status,
    /// Request id, echoed by the response.
    pub req: u64,
    /// First argument (see the module docs).
    pub a: u64,
    /// Second argument (see the module docs).
    pub b: u64,
}

impl Header {
    /// The frame's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[1] = self.status as u8;
        b[8..16].copy_from_slice(&self.req.to_le_bytes());
        b[16..24].copy_from_slice(&self.a.to_le_bytes());
        b[24..32].copy_from_slice(&self.b.to_le_bytes());
        b
    }

    /// Parses a frame, checking the kind, status and padding.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, TcpError> {
        let kind = match b[0] {
            1 => Kind::Read,
            2 => Kind::WriteInbox,
            3 => Kind::SlotFree,
            k => return Err(TcpError::Wire(format!("unknown request kind {k}"))),
        };
        let status = match b[1] {
            0 => Status::Ok,
            1 => Status::NotPublished,
            2 => Status::Torn,
            3 => Status::Busy,
            4 => Status::TooLarge,
            s => return Err(TcpError::Wire(format!("unknown status {s}"))),
        };
        if b[2..8].iter().any(|&x| x != 0) {
            return Err(TcpError::Wire("header: non-zero padding".into()));
        }
        Ok(Header {
            kind,
            status,
            req: u64_at(b, 8),
            a: u64_at(b, 16),
            b: u64_at(b, 24),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn frames_round_trip() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            job: 7,
            secret: [9; SECRET_LEN],
            from: 3,
            to: 4,
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        assert!(!format!("{hello:?}").contains('9'));
        let ack = Ack {
            version: PROTOCOL_VERSION,
            status: AckStatus::BadSecret,
            job: 7,
            node: 4,
            capacity: 1 << 20,
        };
        assert_eq!(Ack::decode(&ack.encode()).unwrap(), ack);
        let header = Header {
            kind: Kind::Read,
            status: Status::TooLarge,
            req: u64::MAX,
            a: 1,
            b: 2,
        };
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut h = [0u8; HELLO_LEN];
        assert!(Hello::decode(&h).is_err());
        h[0..8].copy_from_slice(&MAGIC);
        h[12] = 1;
        assert!(Hello::decode(&h).is_err());
        let mut a = [0u8; ACK_LEN];
        a[0..8].copy_from_slice(&MAGIC);
        a[10] = 99;
        assert!(Ack::decode(&a).is_err());
        let mut r = [0u8; HEADER_LEN];
        assert!(Header::decode(&r).is_err());
        r[0] = 1;
        r[1] = 5;
        assert!(Header::decode(&r).is_err());
        r[1] = 0;
        r[7] = 1;
        assert!(Header::decode(&r).is_err());
        // Every byte pattern decodes to a value or an error, never a panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            for byte in r.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = (x & 7) as u8;
            }
            let _ = Header::decode(&r);
        }
    }
}
