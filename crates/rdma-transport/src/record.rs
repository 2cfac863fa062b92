//! The endpoint record: what a peer needs to connect to a node and address its window, exchanged
//! out of band (a rendezvous key-value store, a file, a pipe) and encoded with postcard.

use serde::{Deserialize, Serialize};

use crate::verbs::{QpAddress, RemoteBuf};
use crate::RdmaError;

/// First bytes of every encoded record.
pub const RECORD_MAGIC: [u8; 8] = *b"SWRMRDMA";
/// Version of the record and of the window layout it describes.
pub const RECORD_VERSION: u16 = 1;
/// Most neighbours a record may list.
pub const MAX_NEIGHBOURS: usize = 4096;
/// Bytes before a slot's payload in the inbox region (the deposit word, padded).
pub const SLOT_HEADER: u64 = 64;

/// A node's endpoint as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    magic: [u8; 8],
    version: u16,
    /// The node.
    pub node: u64,
    /// Payload capacity of the window and of each inbox slot, in bytes.
    pub capacity: u64,
    /// The node's neighbours; slot `k` of its inbox belongs to `neighbours[k]`.
    pub neighbours: Vec<u64>,
    /// `qps[k]` is the queue pair the node dedicates to `neighbours[k]`.
    pub qps: Vec<QpAddress>,
    /// The published region (remote-read only).
    pub published: RemoteBuf,
    /// Offset of the payload in the published region.
    pub data_offset: u64,
    /// The inbox region (remote-write only).
    pub inbox: RemoteBuf,
    /// Distance between inbox slots.
    pub slot_stride: u64,
}

impl EndpointRecord {
    /// A record for the given parts (checked by [`EndpointRecord::validate`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: u64,
        capacity: u64,
        neighbours: Vec<u64>,
        qps: Vec<QpAddress>,
        published: RemoteBuf,
        data_offset: u64,
        inbox: RemoteBuf,
        slot_stride: u64,
    ) -> Self {
        EndpointRecord {
            magic: RECORD_MAGIC,
            version: RECORD_VERSION,
            node,
            capacity,
            neighbours,
            qps,
            published,
            data_offset,
            inbox,
            slot_stride,
        }
    }

    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain integers and vectors into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RdmaError> {
        if bytes.len() < RECORD_MAGIC.len() || bytes[..RECORD_MAGIC.len()] != RECORD_MAGIC {
            return Err(RdmaError::Record(
                "does not start with the rdma-transport magic (not an rdma endpoint record)".into(),
            ));
        }
        let (record, rest): (EndpointRecord, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|e| RdmaError::Record(format!("truncated or malformed: {e}")))?;
        if !rest.is_empty() {
            return Err(RdmaError::Record(format!("{} trailing bytes", rest.len())));
        }
        record.validate()?;
        Ok(record)
    }

    /// The slot of `node`'s inbox that belongs to `writer`, if `writer` is a neighbour.
    pub fn slot_of(&self, writer: u64) -> Option<usize> {
        self.neighbours.iter().position(|&w| w == writer)
    }

    /// Checks the record's internal consistency (not that its keys are right: a wrong key shows
    /// up as a remote access error on first use).
    pub fn validate(&self) -> Result<(), RdmaError> {
        let bad = |why: String| Err(RdmaError::Record(format!("node {}: {why}", self.node)));
        if self.magic != RECORD_MAGIC {
            return bad("bad magic".into());
        }
        if self.version != RECORD_VERSION {
            return bad(format!(
                "protocol version {} (this build speaks {RECORD_VERSION})",
                self.version
            ));
        }
        let deg = self.neighbours.len();
        if deg > MAX_NEIGHBOURS {
            return bad(format!("{deg} neighbours (at most {MAX_NEIGHBOURS})"));
        }
        if self.qps.len() != deg {
            return bad(format!(
                "{} queue pairs for {deg} neighbours",
                self.qps.len()
            ));
        }
        for (k, &w) in self.neighbours.iter().enumerate() {
            if w == self.node || self.neighbours[..k].contains(&w) {
                return bad(format!(
                    "neighbour list {:?} is not a set of other nodes",
                    self.neighbours
                ));
            }
        }
        if self.capacity > u64::from(u32::MAX) {
            return bad(format!("capacity {} above 4 GiB - 1", self.capacity));
        }
        let header = 16 + 8 * deg as u64;
        if self.data_offset < header || self.data_offset % 8 != 0 {
            return bad(format!(
                "payload offset {} overlaps the header",
                self.data_offset
            ));
        }
        if self.published.len < self.data_offset + self.capacity {
            return bad(format!(
                "published region of {} bytes cannot hold {} + {}",
                self.published.len, self.data_offset, self.capacity
            ));
        }
        if self.slot_stride < SLOT_HEADER + self.capacity || self.slot_stride % 8 != 0 {
            return bad(format!(
                "inbox slot stride {} cannot hold a {}-byte payload",
                self.slot_stride, self.capacity
            ));
        }
        match self.slot_stride.checked_mul(deg as u64) {
            Some(need) if need <= self.inbox.len => {}
            _ => {
                return bad(format!(
                    "inbox region of {} bytes cannot hold {deg} slots of {}",
                    self.inbox.len, self.slot_stride
                ))
            }
        }
        if self
            .published
            .addr
            .checked_add(self.published.len)
            .is_none()
            || self.inbox.addr.checked_add(self.inbox.len).is_none()
            || self.published.addr % 8 != 0
            || self.inbox.addr % 8 != 0
        {
            return bad("region addresses overflow or are misaligned".into());
        }
        for qp in &self.qps {
            if qp.qpn > 0x00ff_ffff || qp.psn > 0x00ff_ffff {
                return bad(format!("queue pair number/PSN {qp:?} above 24 bits"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EndpointRecord {
        let qp = QpAddress {
            qpn: 17,
            psn: 99,
            lid: 0,
            gid: [1; 16],
        };
        EndpointRecord::new(
            2,
            1000,
            vec![1, 3],
            vec![qp, qp],
            RemoteBuf {
                addr: 4096,
                len: 4096,
                rkey: 5,
            },
            64,
            RemoteBuf {
                addr: 8192,
                len: 8192,
                rkey: 6,
            },
            1088,
        )
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(EndpointRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.slot_of(3), Some(1));
        assert_eq!(r.slot_of(2), None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                EndpointRecord::decode(&bytes[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(EndpointRecord::decode(&long).is_err());
    }

    #[test]
    fn hostile_records_are_errors_never_panics() {
        let bytes = sample().encode();
        // Flip every bit of every byte: decoding must return (never panic); a flip in the
        // magic, version or a checked field must be refused.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = EndpointRecord::decode(&b);
            }
        }
        let mut r = sample();
        r.neighbours = vec![1, 1];
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        let mut r = sample();
        r.neighbours = vec![2, 3];
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        let mut r = sample();
        r.qps.pop();
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        let mut r = sample();
        r.inbox.len = 100;
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        let mut r = sample();
        r.published.len = 100;
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        let mut r = sample();
        r.version = 9;
        let err = EndpointRecord::decode(&r.encode()).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
        let mut r = sample();
        r.slot_stride = u64::MAX / 2;
        assert!(EndpointRecord::decode(&r.encode()).is_err());
        assert!(EndpointRecord::decode(b"not a record at all").is_err());
    }
}
