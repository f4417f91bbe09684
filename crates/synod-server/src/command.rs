//! The node loop's inbox: what handlers, the peer transport and background jobs send it.

use synod_core::driver::{Answer, Input};
use tokio::sync::oneshot;

use crate::error::ServerError;

/// A handler waiting for the driver's answer.
pub type Waiter = oneshot::Sender<Result<Answer, ServerError>>;

/// Work for the node loop.
pub enum Command {
    /// A client's request for the driver, answered on `reply` under request id `id`.
    Client {
        id: u64,
        input: Input,
        reply: Waiter,
        /// The request's span (disabled unless tracing is on): the node loop marks on it when
        /// the request reached the driver and when it was answered.
        span: tracing::Span,
    },
    /// Something for the driver from the peers or a background job (no answer).
    Input(Input),
    Defragment {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A peer says this member was removed from the cluster.
    Removed,
    Shutdown,
}
