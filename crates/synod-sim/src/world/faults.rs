//! Faults and the network: crashes (between turns and inside them), partitions, slow links and
//! disks, pauses, membership changes, and the delivery of messages.

use super::*;

impl World {
    /// Members not removed, and how many of them are down.
    pub(super) fn live_and_down(&self) -> (usize, usize) {
        let live = self.members.iter().filter(|m| !m.removed);
        let down = live.clone().filter(|m| m.host.is_none()).count();
        (live.count(), down)
    }

    /// Now and then a turn crashes its member at a point inside it (never more members than a
    /// crash between turns could take down).
    pub(super) fn crash_point(&mut self, index: usize) -> Option<FaultPoint> {
        if !self.config.faults || self.now >= self.config.safety_ms {
            return None;
        }
        let (live, down) = self.live_and_down();
        if down >= live / 2 {
            return None;
        }
        let member = &self.members[index];
        let snapshot_arrives = member
            .inbox
            .iter()
            .any(|(m, _)| m.get_msg_type() == MessageType::MsgSnapshot);
        if snapshot_arrives && self.rng.chance(250_000) {
            return Some(FaultPoint::SnapshotInStateMachine);
        }
        if self.rng.chance(1_000) {
            return Some(FaultPoint::AfterLogSync);
        }
        None
    }

    /// Changes the membership as an operator would, one step at a time and only while every
    /// member runs (etcd's strict reconfiguration): add a learner, promote it once it caught up,
    /// then remove a voter (perhaps the leader), so voters come back to their first count.
    pub(super) fn change_membership(&mut self) {
        let live = self.members.iter().filter(|m| !m.removed);
        if live.clone().any(|m| m.host.is_none()) {
            return;
        }
        let Some(leader) = self.members.iter().position(Member::is_leader) else {
            return;
        };
        let Some(state) = self.members[leader].state.clone() else {
            return;
        };
        let id = self.next_request();
        let change = if let Some(&learner) = state.learners.first() {
            let caught_up = self.members.iter().any(|m| {
                m.id == learner
                    && m.state
                        .as_ref()
                        .is_some_and(|s| s.applied_index + 10 >= state.applied_index)
            });
            if caught_up {
                self.report.faults.promotions += 1;
                (MemberChangeKind::Promote, record(learner, false))
            } else if self.rng.chance(200_000) {
                self.report.faults.removals += 1;
                (MemberChangeKind::Remove, record(learner, true))
            } else {
                return;
            }
        } else if let Some(pending) = self
            .members
            .iter()
            .find(|m| !m.joined && !m.removed)
            .map(|m| m.id)
        {
            // Its addition was lost (a leader change): ask again.
            (MemberChangeKind::AddLearner, record(pending, true))
        } else if state.voters.len() > self.config.members {
            let voter = *self.rng.pick(&state.voters);
            self.report.faults.removals += 1;
            (MemberChangeKind::Remove, record(voter, false))
        } else {
            // A new member: started empty, then added as a learner.
            let new_id = self.members.len() as u64 + 1;
            match new_member(self._root.path(), new_id, &mut self.rng, false) {
                Ok(member) => self.members.push(member),
                Err(error) => {
                    self.violate(format!("adding m{new_id}: {error}"));
                    return;
                }
            }
            let index = self.members.len() - 1;
            if let Err(error) = self.open_member(index) {
                self.violate(format!("m{new_id} could not start: {error}"));
                return;
            }
            self.report.faults.learners_added += 1;
            (MemberChangeKind::AddLearner, record(new_id, true))
        };
        let member = &mut self.members[leader];
        member.conf_changes.push((id, change.0, change.1));
        member.waiting.insert(id, Waiting::Membership);
    }

    pub(super) fn inject_faults(&mut self) {
        let now = self.now;
        if self.net.partition_until != 0 && now >= self.net.partition_until {
            self.net.blocked.clear();
            self.net.partition_until = 0;
        }
        // Now and then (about every 300 ms), a membership change.
        if self.config.membership && self.rng.chance(3_300) {
            self.change_membership();
        }
        // Roughly: a fault of some kind every 150 ms.
        if !self.rng.chance(6_500) {
            return;
        }
        // Indexes run over every member ever started; quorum arithmetic over those not removed.
        let total = self.members.len();
        let (live, down) = self.live_and_down();
        let victim = self.rng.below(total as u64) as usize;
        match self.rng.below(100) {
            0..20 => {
                if self.members[victim].host.is_some() && down < live / 2 + 1 {
                    self.report.faults.crashes += 1;
                    let after = self.rng.between(20, 600);
                    self.crash(victim, after);
                }
            }
            20..40 => {
                if self.net.partition_until == 0 {
                    self.report.faults.partitions += 1;
                    self.net.partition_until = now + self.rng.between(100, 900);
                    let one_way = self.rng.chance(300_000);
                    let side: Vec<bool> = (0..total).map(|_| self.rng.chance(500_000)).collect();
                    for a in 0..total {
                        for b in 0..total {
                            if side[a] && !side[b] {
                                self.net.blocked.insert((a, b));
                                if !one_way {
                                    self.net.blocked.insert((b, a));
                                }
                            }
                        }
                    }
                }
            }
            40..50 => {
                let other = (victim + 1 + self.rng.below(total as u64 - 1) as usize) % total;
                self.report.faults.flapping_links += 1;
                self.net.flapping = Some((victim, other, now + self.rng.between(200, 800)));
            }
            50..57 => {
                self.report.faults.slow_members += 1;
                let until = now + self.rng.between(100, 800);
                self.net.slow.insert(victim, until);
            }
            57..62 => {
                self.report.faults.slow_disks += 1;
                let until = now + self.rng.between(100, 800);
                self.slow_disks.insert(victim, until);
            }
            62..77 => {
                self.report.faults.pauses += 1;
                self.members[victim].paused_until = now + self.rng.between(50, 700);
            }
            77..85 => {
                if self.members[victim].host.is_some() {
                    self.report.faults.fsync_failures += 1;
                    self.members[victim].disk.fail_next_sync();
                }
            }
            85..90 => {
                if self.members[victim].host.is_some() && !self.members[victim].disk.is_full() {
                    self.report.faults.full_disks += 1;
                    let room = self.rng.below(64 << 10) as usize;
                    self.members[victim].disk.fill(room);
                }
            }
            90..95 => {
                // Space freed on any disk that filled up.
                for member in &self.members {
                    member.disk.unfill();
                }
            }

            _ => {
                self.net.drop_per_million = self.rng.below(100_000);
                self.net.duplicate_per_million = self.rng.below(50_000);
            }
        }
    }

    /// Ends every fault: the liveness phase starts.
    pub(super) fn heal(&mut self) {
        self.net.blocked.clear();
        self.net.partition_until = 0;
        self.net.flapping = None;
        self.net.slow.clear();
        self.net.drop_per_million = 0;
        self.net.duplicate_per_million = 0;
        self.slow_disks.clear();
        for member in &mut self.members {
            member.paused_until = 0;
            member.disk.unfill();
            if member.host.is_none() && !member.removed {
                member.restart_at = Some(self.now);
            }
        }
    }

    pub(super) fn send(&mut self, from: usize, message: Message, after_ms: u64) {
        let Some(to) = self
            .members
            .iter()
            .position(|member| member.id == message.to)
        else {
            return;
        };
        self.report.messages += 1;
        let flapping_down = self.net.flapping.is_some_and(|(a, b, until)| {
            self.now < until
                && ((a, b) == (from, to) || (b, a) == (from, to))
                && (self.now / 25).is_multiple_of(2)
        });
        let blocked = self.net.blocked.contains(&(from, to)) || flapping_down;
        let dropped = blocked || self.rng.chance(self.net.drop_per_million);
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        if dropped {
            self.report.faults.dropped_messages += 1;
            let reports = &mut self.members[from].reports;
            if snapshot {
                reports.push(PeerReport::Snapshot(message.to, false));
            }
            if blocked {
                reports.push(PeerReport::Unreachable(message.to));
            }
            return;
        }
        let copies = if !snapshot && self.rng.chance(self.net.duplicate_per_million) {
            self.report.faults.duplicated_messages += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = after_ms + self.rng.between(1, 3);
            for end in [from, to] {
                if self
                    .net
                    .slow
                    .get(&end)
                    .is_some_and(|&until| until > self.now)
                {
                    delay += self.rng.between(10, 60);
                }
            }
            self.net.seq += 1;
            self.net.queue.insert(
                (self.now + delay, self.net.seq),
                Envelope {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    pub(super) fn deliver_messages(&mut self) {
        while let Some(entry) = self.net.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let Envelope {
                from,
                to,
                mut message,
            } = entry.remove();
            if self.members[to].host.is_none() {
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    self.members[from]
                        .reports
                        .push(PeerReport::Snapshot(message.to, false));
                }
                continue;
            }
            let mut prepared = None;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // The leader streams the view the message names; the follower builds its own
                // file from the rows, on its own disk, as over the peer stream, and the key
                // index from the same rows. Every other transfer leaves the index out, so the
                // install rebuilds it from the file: both ways are exercised.
                let name = String::from_utf8_lossy(&message.get_snapshot().data).into_owned();
                self.net.seq += 1;
                let target = self.members[to]
                    .dir
                    .join(format!("received-{}.db", self.net.seq));
                let rows = self.members[from]
                    .host
                    .as_ref()
                    .and_then(|host| host.snapshot_rows(name).ok().flatten());
                let with_index = self.net.seq.is_multiple_of(2);
                let copied = rows.is_some_and(|chunks| {
                    let slices = || chunks.iter().map(Vec::as_slice);
                    if with_index {
                        prepared = synod_core::snapshot::index_from_rows(&mut slices()).ok();
                    }
                    synod_core::snapshot::build_from_rows(
                        &self.members[to].disk,
                        &target,
                        &mut slices(),
                    )
                    .is_ok()
                        && prepared.is_some() == with_index
                });
                self.members[from]
                    .reports
                    .push(PeerReport::Snapshot(message.to, copied));
                if !copied {
                    continue;
                }
                message.mut_snapshot().data = target.display().to_string().into_bytes().into();
            }
            self.members[to].inbox.push((message, prepared));
        }
    }
}
