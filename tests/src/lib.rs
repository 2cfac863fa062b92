//! Integration tests for the swarm workspace live in `tests/`.
