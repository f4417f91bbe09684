//! Linearizable reads: ReadIndex requests batched per turn, numbered past every earlier
//! process's, retried when raft-rs drops them, released once the state machine has applied their
//! index, and forgotten when their callers give up.

use super::*;

impl<F: FileSystem> Node<F> {
    /// Numbers this process's ReadIndex requests from `first` on. A ReadIndex answer can arrive
    /// after the process that asked for it died (the leader's queue to this member outlives the
    /// connection); numbered from 1 in every process, a new request would match the old answer and
    /// be released at an index from before the crash: a stale read. The driver starts each process
    /// past every number an earlier one used (its boot epoch in the high bits), and answers with
    /// lower numbers than any pending request are ignored.
    pub fn start_read_contexts_at(&mut self, first: u64) {
        self.next_read_context = first.max(1);
    }

    /// Asks Raft for one read index covering every token in `tokens`: reads that arrived in the
    /// same turn share one round of heartbeats.
    pub fn read_index(&mut self, tokens: Vec<u64>) {
        if tokens.is_empty() {
            return;
        }
        if crate::planted::is_planted(crate::planted::Bug::ReadWithoutReadIndex) {
            self.reads_waiting
                .push_back((self.machine.applied_index(), tokens));
            return;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        // Every attempt carries a fresh context, so an answer can never be matched to a read
        // that did not ask for it.
        self.raw.read_index(context.to_be_bytes().to_vec());
        self.status
            .read_index_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reads_in_flight
            .push_back((context, self.now_tick, tokens));
    }

    /// Stops retrying reads nobody waits for any more (their callers gave up): a member without a
    /// leader would otherwise carry every read asked of it until one is elected.
    pub fn forget_reads(&mut self, tokens: &std::collections::BTreeSet<u64>) {
        if tokens.is_empty() {
            return;
        }
        for (_, _, pending) in self.reads_in_flight.iter_mut() {
            pending.retain(|token| !tokens.contains(token));
        }
        self.reads_in_flight
            .retain(|(_, _, pending)| !pending.is_empty());
        for (_, pending) in self.reads_waiting.iter_mut() {
            pending.retain(|token| !tokens.contains(token));
        }
        self.reads_waiting
            .retain(|(_, pending)| !pending.is_empty());
    }

    pub(super) fn on_read_state(&mut self, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else {
            return;
        };
        let context = u64::from_be_bytes(bytes);
        while let Some((pending, _, _)) = self.reads_in_flight.front() {
            if *pending > context {
                break;
            }
            let (pending, _, tokens) = self.reads_in_flight.pop_front().expect("front exists");
            // An older request whose answer was lost (its leader stepped down) is served with
            // this newer index, which is at least as recent as any answer it could have had:
            // Raft answers in order, so its own will not come now.
            self.reads_waiting.push_back((index, tokens));
            if pending != context {
                self.status
                    .slow_read_indexes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    pub(super) fn release_reads(&mut self, out: &mut Output) {
        let applied = self.machine.applied_index();
        while let Some((index, _)) = self.reads_waiting.front() {
            if *index > applied {
                break;
            }
            let (_, tokens) = self.reads_waiting.pop_front().expect("front exists");
            out.reads_ready.extend(tokens);
        }
    }

    /// raft-rs drops a ReadIndex that arrives before the leader has committed an entry in its
    /// term (just after an election), without an answer: ask again for reads left waiting.
    pub(super) fn retry_unanswered_reads(&mut self) {
        let mut unanswered = Vec::new();
        while let Some((_, sent, _)) = self.reads_in_flight.front() {
            if self.now_tick - sent < READ_RETRY_TICKS {
                break;
            }
            let (_, _, tokens) = self.reads_in_flight.pop_front().expect("front exists");
            unanswered.extend(tokens);
            self.status
                .slow_read_indexes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.read_index(unanswered);
    }
}
