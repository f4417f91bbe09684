//! Points inside a turn where a process can die with half its work on disk: after the Raft log's
//! fsync but before the messages that wait for it leave, and between a snapshot's install into
//! the state machine and its record in the log. The simulator hooks them to crash a member right
//! there (its disk stops taking writes at that instant); in the server no hook is set and a point
//! costs one thread-local check.

use std::cell::RefCell;

/// A place in a turn where a crash is worth trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// New entries and the hard state are written and synced; acknowledgements are not sent.
    AfterLogSync,
    /// A received snapshot replaced the state machine; the log does not record it yet.
    SnapshotInStateMachine,
}

type Hook = Box<dyn FnMut(FaultPoint)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Sets (or, with `None`, clears) the calling thread's hook.
pub fn set_hook(hook: Option<Hook>) {
    HOOK.with(|slot| *slot.borrow_mut() = hook);
}

/// Marks that the calling thread reached `point`.
#[inline]
pub fn reach(point: FaultPoint) {
    HOOK.with(|slot| {
        if let Some(hook) = slot.borrow_mut().as_mut() {
            hook(point);
        }
    });
}
