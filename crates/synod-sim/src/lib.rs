//! Synod's deterministic simulator and the checkers it shares with the fault tests.
//!
//! - [`world`]: whole clusters of the real member core (raft-rs over raft-engine, the redb state
//!   machine, MVCC, lessor, watch hub) in one thread, on a simulated network ([`world`]),
//!   simulated disks ([`disk`]) and drifting simulated clocks, all driven by one seed ([`rng`]);
//!   clients record a history that [`linearizability`] judges, and Raft, MVCC, watch and lease
//!   invariants are checked as it runs. `synod-sim --seeds N` runs campaigns.
//! - [`linearizability`]: a Porcupine-style checker (Wing & Gong's search with Lowe's
//!   memoization) over histories of concurrent operations, partitioned per key, with operations
//!   whose outcome is unknown (timeouts). [`linearizability::KvModel`] is the model of one etcd
//!   key: put, get, compare-and-swap, delete.
//!
//! The checkers depend on nothing but the standard library; the simulator depends on the core,
//! never on the server, a runtime, a clock or a socket.

pub mod disk;
pub mod host;
pub mod linearizability;
pub mod rng;
pub mod world;
