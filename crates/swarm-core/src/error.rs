use crate::NodeId;

/// Errors a transport reports. They are values: the caller marks the peer unreachable and goes on.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer id is not a node of this fabric, or not a neighbour with an inbox slot.
    #[error("node {peer} is not reachable from node {me}: {why}")]
    NotANeighbour {
        /// This node.
        me: NodeId,
        /// The peer asked for.
        peer: NodeId,
        /// Why.
        why: String,
    },
    /// A payload does not fit the window or inbox slot it was written to.
    #[error("payload of {len} bytes exceeds the {capacity}-byte window")]
    TooLarge {
        /// Payload bytes.
        len: usize,
        /// Window capacity.
        capacity: usize,
    },
    /// The peer did not answer (died, or the network failed).
    #[error("peer {peer} unreachable: {why}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// Why.
        why: String,
    },
}

/// Errors of the SwarmSGD algorithm layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// A configuration value is impossible; the message says which and what to use instead.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A codec could not encode this node's model.
    #[error("codec error: {0}")]
    Codec(#[from] quant::QuantError),
}
