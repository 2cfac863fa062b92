//! Cross-crate integration tests of the swarm workspace; see `tests/`.
