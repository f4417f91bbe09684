//! Checkers for Synod's correctness tests, and (as it grows) the deterministic cluster simulator.
//!
//! - [`linearizability`]: a Porcupine-style checker (Wing & Gong's search with Lowe's
//!   memoization) over histories of concurrent operations, partitioned per key, with
//!   operations whose outcome is unknown (timeouts). [`linearizability::KvModel`] is the model of
//!   one etcd key: put, get, compare-and-swap, delete.
//!
//! This crate must not depend on the server or on any runtime: checkers take plain histories.

pub mod linearizability;
