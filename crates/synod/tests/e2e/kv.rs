//! KV and Txn through the `etcd-client` crate: the semantics and errors an etcd user relies on.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use crate::harness::Member;

/// Asserts that a call failed with etcd's gRPC code and exact message.
pub fn assert_etcd_error<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), code, "code for {message:?}");
            assert_eq!(status.message(), message);
        }
        other => panic!("expected {code:?} {message:?}, got {other:?}"),
    }
}

/// Goal: put/get/delete with prefixes, ranges, limits, sorting, revisions and filters behave as
/// in etcd, with revisions counted from 1 and versions reset by deletes.
#[tokio::test]
async fn range_put_delete_follow_etcd_semantics() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;

    let first = client.put("a", "1", None).await.expect("put a");
    assert_eq!(
        first.header().expect("header").revision(),
        2,
        "a new store is at revision 1"
    );
    client.put("ab", "2", None).await.expect("put ab");
    client.put("b", "3", None).await.expect("put b");
    let updated = client
        .put("a", "4", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("update a");
    assert_eq!(updated.prev_key().expect("prev kv").value(), b"1");

    let got = client.get("a", None).await.expect("get a");
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.value()
        ),
        (2, 5, 2, b"4".as_slice())
    );

    let prefix = client
        .get("a", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(
        prefix.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![b"a".as_slice(), b"ab"]
    );
    let all = client
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .expect("limit");
    assert_eq!(all.kvs().len(), 2);
    assert!(all.more());
    assert_eq!(all.count(), 3, "count ignores the limit");
    let sorted = client
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .expect("sorted");
    assert_eq!(sorted.kvs()[0].key(), b"a", "a was modified last");
    let from_key = client
        .get(
            "ab",
            Some(GetOptions::new().with_from_key().with_keys_only()),
        )
        .await
        .expect("from key");
    assert_eq!(from_key.kvs().len(), 2);
    assert!(from_key.kvs().iter().all(|kv| kv.value().is_empty()));
    let counted = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
    let filtered = client
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_min_mod_revision(4)
                    .with_max_create_revision(3),
            ),
        )
        .await
        .expect("filters");
    // a: created 2, modified 5; ab: created 3, modified 3; b: created 4, modified 4.
    assert_eq!(
        filtered.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![b"a".as_slice()]
    );
    assert_eq!(filtered.count(), 3, "count ignores the filters, as in etcd");
    let old = client
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("history");
    assert_eq!(old.kvs()[0].value(), b"1");
    let serializable = client
        .get("b", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    assert_eq!(serializable.kvs()[0].value(), b"3");

    let deleted = client
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(deleted.deleted(), 2);
    assert_eq!(deleted.prev_kvs().len(), 2);
    assert_eq!(
        deleted.header().expect("header").revision(),
        6,
        "one revision for the whole delete"
    );
    let recreated = client.put("a", "again", None).await.expect("recreate");
    let kv = client.get("a", None).await.expect("get").kvs()[0].clone();
    assert_eq!(
        (kv.version(), kv.create_revision()),
        (1, recreated.header().expect("header").revision())
    );
    let missing = client
        .get("nothing", None)
        .await
        .expect("a missing key is not an error");
    assert_eq!((missing.kvs().len(), missing.count()), (0, 0));

    let ignored = client
        .put("b", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("ignore_value");
    assert!(ignored.header().is_some());
    assert_eq!(
        client.get("b", None).await.expect("get b").kvs()[0].value(),
        b"3"
    );
}

/// Goal: every error an etcd client can meet on KV carries etcd's code and exact message.
#[tokio::test]
async fn kv_errors_match_etcd() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(
        root.path(),
        &["--max-request-bytes", "4096", "--max-txn-ops", "4"],
    );
    let mut client = member.etcd_client().await;
    use tonic::Code;

    assert_etcd_error(
        client.put("", "v", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_etcd_error(
        client.get("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_etcd_error(
        client
            .put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_etcd_error(
        client
            .put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_etcd_error(
        client
            .put("k", "v", Some(PutOptions::new().with_lease(12345)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_etcd_error(
        client.put("k", vec![b'x'; 8192], None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Past the gRPC receive limit (the request limit + 512 KiB) grpc-go itself refuses.
    match client.put("k", vec![b'x'; 600 * 1024], None).await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("grpc: received message larger than max"),
                "{status:?}"
            );
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    // A txn nested past the protobuf decoder's depth is a bad argument, not an internal error.
    let mut deep = Txn::new().and_then([TxnOp::get("k", None)]);
    for _ in 0..1000 {
        deep = Txn::new().and_then([TxnOp::txn(deep)]);
    }
    match client.txn(deep).await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    client.put("k", "v1", None).await.expect("put");
    client.put("k", "v2", None).await.expect("put");
    assert_etcd_error(
        client
            .get("k", Some(GetOptions::new().with_revision(100)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    client.compact(3, None).await.expect("compact");
    assert_etcd_error(
        client
            .get("k", Some(GetOptions::new().with_revision(2)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_etcd_error(
        client.compact(2, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_etcd_error(
        client.compact(99, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let five_puts: Vec<TxnOp> = (0..5)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    assert_etcd_error(
        client.txn(Txn::new().and_then(five_puts)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_etcd_error(
        client
            .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_etcd_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::delete("a", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("ab", "2", None),
            ]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // The server is still healthy after all of that.
    assert_eq!(
        client.get("k", None).await.expect("get").kvs()[0].value(),
        b"v2"
    );
}

/// Goal: compare targets, branches, nested txns and the one-revision rule work as in etcd.
#[tokio::test]
async fn txn_compares_branches_and_nesting() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    client.put("x", "1", None).await.expect("put x");
    let x = client.get("x", None).await.expect("get x").kvs()[0].clone();

    let cas = Txn::new()
        .when([
            Compare::mod_revision("x", CompareOp::Equal, x.mod_revision()),
            Compare::value("x", CompareOp::Equal, "1"),
        ])
        .and_then([
            TxnOp::put("x", "2", None),
            TxnOp::put("y", "2", None),
            TxnOp::get("x", None),
        ])
        .or_else([TxnOp::get("x", None)]);
    let response = client.txn(cas).await.expect("cas");
    assert!(response.succeeded());
    let revision = response.header().expect("header").revision();
    assert_eq!(
        revision,
        x.mod_revision() + 1,
        "the whole txn is one revision"
    );
    match &response.op_responses()[2] {
        TxnOpResponse::Get(get) => {
            assert_eq!(get.kvs()[0].value(), b"2", "a txn reads its own writes")
        }
        other => panic!("unexpected {other:?}"),
    }

    let stale = Txn::new()
        .when([Compare::mod_revision(
            "x",
            CompareOp::Equal,
            x.mod_revision(),
        )])
        .and_then([TxnOp::put("x", "3", None)])
        .or_else([TxnOp::get("x", None)]);
    let response = client.txn(stale).await.expect("failed cas");
    assert!(!response.succeeded());
    assert_eq!(
        response.header().expect("header").revision(),
        revision,
        "a read-only branch makes no revision"
    );

    let absent = Txn::new()
        .when([Compare::create_revision("missing", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("missing", "now", None)]);
    assert!(
        client
            .txn(absent)
            .await
            .expect("create if absent")
            .succeeded()
    );
    let value_on_missing = Txn::new().when([Compare::value("never", CompareOp::NotEqual, "x")]);
    assert!(
        !client
            .txn(value_on_missing)
            .await
            .expect("value compare")
            .succeeded(),
        "a value compare on a missing key fails"
    );
    let versions = Txn::new().when([
        Compare::version("x", CompareOp::Greater, 1),
        Compare::version("x", CompareOp::Less, 3),
    ]);
    assert!(
        client
            .txn(versions)
            .await
            .expect("version compare")
            .succeeded()
    );

    let nested = Txn::new()
        .when([Compare::value("y", CompareOp::Equal, "2")])
        .and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::value("x", CompareOp::Equal, "nope")])
                .and_then([TxnOp::put("n", "then", None)])
                .or_else([TxnOp::put("n", "else", None)]),
        )]);
    let response = client.txn(nested).await.expect("nested");
    assert!(response.succeeded());
    match &response.op_responses()[0] {
        TxnOpResponse::Txn(inner) => assert!(!inner.succeeded()),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        client.get("n", None).await.expect("get n").kvs()[0].value(),
        b"else"
    );
    let range_compare =
        Txn::new().when([Compare::value("x", CompareOp::Greater, "0").with_prefix()]);
    assert!(
        client
            .txn(range_compare)
            .await
            .expect("range compare")
            .succeeded()
    );
}

/// Goal (regression, found by the differential test, seed 50): a txn that deletes a range and
/// then puts a key of that range with `ignore_value` passes etcd's checks (its duplicate-key check
/// reads a `"\0"` range end literally) and then fails midway: etcd 3.4 panics on it. Synod must
/// refuse it whole, apply none of it, and keep serving.
#[tokio::test]
async fn txn_that_crashes_etcd_is_refused_whole() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    client.put("d/y", "v", None).await.expect("put");
    let before = client
        .get("d/y", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let txn = Txn::new().and_then([
        TxnOp::delete("d/y", Some(DeleteOptions::new().with_from_key())),
        TxnOp::put("d/y", "", Some(PutOptions::new().with_ignore_value())),
    ]);
    assert_etcd_error(
        client.txn(txn).await,
        tonic::Code::InvalidArgument,
        "etcdserver: key not found",
    );
    let after = client
        .get("d/y", None)
        .await
        .expect("the member still serves");
    assert_eq!(after.kvs()[0].value(), b"v", "the delete was not applied");
    assert_eq!(
        after.header().expect("header").revision(),
        before,
        "no revision was made"
    );
}
