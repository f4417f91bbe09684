//! What each request does to the state: the data requests (puts, deletes, txns, compactions,
//! leases, alarms), membership changes, and the routing of Auth-service changes to the auth
//! store, after the caller's permissions are checked. The batch they run in is `mod.rs`'s.

use super::*;

impl StateMachine {
    pub(super) fn apply_request(
        &self,
        batch: &mut crate::mvcc::kv_store::WriteBatch<'_>,
        caller: Option<&AuthHeader>,
        request: Option<Request>,
        index: u64,
    ) -> Result<ApplyResult, StorageError> {
        if let (Some(caller), Some(request)) = (caller, &request)
            && let Err(refused) = permissions::check(&self.auth, &self.lessor, caller, request)
        {
            return Ok(Err(refused));
        }
        let change = match request {
            Some(Request::AuthEnable(_)) => Some(Change::Enable),
            Some(Request::AuthDisable(_)) => Some(Change::Disable),
            Some(Request::UserAdd(add)) => Some(Change::UserAdd(add)),
            Some(Request::UserDelete(delete)) => Some(Change::UserDelete(delete.name)),
            Some(Request::UserChangePassword(change)) => Some(Change::UserChangePassword(change)),
            Some(Request::UserGrantRole(grant)) => Some(Change::UserGrantRole {
                user: grant.user,
                role: grant.role,
            }),
            Some(Request::UserRevokeRole(revoke)) => Some(Change::UserRevokeRole {
                user: revoke.name,
                role: revoke.role,
            }),
            Some(Request::RoleAdd(add)) => Some(Change::RoleAdd(add.name)),
            Some(Request::RoleDelete(delete)) => Some(Change::RoleDelete(delete.role)),
            Some(Request::RoleGrantPermission(grant)) => Some(Change::RoleGrantPermission(grant)),
            Some(Request::RoleRevokePermission(revoke)) => {
                Some(Change::RoleRevokePermission(revoke))
            }
            Some(Request::Authenticate(authenticate)) => Some(Change::Authenticate {
                name: authenticate.name,
                simple_token: authenticate.simple_token,
            }),
            other => return self.apply_data_request(batch, other),
        };
        let Some(change) = change else {
            return Ok(Err(RequestError::KeyNotFound));
        };
        Ok(self
            .auth
            .apply(batch.transaction(), caller, change, index)?
            .map(Response::Auth))
    }

    /// Applies a request to the keys, the leases, the alarms or the members.
    fn apply_data_request(
        &self,
        batch: &mut crate::mvcc::kv_store::WriteBatch<'_>,
        request: Option<Request>,
    ) -> Result<ApplyResult, StorageError> {
        let outcome = match request {
            None => return Ok(Err(RequestError::KeyNotFound)),
            // Routed to the auth store by `apply_request`.
            Some(
                Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::UserAdd(_)
                | Request::UserDelete(_)
                | Request::UserChangePassword(_)
                | Request::UserGrantRole(_)
                | Request::UserRevokeRole(_)
                | Request::RoleAdd(_)
                | Request::RoleDelete(_)
                | Request::RoleGrantPermission(_)
                | Request::RoleRevokePermission(_)
                | Request::Authenticate(_),
            ) => return Ok(Err(RequestError::InvalidAuthMgmt)),
            Some(Request::Put(put)) => {
                if self.alarms.is_raised(AlarmType::Nospace) {
                    return Ok(Err(RequestError::NoSpace));
                }
                // A standalone put checks its lease before `ignore_*` (which `put` checks), while
                // a txn checks each put the other way round (`check_put`), as etcd does.
                if put.lease != 0 && !self.lessor.contains(put.lease) {
                    return Ok(Err(RequestError::LeaseNotFound));
                }
                let mut txn = batch.begin();
                let response = self.put(&mut txn, &put);
                txn.end();
                response.map(Response::Put)
            }
            Some(Request::DeleteRange(delete)) => {
                let mut txn = batch.begin();
                let response = self.delete_range(&mut txn, &delete);
                txn.end();
                response.map(Response::DeleteRange)
            }
            Some(Request::Txn(request)) => {
                self.store.counters().txns.inc();
                if txn_puts(&request) && self.alarms.is_raised(AlarmType::Nospace) {
                    return Ok(Err(RequestError::NoSpace));
                }
                self.txn(batch, &request).map(Response::Txn)
            }
            Some(Request::Compaction(compaction)) => {
                batch.compact(compaction.revision).and_then(|()| {
                    // `physical`: the caller waits until the old revisions are gone from disk
                    // (etcd's meaning), so they go now, in this entry.
                    if compaction.physical {
                        batch.sweep(usize::MAX)?;
                    }
                    Ok(Response::Compaction(CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: batch.revision(),
                            ..ResponseHeader::default()
                        }),
                    }))
                })
            }
            Some(Request::LeaseGrant(grant)) => {
                if self.alarms.is_raised(AlarmType::Nospace) {
                    return Ok(Err(RequestError::NoSpace));
                }
                match self
                    .lessor
                    .grant(batch.transaction(), grant.id, grant.ttl)?
                {
                    Ok(ttl) => Ok(Response::LeaseGrant(LeaseGrantResponse {
                        header: Some(ResponseHeader {
                            revision: batch.revision(),
                            ..ResponseHeader::default()
                        }),
                        id: grant.id,
                        ttl,
                        error: String::new(),
                    })),
                    Err(refused) => Err(refused.into()),
                }
            }
            Some(Request::LeaseRevoke(revoke)) => {
                match self.lessor.revoke(batch.transaction(), revoke.id)? {
                    Ok(keys) => {
                        let mut txn = batch.begin();
                        let mut outcome = Ok(());
                        for key in &keys {
                            if let Err(error) = txn.delete_range(key, &[]) {
                                outcome = Err(error);
                                break;
                            }
                        }
                        // A ZooKeeper session's ephemerals went: their parents record it.
                        if outcome.is_ok()
                            && keys.iter().any(|key| key.starts_with(crate::zk::PREFIX))
                        {
                            outcome = crate::zk::after_revoke(
                                &mut ZkTxn {
                                    txn: &mut txn,
                                    lessor: &self.lessor,
                                },
                                &keys,
                            );
                        }
                        let revision = txn.end();
                        outcome.map(|()| {
                            Response::LeaseRevoke(LeaseRevokeResponse {
                                header: Some(ResponseHeader {
                                    revision,
                                    ..ResponseHeader::default()
                                }),
                            })
                        })
                    }
                    Err(refused) => Err(refused.into()),
                }
            }
            Some(Request::LeaseCheckpoint(request)) => {
                for checkpoint in &request.checkpoints {
                    self.lessor.checkpoint(
                        batch.transaction(),
                        checkpoint.id,
                        checkpoint.remaining_ttl,
                    )?;
                }
                Ok(Response::LeaseCheckpoint(LeaseCheckpointResponse {
                    header: Some(ResponseHeader {
                        revision: batch.revision(),
                        ..ResponseHeader::default()
                    }),
                }))
            }
            Some(Request::Alarm(alarm)) => {
                self.alarm(batch.transaction(), &alarm).map(Response::Alarm)
            }
            Some(Request::MemberAttributes(attributes)) => {
                let tx = batch.transaction();
                match backend::member(tx, attributes.id)? {
                    None => Err(RequestError::MemberNotFound.into()),
                    Some(mut member) => {
                        member.name = attributes.name;
                        member.client_urls = attributes.client_urls;
                        backend::put_member(tx, &member)?;
                        Ok(Response::Member(member))
                    }
                }
            }
            Some(Request::ImportBase(base)) => self.import_base(batch, &base),
            Some(Request::ImportRevision(import)) => {
                if import.revision <= batch.revision() {
                    return Ok(Err(RequestError::ImportRevisionPast));
                }
                // The changes only: a copied revision happened at the source, unconditionally.
                let changes = TxnRequest {
                    success: import.changes.unwrap_or_default().success,
                    ..TxnRequest::default()
                };
                batch.skip_to(import.revision - 1);
                self.txn(batch, &changes).map(|_| Response::Imported {
                    revision: batch.revision(),
                })
            }
            Some(Request::ZkWrite(write)) => {
                if !write.bootstrap && self.alarms.is_raised(AlarmType::Nospace) {
                    return Ok(Err(RequestError::NoSpace));
                }
                if write.session != 0 && !self.lessor.contains(write.session) {
                    let results = write
                        .ops
                        .iter()
                        .map(|op| crate::zk::OpResult {
                            opcode: op.opcode,
                            err: crate::zk::code::SESSION_EXPIRED,
                            path: String::new(),
                            stat: None,
                        })
                        .collect();
                    return Ok(Ok(Response::Zk(crate::zk::ZkOutcome {
                        revision: batch.revision(),
                        results,
                    })));
                }
                let mut txn = batch.begin();
                let results = crate::zk::apply(
                    &mut ZkTxn {
                        txn: &mut txn,
                        lessor: &self.lessor,
                    },
                    &write,
                );
                let revision = txn.end();
                results.map(|results| Response::Zk(crate::zk::ZkOutcome { revision, results }))
            }
            Some(Request::MemberUpdate(update)) => {
                let tx = batch.transaction();
                match backend::member(tx, update.id)? {
                    None => Err(RequestError::MemberNotFound.into()),
                    Some(mut member) => {
                        member.peer_urls = update.peer_urls;
                        backend::put_member(tx, &member)?;
                        Ok(Response::Member(member))
                    }
                }
            }
        };
        match outcome {
            Ok(response) => Ok(Ok(response)),
            Err(Error::Request(refused)) => Ok(Err(refused)),
            Err(Error::Storage(failure)) => Err(failure),
        }
    }

    /// A chunk of another store's keys (`synod migrate`): only into an empty store, which the
    /// last chunk moves to the copy's revision, history below it compacted.
    fn import_base(
        &self,
        batch: &mut crate::mvcc::kv_store::WriteBatch<'_>,
        base: &synod_api::synodpb::ImportBase,
    ) -> Result<Response, Error> {
        // Until the last chunk the store stays at its first revision; one that moved on (a
        // write, or a finished copy) takes no more.
        if batch.revision() > 1 || (base.first == 0 && self.store.keys() > 0) {
            return Err(RequestError::ImportNotEmpty.into());
        }
        for kv in &base.kvs {
            let valid = !kv.key.is_empty()
                && kv.mod_revision <= base.revision
                && kv.create_revision >= 1
                && kv.create_revision <= kv.mod_revision
                && kv.version >= 1;
            if !valid {
                return Err(RequestError::KeyNotFound.into());
            }
            if kv.lease != 0 && !self.lessor.contains(kv.lease) {
                return Err(RequestError::LeaseNotFound.into());
            }
        }
        for (offset, kv) in base.kvs.iter().enumerate() {
            batch.import_key(kv, base.first + offset as i64)?;
            if kv.lease != 0 {
                self.lessor.attach(&kv.key, kv.lease);
            }
        }
        if base.last && base.revision > batch.revision() {
            batch.skip_to(base.revision);
            batch.compact(base.revision)?;
        }
        Ok(Response::Imported {
            revision: batch.revision(),
        })
    }

    /// Records a configuration change Raft has accepted in the member list.
    pub(super) fn apply_member_change(
        &self,
        batch: &crate::mvcc::kv_store::WriteBatch<'_>,
        kind: ConfChangeType,
        member: MemberRecord,
    ) -> Result<ApplyResult, StorageError> {
        let tx = batch.transaction();
        let existing = backend::member(tx, member.id)?;
        let record = match kind {
            ConfChangeType::AddNode => {
                let mut record = existing.unwrap_or(member);
                record.is_learner = false;
                backend::put_member(tx, &record)?;
                record
            }
            ConfChangeType::AddLearnerNode => {
                let mut record = existing.unwrap_or(member);
                record.is_learner = true;
                backend::put_member(tx, &record)?;
                record
            }
            ConfChangeType::RemoveNode => {
                backend::remove_member(tx, member.id)?;
                existing.unwrap_or(member)
            }
        };
        Ok(Ok(Response::Member(record)))
    }

    fn put(&self, txn: &mut RevisionTxn<'_, '_>, put: &PutRequest) -> Result<PutResponse, Error> {
        let previous = if put.ignore_value || put.ignore_lease || put.prev_kv {
            txn.get(&put.key)?
        } else {
            None
        };
        if (put.ignore_value || put.ignore_lease) && previous.is_none() {
            return Err(RequestError::KeyNotFound.into());
        }
        let value = match (&previous, put.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => put.value.clone(),
        };
        let lease = match (&previous, put.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => put.lease,
        };
        let kv = txn.put(&put.key, value, lease)?;
        self.lessor.attach(&put.key, lease);
        Ok(PutResponse {
            header: Some(ResponseHeader {
                revision: kv.mod_revision,
                ..ResponseHeader::default()
            }),
            prev_kv: if put.prev_kv { previous } else { None },
        })
    }

    fn delete_range(
        &self,
        txn: &mut RevisionTxn<'_, '_>,
        delete: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        let deleted = txn.delete_range(&delete.key, &delete.range_end)?;
        for kv in &deleted {
            self.lessor.attach(&kv.key, 0);
        }
        let revision = txn.read_revision();
        Ok(DeleteRangeResponse {
            header: Some(ResponseHeader {
                revision,
                ..ResponseHeader::default()
            }),
            deleted: deleted.len() as i64,
            prev_kvs: if delete.prev_kv { deleted } else { Vec::new() },
        })
    }

    fn txn(
        &self,
        batch: &mut crate::mvcc::kv_store::WriteBatch<'_>,
        request: &TxnRequest,
    ) -> Result<TxnResponse, Error> {
        let mut txn = batch.begin();
        let mut path = Vec::new();
        txn_path(&txn, request, &mut path)?;
        check_txn(&txn, &self.lessor, request, &mut path.iter().copied())?;
        check_ignore_targets(&txn, request, &mut path.iter().copied(), &mut Vec::new())?;
        let mut response = match self.execute_txn(&mut txn, request, &mut path.into_iter()) {
            Err(Error::Request(refused)) => {
                // Every refusal is found by the checks above, before anything is written; one
                // found here would leave the txn half applied, so the member stops instead
                // (etcd panics in the same place).
                return Err(StorageError::corrupt(format!(
                    "a txn was refused ({refused}) after some of its writes; refusing to apply it partially"
                ))
                .into());
            }
            other => other,
        };
        if let Ok(response) = &mut response {
            // Only the outer txn's header carries the revision; nested ones keep an empty
            // header, as in etcd.
            response.header = Some(ResponseHeader {
                revision: txn.read_revision(),
                ..ResponseHeader::default()
            });
        }
        txn.end();
        response
    }

    fn execute_txn(
        &self,
        txn: &mut RevisionTxn<'_, '_>,
        request: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResponse, Error> {
        let (succeeded, ops) = taken_branch(request, path);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    response_op::Response::ResponseRange(execute_range(txn, range)?)
                }
                Some(request_op::Request::RequestPut(put)) => {
                    response_op::Response::ResponsePut(self.put(txn, put)?)
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(txn, delete)?)
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    response_op::Response::ResponseTxn(self.execute_txn(txn, nested, path)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    fn alarm(
        &self,
        tx: &redb::WriteTransaction,
        request: &AlarmRequest,
    ) -> Result<AlarmResponse, Error> {
        let mut table = tx.open_table(ALARM).map_err(StorageError::backend)?;
        let mut raised = self.alarms.lock();
        let key = (request.member_id, request.alarm);
        let mut answer = Vec::new();
        match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Get) => {
                answer = raised
                    .iter()
                    .map(|(member_id, alarm)| AlarmMember {
                        member_id: *member_id,
                        alarm: *alarm,
                    })
                    .collect();
            }
            Ok(AlarmAction::Activate) => {
                if request.alarm != AlarmType::None as i32 && raised.insert(key) {
                    table.insert(key, ()).map_err(StorageError::backend)?;
                    answer.push(AlarmMember {
                        member_id: request.member_id,
                        alarm: request.alarm,
                    });
                }
            }
            Ok(AlarmAction::Deactivate) => {
                if raised.remove(&key) {
                    table.remove(key).map_err(StorageError::backend)?;
                    answer.push(AlarmMember {
                        member_id: request.member_id,
                        alarm: request.alarm,
                    });
                }
            }
            Err(_) => {}
        }
        Ok(AlarmResponse {
            header: Some(ResponseHeader::default()),
            alarms: answer,
        })
    }
}

/// A request's revision as ZooKeeper's writes see it: reads through it, and writes that keep the
/// lessor's record of which keys each lease holds.
struct ZkTxn<'t, 'b, 's> {
    txn: &'t mut RevisionTxn<'b, 's>,
    lessor: &'t Lessor,
}

impl crate::zk::Reader for ZkTxn<'_, '_, '_> {
    fn range(&self, key: &[u8], end: &[u8], options: RangeOptions) -> Result<RangeResult, Error> {
        self.txn.range(key, end, options)
    }
}

impl crate::zk::Writer for ZkTxn<'_, '_, '_> {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<KeyValue, Error> {
        let kv = self.txn.put(key, value, lease)?;
        self.lessor.attach(key, lease);
        Ok(kv)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        for kv in self.txn.delete_range(key, &[])? {
            self.lessor.attach(&kv.key, 0);
        }
        Ok(())
    }
}

/// etcd's name for a request in `etcd_server_apply_duration_seconds` (its applier's `op`), and
/// Synod's own for the requests etcd does not have.
pub(super) fn operation_name(request: &Request) -> &'static str {
    match request {
        Request::Put(_) => "Put",
        Request::DeleteRange(_) => "DeleteRange",
        Request::Txn(_) => "Txn",
        Request::Compaction(_) => "Compaction",
        Request::LeaseGrant(_) => "LeaseGrant",
        Request::LeaseRevoke(_) => "LeaseRevoke",
        Request::LeaseCheckpoint(_) => "LeaseCheckpoint",
        Request::Alarm(_) => "Alarm",
        Request::MemberAttributes(_) => "ClusterMemberAttrSet",
        Request::MemberUpdate(_) => "MemberUpdate",
        Request::AuthEnable(_) => "AuthEnable",
        Request::AuthDisable(_) => "AuthDisable",
        Request::UserAdd(_) => "AuthUserAdd",
        Request::UserDelete(_) => "AuthUserDelete",
        Request::UserChangePassword(_) => "AuthUserChangePassword",
        Request::UserGrantRole(_) => "AuthUserGrantRole",
        Request::UserRevokeRole(_) => "AuthUserRevokeRole",
        Request::RoleAdd(_) => "AuthRoleAdd",
        Request::RoleDelete(_) => "AuthRoleDelete",
        Request::RoleGrantPermission(_) => "AuthRoleGrantPermission",
        Request::RoleRevokePermission(_) => "AuthRoleRevokePermission",
        Request::Authenticate(_) => "Authenticate",
        Request::ImportBase(_) => "ImportBase",
        Request::ImportRevision(_) => "ImportRevision",
        Request::ZkWrite(_) => "ZkWrite",
    }
}
