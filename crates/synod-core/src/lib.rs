//! The deterministic core of a Synod member: everything that decides what the replicated state
//! is, and nothing that talks to the outside world.
//!
//! - [`node::Node`]: raft-rs's `RawNode` over the Raft log, advanced by `tick`, `propose`, `step`
//!   and `advance`; it applies committed entries to the state machine.
//! - [`raft_log::RaftLog`]: the Raft log in raft-engine, with group commit.
//! - [`apply::StateMachine`]: the apply path over [`mvcc::kv_store::KvStore`] (key history in
//!   redb plus the in-memory [`mvcc::key_index::TreeIndex`]), the [`lease::Lessor`] and the
//!   alarms, sharing one [`backend::Backend`] (the redb file).
//! - [`watch::WatchHub`]: watchers, fed by apply and caught up from history.
//! - [`auth::AuthStore`]: etcd's users, roles, permissions and simple tokens.
//! - [`driver::Driver`]: the member's decisions around the node (waiters, refusals, membership
//!   checks, lease renewal), fed inputs by the server's node loop and the simulator alike.
//!
//! This crate must not spawn threads, read a clock, open sockets or depend on an async runtime:
//! time arrives as ticks and the owner of the [`node::Node`] runs the loop. Disk access goes
//! through raft-engine's `FileSystem`, redb's `StorageBackend` and [`disk::Disk`] (snapshot
//! files): `synod-sim` runs this same code on its simulated disk, snapshots included. [`planted`] holds the bugs planted on
//! purpose for the simulator to catch (compiled only with the `planted-bugs` feature).

pub mod apply;
pub mod auth;
pub mod backend;
pub mod counters;
pub mod crc32c;
pub mod disk;
pub mod driver;
pub mod error;
pub mod etcd_db;
pub mod fault;
pub mod lease;
pub mod mvcc;
pub mod node;
pub mod planted;
pub mod raft_log;
pub mod snapshot;
pub mod watch;
pub mod zk;

pub use error::{Error, RequestError, StorageError};
