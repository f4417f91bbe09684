//! The checkers that judge a run as it goes and at its end: Raft's safety properties, the
//! applied entries, watch delivery, lease safety, serializable reads, agreement and the
//! linearizability of the whole history.

use super::*;

impl World {
    pub(super) fn check_raft(&mut self, index: usize, state: &MemberState) {
        let view = state.view;
        let id = self.members[index].id;
        if view.role == StateRole::Leader {
            // Leader completeness: a leader of term T holds every entry committed before T.
            // Commits seen by members still in a term below T were made before T; a commit seen
            // in T or later may be newer than this leader (a member paused as a candidate can
            // win its old term after a later term committed more), so it does not count.
            let committed_before = self
                .commit_by_term
                .range(..view.term)
                .map(|(_, &commit)| commit)
                .max()
                .unwrap_or(0);
            if !self.leaders.contains_key(&view.term) && view.last_index < committed_before {
                self.violate(format!(
                    "leader completeness: m{id} leads term {} with entries up to {}, but {} was committed before that term",
                    view.term, view.last_index, committed_before
                ));
                return;
            }
            match self.leaders.get(&view.term) {
                Some(&leader) if leader != id => {
                    self.violate(format!(
                        "election safety: m{leader} and m{id} are both leaders of term {}",
                        view.term
                    ));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(view.term, id);
                    self.trace.add(view.term << 8 | id);
                }
            }
        }
        let member = &mut self.members[index];
        if view.commit < member.last_commit {
            let last = member.last_commit;
            self.violate(format!(
                "m{id}'s commit index went back from {last} to {}",
                view.commit
            ));
            return;
        }
        member.last_commit = view.commit;
        let seen = self.commit_by_term.entry(view.term).or_insert(0);
        *seen = (*seen).max(view.commit);
        if view.commit > view.last_index {
            self.violate(format!(
                "m{id} commits {} beyond its last entry {}",
                view.commit, view.last_index
            ));
        }
    }

    /// State-machine safety: every member applies the same entry at each index.
    pub(super) fn check_applied_entries(
        &mut self,
        index: usize,
        entries: &[synod_core::node::AppliedEntry],
    ) {
        for entry in entries {
            self.report.entries_applied += 1;
            match self.applied.get(&entry.index) {
                Some(&(term, checksum)) if (term, checksum) != (entry.term, entry.checksum) => {
                    let id = self.members[index].id;
                    self.violate(format!(
                        "state machine safety: m{id} applied entry {} of term {} (checksum {:08x}), another member applied term {term} (checksum {checksum:08x}) there",
                        entry.index, entry.term, entry.checksum
                    ));
                    return;
                }
                Some(_) => {}
                None => {
                    self.applied
                        .insert(entry.index, (entry.term, entry.checksum));
                    self.trace.add(entry.index ^ (entry.checksum as u64) << 32);
                }
            }
        }
    }

    /// Watch invariants: a member's watcher sees every revision once, in order, without gaps
    /// (across restarts, resuming where it was), with the same events as on every other member.
    pub(super) fn check_watch(&mut self, index: usize, notices: Vec<WatchNotice>) {
        let id = self.members[index].id;
        for notice in notices {
            let WatchNotice::Events { events, .. } = notice else {
                continue;
            };
            let mut by_revision: BTreeMap<i64, (Vec<u8>, Vec<KeyChange>)> = BTreeMap::new();
            for event in events.iter() {
                let Some(kv) = &event.kv else { continue };
                let revision = kv.mod_revision;
                let (bytes, changes) = by_revision.entry(revision).or_default();
                bytes.extend_from_slice(&event.encode_to_vec());
                let value = (event.r#type == EventType::Put as i32)
                    .then(|| String::from_utf8_lossy(&kv.value).into_owned());
                changes.push((String::from_utf8_lossy(&kv.key).into_owned(), value));
                if event.r#type == EventType::Delete as i32
                    && let Some(lease) = std::str::from_utf8(&kv.key)
                        .ok()
                        .and_then(|k| k.strip_prefix("lease/"))
                        .and_then(|l| l.parse::<i64>().ok())
                {
                    self.lease_key_deleted(lease, revision);
                }
            }
            for (revision, (bytes, changes)) in by_revision {
                let expected = self.members[index].watched_revision + 1;
                if revision != expected {
                    self.violate(format!(
                        "watch: m{id}'s watcher got revision {revision} after {} (missing, repeated or out of order)",
                        expected - 1
                    ));
                    return;
                }
                self.members[index].watched_revision = revision;
                let hash = digest(&bytes);
                match self.revisions.get(&revision) {
                    Some(&seen) if seen != hash => {
                        self.violate(format!(
                            "watch: m{id} delivered different events for revision {revision} than another member"
                        ));
                        return;
                    }
                    Some(_) => {}
                    None => {
                        self.revisions.insert(revision, hash);
                        for (key, value) in changes {
                            self.values.entry(key).or_default().insert(revision, value);
                        }
                    }
                }
            }
        }
    }

    /// Lease safety: a lease's key disappeared at `revision` (first seen now). Its revoke must
    /// come after every deadline a correct leader could have set: the TTL after the lease was
    /// last known alive, counted on the fastest clock, less an election timeout of slack for
    /// message delays.
    pub(super) fn lease_key_deleted(&mut self, lease: i64, revision: i64) {
        if self.revisions.contains_key(&revision) {
            // Already judged when another member delivered this revision first.
            return;
        }
        let Some(record) = self.leases.get(&lease) else {
            return;
        };
        if record.revoked_by_client {
            return;
        }
        let Some(&last_alive) = record.alive_at.iter().max() else {
            return;
        };
        let fastest_tick_us = TICK_MS * (1000 - DRIFT_PER_MILLE);
        let ttl_ticks = (LEASE_TTL_SECONDS as u64 * 1000).div_ceil(TICK_MS);
        let slack_ms = TICK_MS * ELECTION_TICKS as u64;
        let earliest = last_alive + (ttl_ticks * fastest_tick_us) / 1000 - slack_ms;
        if self.now < earliest {
            self.violate(format!(
                "lease safety: lease {lease} was revoked at {} ms (revision {revision}) though it was last kept alive at {last_alive} ms with a TTL of {LEASE_TTL_SECONDS} s",
                self.now
            ));
        }
    }

    pub(super) fn finish(&mut self) {
        self.report.sim_ms = self.now;
        // Calls still open have unknown outcomes.
        self.report.indeterminate += self.deadlines.len() as u64;
        if self.violation.is_none() {
            self.check_agreement();
        }
        if self.violation.is_none() {
            self.check_local_reads();
        }
        if self.violation.is_none() {
            let history: Vec<Operation<KvInput, KvOutput>> = self
                .history
                .iter()
                .enumerate()
                .filter(|(op, _)| !self.failed.contains(op))
                .map(|(_, op)| op.clone())
                .collect();
            let started = std::time::Instant::now();
            let (verdict, key) = check_kv(&history, CHECK_STEPS_MAX);
            self.report.checker_micros = started.elapsed().as_micros() as u64;
            match verdict {
                Verdict::Linearizable => {}
                verdict => {
                    let key = key.unwrap_or_default();
                    if std::env::var_os("SYNOD_SIM_DUMP").is_some() {
                        self.dump_key(&history, &key);
                    }
                    self.violate(format!(
                        "linearizability: the history of key {key} is {verdict:?}"
                    ))
                }
            }
        }
        self.report.trace = self.trace.0;
        self.report.violation = self.violation.take();
    }

    /// Serializable reads may be stale but never wrong: each answers the key's value at the
    /// revision it reports (by the events of every revision), and one process never answers
    /// from an older revision than it answered before.
    pub(super) fn check_local_reads(&mut self) {
        let mut last: BTreeMap<(u64, u64), i64> = BTreeMap::new();
        for read in &self.local_reads {
            let expected = self
                .values
                .get(&read.key)
                .and_then(|history| history.range(..=read.revision).next_back())
                .and_then(|(_, value)| value.clone());
            if expected != read.value {
                self.violation = Some(format!(
                    "serializable read: m{} answered {:?} for {} at revision {}, where the value was {:?}",
                    read.member, read.value, read.key, read.revision, expected
                ));
                return;
            }
            let previous = last.entry((read.member, read.incarnation)).or_insert(0);
            if read.revision < *previous {
                self.violation = Some(format!(
                    "serializable read: m{} answered at revision {} after answering at {}",
                    read.member, read.revision, previous
                ));
                return;
            }
            *previous = read.revision;
        }
    }

    /// Prints a key's operations and its values by revision (`SYNOD_SIM_DUMP`), to debug a
    /// failing seed.
    pub(super) fn dump_key(&self, history: &[Operation<KvInput, KvOutput>], key: &str) {
        for (index, op) in history.iter().enumerate() {
            if op.input.key() == key {
                eprintln!(
                    "op {index}: client {} call {} {:?} -> {:?}",
                    op.client, op.call, op.input, op.result
                );
            }
        }
        for (revision, value) in self.values.get(key).into_iter().flatten() {
            eprintln!("revision {revision}: {value:?}");
        }
    }

    /// MVCC agreement: every member at the same applied index holds the same revision and the
    /// same HashKV.
    pub(super) fn check_agreement(&mut self) {
        let mut first: Option<(u64, u64, i64, u32)> = None;
        for member in self.members.iter().filter(|m| !m.removed && m.joined) {
            let Some(host) = &member.host else { continue };
            let (applied, revision, hash) = match host.hash_state() {
                Ok(state) => state,
                Err(error) => {
                    self.violation = Some(format!("m{}: HashKV failed: {error}", member.id));
                    return;
                }
            };
            match first {
                None => first = Some((member.id, applied, revision, hash)),
                Some((other, other_applied, other_revision, other_hash)) => {
                    if other_applied == applied && (other_revision, other_hash) != (revision, hash)
                    {
                        self.violation = Some(format!(
                            "MVCC agreement: at applied index {applied} m{other} has revision {other_revision} hash {other_hash:08x}, m{} has revision {revision} hash {hash:08x}",
                            member.id
                        ));
                        return;
                    }
                }
            }
        }
    }
}
