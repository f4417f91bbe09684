//! The clients: the recorded key-value workload, the lease keeper, and what their calls are
//! answered with.

use super::*;

impl World {
    pub(super) fn dispatch(&mut self, index: usize, replies: Vec<(u64, Done)>) {
        for (id, done) in replies {
            let Some(waiting) = self.members[index].waiting.remove(&id) else {
                continue;
            };
            match (waiting, done) {
                (Waiting::Kv(op), Done::Applied(response)) => {
                    let output = match response {
                        Response::Put(_) | Response::DeleteRange(_) => Some(KvOutput::Done),
                        Response::Txn(txn) => Some(KvOutput::Swapped(txn.succeeded)),
                        _ => None,
                    };
                    match output {
                        Some(output) => self.complete(op, output),
                        None => self.fail(op),
                    }
                }
                (Waiting::Kv(op), Done::Value(value)) => self.complete(op, KvOutput::Value(value)),
                // The client's deadline makes its outcome unknown.
                (Waiting::Kv(_), Done::Unknown) => {}
                (Waiting::Kv(op), _) => self.fail(op),
                (Waiting::LeaseGrant(lease), Done::Applied(_)) => {
                    self.keeper.granted = true;
                    self.keeper.busy_until = 0;
                    self.attach_lease_key(index, lease);
                }
                (Waiting::LeaseGrant(_), Done::Unknown) => {}
                (Waiting::LeaseGrant(_), _) => {
                    self.keeper.lease = None;
                    self.keeper.busy_until = 0;
                }
                (Waiting::LeaseAttach, _) => self.keeper.busy_until = 0,
                (Waiting::KeepAlive(_, _), Done::Renewed { ttl: 0 }) => {
                    // The lease is gone.
                    self.keeper.lease = None;
                    self.keeper.busy_until = 0;
                }
                (Waiting::KeepAlive(lease, issued), Done::Renewed { .. }) => {
                    self.leases.entry(lease).or_default().alive_at.push(issued);
                    self.keeper.busy_until = 0;
                }
                (Waiting::KeepAlive(..), _) => self.keeper.busy_until = 0,
                (Waiting::Serializable(key), Done::Local(value, revision)) => {
                    let member = &self.members[index];
                    self.local_reads.push(LocalRead {
                        member: member.id,
                        incarnation: member.incarnation,
                        key,
                        revision,
                        value,
                    });
                }
                (
                    Waiting::Probe
                    | Waiting::Membership
                    | Waiting::Serializable(_)
                    | Waiting::LeaseRevoke,
                    _,
                ) => {}
            }
        }
    }

    pub(super) fn attach_lease_key(&mut self, index: usize, lease: i64) {
        let id = self.next_request();
        let request = InternalRequest {
            auth: None,
            id,
            origin: 0,
            request: Some(Request::Put(PutRequest {
                key: lease_key(lease),
                value: b"ephemeral".to_vec(),
                lease,
                ..PutRequest::default()
            })),
        };
        let member = &mut self.members[index];
        member.proposals.push(request);
        member.waiting.insert(id, Waiting::LeaseAttach);
        self.keeper.busy_until = self.now + CALL_TIMEOUT_MS;
    }

    pub(super) fn complete(&mut self, op: usize, output: KvOutput) {
        if !self.deadlines.contains_key(&op) {
            // The client stopped waiting (timed out) or already has its answer.
            return;
        }
        self.events += 1;
        self.history[op].result = Some((self.events, output.clone()));
        self.deadlines.remove(&op);
        self.report.operations += 1;
        self.trace
            .add(op as u64 ^ digest(format!("{output:?}").as_bytes()));
        let client = self.history[op].client as usize;
        self.clients[client].busy = None;
        self.clients[client].next_at = self.now + self.rng.between(0, 10);
    }

    /// The operation certainly did not take effect (refused before it was proposed, or a read
    /// that could not be served).
    pub(super) fn fail(&mut self, op: usize) {
        if !self.deadlines.contains_key(&op) {
            return;
        }
        self.failed.insert(op);
        self.deadlines.remove(&op);
        let client = self.history[op].client as usize;
        self.clients[client].busy = None;
        self.clients[client].next_at = self.now + self.rng.between(5, 30);
    }

    /// Calls unanswered past their deadline end with an unknown outcome.
    pub(super) fn expire_calls(&mut self) {
        let expired: Vec<usize> = self
            .deadlines
            .iter()
            .filter(|&(_, &deadline)| deadline <= self.now)
            .map(|(&op, _)| op)
            .collect();
        for op in expired {
            self.deadlines.remove(&op);
            self.report.indeterminate += 1;
            let client = self.history[op].client as usize;
            self.clients[client].busy = None;
            self.clients[client].next_at = self.now + self.rng.between(0, 10);
        }
    }

    pub(super) fn clients_act(&mut self) {
        self.expire_calls();
        for client in 0..self.clients.len() {
            if self.clients[client].busy.is_some() || self.clients[client].next_at > self.now {
                continue;
            }
            self.issue(client);
        }
        self.keep_leases();
    }

    pub(super) fn issue(&mut self, client: usize) {
        let member = self.rng.below(self.members.len() as u64) as usize;
        let key = key_name(self.rng.below(self.config.keys as u64) as usize);
        if self.rng.chance(100_000) {
            // A serializable read: any member answers from what it has applied; it is checked
            // against the revision it reports, not for linearizability.
            let id = self.next_request();
            let target = &mut self.members[member];
            if target.host.is_some() {
                target
                    .reads
                    .push((id, ReadKind::Serializable(key.clone().into_bytes())));
                target.waiting.insert(id, Waiting::Serializable(key));
            }
            self.clients[client].next_at = self.now + self.rng.between(1, 10);
            return;
        }
        self.clients[client].sequence += 1;
        let mut value = format!("c{client}-{}", self.clients[client].sequence);
        // One value in eight is long enough to be stored in chunks (`mvcc::rows`), so apply,
        // snapshots, compaction and crashes meet chunked values too.
        if self.rng.below(8) == 0 {
            let filler = 2_001 + self.rng.below(3_000) as usize;
            value.push_str(&".".repeat(filler));
        }
        let input = match self.rng.below(100) {
            0..35 => KvInput::Put { key, value },
            35..65 => KvInput::Get { key },
            65..90 => {
                let expected = match self.rng.below(3) {
                    0 => None,
                    _ => Some(format!(
                        "c{}-{}",
                        self.rng.below(self.clients.len() as u64),
                        self.rng.between(1, self.clients[client].sequence.max(2))
                    )),
                };
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
            _ => KvInput::Delete { key },
        };
        self.events += 1;
        let op = self.history.len();
        self.history.push(Operation {
            client: client as u64,
            input: input.clone(),
            call: self.events,
            result: None,
        });
        self.clients[client].busy = Some((op, self.now));
        self.deadlines.insert(op, self.now + CALL_TIMEOUT_MS);
        let request = match &input {
            KvInput::Get { .. } => None,
            KvInput::Put { key, value } => Some(Request::Put(PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..PutRequest::default()
            })),
            KvInput::Delete { key } => Some(Request::DeleteRange(DeleteRangeRequest {
                key: key.clone().into_bytes(),
                ..DeleteRangeRequest::default()
            })),
            KvInput::Cas { key, expected, new } => {
                let compare = match expected {
                    Some(value) => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(compare::TargetUnion::Value(value.clone().into_bytes())),
                        ..Compare::default()
                    },
                    None => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(compare::TargetUnion::Version(0)),
                        ..Compare::default()
                    },
                };
                Some(Request::Txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone().into_bytes(),
                            value: new.clone().into_bytes(),
                            ..PutRequest::default()
                        })),
                    }],
                    failure: Vec::new(),
                }))
            }
        };
        let id = self.next_request();
        let target = &mut self.members[member];
        if target.host.is_none() {
            // Connection refused: a member that is down (or removed) certainly did not take it.
            self.fail(op);
            return;
        }
        // A paused member takes the request and answers when it runs again (or the call times
        // out first).
        target.waiting.insert(id, Waiting::Kv(op));
        match request {
            None => target
                .reads
                .push((id, ReadKind::Kv(input.key().as_bytes().to_vec()))),
            Some(request) => target.proposals.push(InternalRequest {
                auth: None,
                id,
                origin: 0,
                request: Some(request),
            }),
        }
    }

    /// One client holds a lease with a key attached, keeps it alive through the leader, and now
    /// and then abandons it (so it expires).
    pub(super) fn keep_leases(&mut self) {
        if self.keeper.busy_until > self.now {
            return;
        }
        match (self.keeper.lease, self.keeper.granted) {
            (None, _) => {
                let lease = self.keeper.next_id;
                self.keeper.next_id += 1;
                let member = self.rng.below(self.members.len() as u64) as usize;
                let id = self.next_request();
                let request = InternalRequest {
                    auth: None,
                    id,
                    origin: 0,
                    request: Some(Request::LeaseGrant(LeaseGrantRequest {
                        ttl: LEASE_TTL_SECONDS,
                        id: lease,
                    })),
                };
                let now = self.now;
                let target = &mut self.members[member];
                if target.host.is_some() {
                    target.proposals.push(request);
                    target.waiting.insert(id, Waiting::LeaseGrant(lease));
                    self.keeper.lease = Some(lease);
                    self.keeper.granted = false;
                    self.keeper.abandoned = false;
                    self.keeper.busy_until = now + CALL_TIMEOUT_MS;
                    self.keeper.next_keep_alive = now + KEEP_ALIVE_EVERY_MS;
                    // Any leader's deadline for it starts after this moment.
                    self.leases.entry(lease).or_default().alive_at.push(now);
                } else {
                    self.keeper.busy_until = now + 20;
                }
            }
            (Some(_), false) => {
                // The grant timed out: its outcome is unknown; try another lease.
                self.keeper.lease = None;
            }
            (Some(lease), true) => {
                if self.keeper.abandoned || self.now < self.keeper.next_keep_alive {
                    if self.keeper.abandoned && self.rng.chance(2_000) {
                        self.keeper.lease = None;
                    }
                    return;
                }
                if self.rng.chance(30_000) {
                    self.keeper.abandoned = true;
                    return;
                }
                if self.rng.chance(20_000) {
                    // The client revokes its lease (any member takes the request).
                    self.leases.entry(lease).or_default().revoked_by_client = true;
                    let member = self.rng.below(self.members.len() as u64) as usize;
                    let id = self.next_request();
                    let target = &mut self.members[member];
                    if target.host.is_some() {
                        target.proposals.push(InternalRequest {
                            auth: None,
                            id,
                            origin: 0,
                            request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id: lease })),
                        });
                        target.waiting.insert(id, Waiting::LeaseRevoke);
                    }
                    self.keeper.lease = None;
                    return;
                }
                self.keeper.next_keep_alive = self.now + KEEP_ALIVE_EVERY_MS;
                let now = self.now;
                let Some(leader) = self
                    .members
                    .iter()
                    .position(|m| m.paused_until <= now && m.is_leader())
                else {
                    return;
                };
                let id = self.next_request();
                let target = &mut self.members[leader];
                target.reads.push((id, ReadKind::KeepAlive { lease }));
                target.waiting.insert(id, Waiting::KeepAlive(lease, now));
                self.keeper.busy_until = now + CALL_TIMEOUT_MS;
            }
        }
    }
}
