//! Writer → Reader round trips, including the shapes that exercise multi-level trees, overflow
//! nodes and inline buckets, and the writer's input validation.

use std::io::Cursor;

use synod_bbolt::{Error, MAX_KEY_SIZE, Reader, Writer};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The buckets etcd 3.4 creates, in name order.
const ETCD_BUCKETS: [&str; 10] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "cluster",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

fn write(page_size: u32, buckets: &[(&[u8], &Pairs)]) -> Vec<u8> {
    let mut writer = Writer::with_page_size(Cursor::new(Vec::new()), page_size).expect("writer");
    for (name, pairs) in buckets {
        writer.bucket(name).expect("bucket");
        for (k, v) in pairs.iter() {
            writer.put(k, v).expect("put");
        }
    }
    let written = writer.finish().expect("finish the file");
    let bytes = written.inner.into_inner();
    assert_eq!(bytes.len() as u64, written.data_len);
    assert_eq!(written.data_len, written.pgid * u64::from(page_size));
    bytes
}

fn read_all(bytes: &[u8]) -> Vec<(Vec<u8>, Pairs)> {
    let reader = Reader::new(bytes).expect("valid file");
    reader
        .buckets()
        .expect("list buckets")
        .iter()
        .map(|b| {
            (
                b.name().to_vec(),
                reader
                    .iter(b)
                    .collect::<Result<Pairs, _>>()
                    .expect("read every pair"),
            )
        })
        .collect()
}

fn assert_round_trip(page_size: u32, buckets: &[(&[u8], &Pairs)]) -> Vec<u8> {
    let bytes = write(page_size, buckets);
    check_structure(&bytes, page_size as usize);
    let back = read_all(&bytes);
    assert_eq!(back.len(), buckets.len());
    for ((name, pairs), (got_name, got_pairs)) in buckets.iter().zip(&back) {
        assert_eq!(got_name.as_slice(), *name);
        assert_eq!(
            got_pairs.len(),
            pairs.len(),
            "pairs in {}",
            String::from_utf8_lossy(name)
        );
        assert!(
            got_pairs == *pairs,
            "contents of {}",
            String::from_utf8_lossy(name)
        );
    }
    bytes
}

/// What bbolt's `tx.Check` (run by `etcdctl snapshot status`) and its cursor's seek rely on,
/// checked from the raw bytes independently of the crate's reader: every page below the
/// high-water mark is reached exactly once from the root bucket, page headers carry their own
/// id, and each branch key is the first key of its child's subtree.
fn check_structure(bytes: &[u8], page_size: usize) {
    let pgid = bytes.len() / page_size;
    let mut seen = vec![false; pgid];
    seen[0] = true;
    seen[1] = true;
    let root = u64::from_le_bytes(bytes[32..40].try_into().expect("field of fixed size"));
    let node = claim(bytes, page_size, root, &mut seen);
    check_node(bytes, page_size, node, &mut seen, true);
    let missing: Vec<usize> = (0..pgid).filter(|&p| !seen[p]).collect();
    assert!(missing.is_empty(), "unreachable pages {missing:?}");
}

/// The bytes of the node at page `id`, marking its pages as reached.
fn claim<'a>(bytes: &'a [u8], page_size: usize, id: u64, seen: &mut [bool]) -> &'a [u8] {
    let start = id as usize * page_size;
    assert_eq!(
        u64::from_le_bytes(
            bytes[start..start + 8]
                .try_into()
                .expect("field of fixed size")
        ),
        id
    );
    let overflow = u32::from_le_bytes(
        bytes[start + 12..start + 16]
            .try_into()
            .expect("field of fixed size"),
    ) as usize;
    for (page, seen) in seen
        .iter_mut()
        .enumerate()
        .skip(id as usize)
        .take(1 + overflow)
    {
        assert!(!*seen, "page {page} reached twice");
        *seen = true;
    }
    &bytes[start..start + (1 + overflow) * page_size]
}

/// Checks a node and its subtree (and, in the root bucket, the buckets' trees); returns the
/// subtree's first key.
fn check_node(
    bytes: &[u8],
    page_size: usize,
    node: &[u8],
    seen: &mut [bool],
    root_bucket: bool,
) -> Vec<u8> {
    let word = |at: usize| {
        u32::from_le_bytes(node[at..at + 4].try_into().expect("field of fixed size")) as usize
    };
    let flags = u16::from_le_bytes([node[8], node[9]]);
    let count = u16::from_le_bytes([node[10], node[11]]) as usize;
    let mut first = Vec::new();
    for i in 0..count {
        let at = 16 + 16 * i;
        let key = if flags == 0x01 {
            let key = &node[at + word(at)..at + word(at) + word(at + 4)];
            let child = u64::from_le_bytes(
                node[at + 8..at + 16]
                    .try_into()
                    .expect("field of fixed size"),
            );
            let child_node = claim(bytes, page_size, child, seen);
            let child_first = check_node(bytes, page_size, child_node, seen, root_bucket);
            assert_eq!(
                key,
                child_first.as_slice(),
                "branch key differs from its child's first key"
            );
            key
        } else {
            assert_eq!(flags, 0x02, "neither branch nor leaf");
            let (key_at, ksize, vsize) = (at + word(at + 4), word(at + 8), word(at + 12));
            let value = &node[key_at + ksize..key_at + ksize + vsize];
            assert_eq!(
                word(at) == 1,
                root_bucket,
                "bucket flag outside the root bucket"
            );
            if root_bucket {
                match u64::from_le_bytes(value[..8].try_into().expect("field of fixed size")) {
                    0 => drop(check_node(bytes, page_size, &value[16..], seen, false)),
                    page => {
                        let bucket_root = claim(bytes, page_size, page, seen);
                        check_node(bytes, page_size, bucket_root, seen, false);
                    }
                }
            }
            &node[key_at..key_at + ksize]
        };
        if i == 0 {
            first = key.to_vec();
        }
    }
    first
}

/// Flags of each node in the file (pages 2 onwards), following overflow counts.
fn node_kinds(bytes: &[u8], page_size: usize) -> Vec<u16> {
    let mut kinds = Vec::new();
    let mut at = 2 * page_size;
    while at < bytes.len() {
        kinds.push(u16::from_le_bytes([bytes[at + 8], bytes[at + 9]]));
        let overflow = u32::from_le_bytes(
            bytes[at + 12..at + 16]
                .try_into()
                .expect("field of fixed size"),
        );
        at += (1 + overflow as usize) * page_size;
    }
    kinds
}

/// Levels of the tree of the first top-level bucket (which must not be inline), found by
/// following first children from its root down to a leaf.
fn depth_of_first_bucket(bytes: &[u8], page_size: usize) -> usize {
    let u32_at = |at: usize| {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("field of fixed size")) as usize
    };
    let u64_at = |at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("field of fixed size")) as usize
    };
    let root_leaf = u64_at(16 + 16) * page_size;
    let element = root_leaf + 16;
    let value = element + u32_at(element + 4) + u32_at(element + 8);
    let mut page = u64_at(value);
    assert_ne!(page, 0, "bucket is inline");
    let mut depth = 1;
    while bytes[page * page_size + 8] == 0x01 {
        page = u64_at(page * page_size + 16 + 8);
        depth += 1;
    }
    depth
}

fn numbered(n: usize, value_len: usize) -> Pairs {
    (0..n)
        .map(|i| {
            let key = format!("key/{i:08}").into_bytes();
            let value = (0..value_len).map(|j| (i * 31 + j) as u8).collect();
            (key, value)
        })
        .collect()
}

#[test]
fn no_buckets() {
    let bytes = write(4096, &[]);
    let reader = Reader::new(&bytes[..]).expect("valid file");
    assert!(reader.buckets().expect("list buckets").is_empty());
    // Two meta pages and an empty root leaf.
    assert_eq!(
        (reader.pgid(), reader.txid(), reader.page_size()),
        (3, 2, 4096)
    );
}

#[test]
fn empty_etcd_buckets_are_inline() {
    let empty = Pairs::new();
    let buckets: Vec<(&[u8], &Pairs)> = ETCD_BUCKETS
        .iter()
        .map(|n| (n.as_bytes(), &empty))
        .collect();
    let bytes = assert_round_trip(4096, &buckets);
    let reader = Reader::new(&bytes[..]).expect("valid file");
    for bucket in reader.buckets().expect("list buckets") {
        assert!(bucket.is_inline());
        assert_eq!(bucket.sequence(), 0);
    }
    assert_eq!(
        reader.pgid(),
        3,
        "everything fits in the root bucket's leaf"
    );
    assert!(reader.bucket(b"key").expect("bucket").is_some());
    assert!(reader.bucket(b"nope").expect("bucket").is_none());
}

#[test]
fn one_key() {
    let pairs = vec![(b"k".to_vec(), b"v".to_vec())];
    assert_round_trip(4096, &[(b"only", &pairs)]);
    let empty_value = vec![(b"k".to_vec(), Vec::new())];
    assert_round_trip(4096, &[(b"only", &empty_value)]);
}

#[test]
fn inline_only_up_to_a_quarter_page() {
    // 16 header + 3 * (16 + 7 + 40) = 205 bytes: inline at 4096 (limit 1024), not at 1024 (256)
    // once a fourth pair is added (268 bytes).
    let small = numbered(3, 35);
    let bigger = numbered(4, 35);
    let bytes = assert_round_trip(1024, &[(b"a", &small), (b"b", &bigger)]);
    let reader = Reader::new(&bytes[..]).expect("valid file");
    let inline: Vec<bool> = reader
        .buckets()
        .expect("list buckets")
        .iter()
        .map(|b| b.is_inline())
        .collect();
    assert_eq!(inline, [true, false]);
}

#[test]
fn ten_thousand_keys_build_a_multi_level_tree() {
    let pairs = numbered(10_000, 50);
    let empty = Pairs::new();
    let bytes = assert_round_trip(4096, &[(b"key", &pairs), (b"lease", &empty)]);
    // Leaves, a level of branches, and a root branch above them.
    assert_eq!(depth_of_first_bucket(&bytes, 4096), 3);

    // Through a real file as well, with etcd's digest-sized trailer after the data.
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("db");
    let mut with_trailer = bytes.clone();
    with_trailer.extend_from_slice(&[0xAB; 32]);
    std::fs::write(&path, &with_trailer).expect("write file");
    let reader = Reader::open(&path).expect("valid file");
    assert_eq!(reader.data_len(), bytes.len() as u64);
    assert_eq!(reader.file_len(), bytes.len() as u64 + 32);
    let bucket = reader
        .bucket(b"key")
        .expect("buckets")
        .expect("bucket key exists");
    let mut count = 0;
    for (item, (k, v)) in reader.iter(&bucket).zip(&pairs) {
        assert_eq!(&item.expect("read pair"), &(k.clone(), v.clone()));
        count += 1;
    }
    assert_eq!(count, pairs.len());
}

#[test]
fn small_pages_make_deep_trees() {
    // Long keys lower the fan-out: 16 pairs a leaf, 19 children a branch, four levels.
    let pairs: Pairs = numbered(8_000, 8)
        .into_iter()
        .map(|(k, v)| ([&b"a-rather-long-key-prefix/"[..], &k].concat(), v))
        .collect();
    let bytes = assert_round_trip(1024, &[(b"deep", &pairs)]);
    assert_eq!(depth_of_first_bucket(&bytes, 1024), 4);
}

#[test]
fn large_values_use_overflow_pages() {
    let mib = 1 << 20;
    let mut pairs = Pairs::new();
    for i in 0..6u8 {
        let len = if i % 2 == 0 {
            mib + usize::from(i)
        } else {
            100
        };
        pairs.push((
            vec![b'v', i],
            (0..len).map(|j| (j % 251) as u8 ^ i).collect(),
        ));
    }
    for page_size in [4096, 65536] {
        let bytes = assert_round_trip(page_size, &[(b"big", &pairs), (b"small", &numbered(3, 3))]);
        let kinds = node_kinds(&bytes, page_size as usize);
        assert!(kinds.iter().all(|&k| k == 0x01 || k == 0x02), "{kinds:?}");
    }
}

#[test]
fn maximal_keys() {
    let pairs: Pairs = (0..40u8)
        .map(|i| {
            let mut key = vec![b'x'; MAX_KEY_SIZE];
            key[MAX_KEY_SIZE - 1] = i;
            (key, vec![i; 10])
        })
        .collect();
    let bytes = assert_round_trip(4096, &[(b"wide", &pairs)]);
    // Branches hold 32 KiB keys, so they overflow too, but keep two children or more: 40 keys
    // make a tree of at most 1 + log2(40) levels, not one level per key.
    let depth = depth_of_first_bucket(&bytes, 4096);
    assert!((3..=7).contains(&depth), "depth {depth}");
    let long_name = vec![b'n'; MAX_KEY_SIZE];
    assert_round_trip(4096, &[(&long_name, &numbered(2, 2))]);
}

#[test]
fn output_is_deterministic() {
    let pairs = numbered(3_000, 20);
    let one = write(4096, &[(b"a", &pairs), (b"b", &numbered(5, 5000))]);
    let two = write(4096, &[(b"a", &pairs), (b"b", &numbered(5, 5000))]);
    assert!(one == two);
}

#[test]
fn writes_at_the_stream_position() {
    let mut out = Cursor::new(vec![7u8; 100]);
    out.set_position(100);
    let mut writer = Writer::new(out).expect("writer");
    writer.bucket(b"b").expect("bucket");
    writer.put(b"k", b"v").expect("put");
    let written = writer.finish().expect("finish the file");
    assert_eq!(written.inner.position(), 100 + written.data_len);
    let bytes = written.inner.into_inner();
    assert_eq!(&bytes[..100], &[7u8; 100][..]);
    let got = read_all(&bytes[100..]);
    assert_eq!(
        got,
        vec![(b"b".to_vec(), vec![(b"k".to_vec(), b"v".to_vec())])]
    );
}

#[test]
fn bad_input_is_refused_and_the_writer_stays_usable() {
    assert!(matches!(
        Writer::with_page_size(Cursor::new(Vec::new()), 3000),
        Err(Error::InvalidPageSize(3000))
    ));
    assert!(Writer::with_page_size(Cursor::new(Vec::new()), 512).is_err());
    let mut writer = Writer::new(Cursor::new(Vec::new())).expect("writer");
    assert!(matches!(writer.put(b"k", b"v"), Err(Error::NoBucket)));
    assert!(matches!(writer.bucket(b""), Err(Error::EmptyKey)));
    writer.bucket(b"m").expect("bucket");
    assert!(matches!(writer.bucket(b"m"), Err(Error::OutOfOrder { .. })));
    assert!(matches!(writer.bucket(b"a"), Err(Error::OutOfOrder { .. })));
    assert!(matches!(writer.put(b"", b"v"), Err(Error::EmptyKey)));
    let long = vec![1u8; MAX_KEY_SIZE + 1];
    assert!(matches!(
        writer.put(&long, b"v"),
        Err(Error::KeyTooLarge(_))
    ));
    assert!(matches!(writer.bucket(&long), Err(Error::KeyTooLarge(_))));
    writer.put(b"b", b"1").expect("put");
    assert!(matches!(
        writer.put(b"b", b"2"),
        Err(Error::OutOfOrder { .. })
    ));
    assert!(matches!(
        writer.put(b"a", b"2"),
        Err(Error::OutOfOrder { .. })
    ));
    writer.put(b"c", b"3").expect("put");
    writer.bucket(b"n").expect("bucket");
    // A new bucket starts a new key order.
    writer.put(b"a", b"4").expect("put");
    let bytes = writer.finish().expect("finish the file").inner.into_inner();
    let expected = vec![
        (
            b"m".to_vec(),
            vec![
                (b"b".to_vec(), b"1".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ],
        ),
        (b"n".to_vec(), vec![(b"a".to_vec(), b"4".to_vec())]),
    ];
    assert_eq!(read_all(&bytes), expected);
}

#[test]
fn io_errors_poison_the_writer() {
    /// Accepts `room` bytes, then fails.
    struct Full {
        room: usize,
        inner: Cursor<Vec<u8>>,
    }
    impl std::io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.room {
                return Err(std::io::Error::other("disk full"));
            }
            self.room -= buf.len();
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl std::io::Seek for Full {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }
    let mut writer = Writer::new(Full {
        room: 3 * 4096,
        inner: Cursor::new(Vec::new()),
    })
    .expect("writer");
    writer.bucket(b"b").expect("bucket");
    let value = vec![0u8; 3000];
    let mut failed = false;
    for i in 0..10u8 {
        if writer.put(&[i + 1], &value).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the output should have run out of room");
    assert!(matches!(writer.put(b"zz", b""), Err(Error::Poisoned)));
    assert!(matches!(writer.finish(), Err(Error::Poisoned)));
}
