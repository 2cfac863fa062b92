//! One-sided RDMA transport (not implemented yet: see issue 5).
