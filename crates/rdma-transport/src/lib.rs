//! One-sided RDMA transport for SwarmSGD: not implemented yet.
//!
//! This crate will implement `swarm_core::Transport` over InfiniBand/RoCE verbs (RDMA READ of a
//! neighbour's published model, RDMA WRITE into its inbox slot). It is empty on purpose until
//! then: nothing here pretends to work. Use the in-process transport of `swarm-core` meanwhile.
