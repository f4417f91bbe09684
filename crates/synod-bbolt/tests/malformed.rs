//! Damaged and hostile files: each must give an error (or, where bbolt would recover, the
//! recovered data), never a panic, a hang or an allocation the file does not justify.

use std::io::Cursor;

use synod_bbolt::{Error, Reader, Writer};

const PAGE: usize = 1024;

/// A valid file with an inline bucket, a multi-level bucket, an overflow value and an empty
/// bucket, on small pages so that it has many of them.
fn sample() -> Vec<u8> {
    let mut writer = Writer::with_page_size(Cursor::new(Vec::new()), PAGE as u32).expect("writer");
    writer.bucket(b"a").expect("bucket");
    writer.put(b"small", b"inline").expect("put");
    writer.bucket(b"big").expect("bucket");
    writer.put(b"huge", &[0x5A; 5000]).expect("put");
    writer.put(b"tiny", b"t").expect("put");
    writer.bucket(b"key").expect("bucket");
    for i in 0..600u32 {
        writer
            .put(format!("k{i:05}").as_bytes(), &i.to_le_bytes())
            .expect("put");
    }
    writer.bucket(b"m").expect("bucket");
    writer.finish().expect("finish the file").inner.into_inner()
}

/// Everything in the file, or the first error.
fn read_everything(bytes: &[u8]) -> Result<Vec<(Vec<u8>, usize)>, Error> {
    let reader = Reader::new(bytes)?;
    let mut out = Vec::new();
    for bucket in reader.buckets()? {
        let mut n = 0;
        for item in reader.iter(&bucket) {
            item?;
            n += 1;
            assert!(n <= 1_000_000, "iteration does not end");
        }
        out.push((bucket.name().to_vec(), n));
    }
    Ok(out)
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes a meta page (header and struct, valid checksum) for page `id` into `page`.
fn put_meta(page: &mut [u8], id: u64, page_size: u32, root: u64, pgid: u64, txid: u64) {
    page[..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&4u16.to_le_bytes());
    let meta = &mut page[16..80];
    meta[0..4].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
    meta[4..8].copy_from_slice(&2u32.to_le_bytes());
    meta[8..12].copy_from_slice(&page_size.to_le_bytes());
    meta[16..24].copy_from_slice(&root.to_le_bytes());
    meta[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    meta[40..48].copy_from_slice(&pgid.to_le_bytes());
    meta[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&meta[..56]);
    meta[56..64].copy_from_slice(&sum.to_le_bytes());
}

/// A file of `pages` pages whose metas point at root page 2; `build` fills pages 2 onwards.
fn handmade(pages: usize, build: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut bytes = vec![0u8; pages * PAGE];
    put_meta(&mut bytes[..PAGE], 0, PAGE as u32, 2, pages as u64, 2);
    put_meta(
        &mut bytes[PAGE..2 * PAGE],
        1,
        PAGE as u32,
        2,
        pages as u64,
        1,
    );
    build(&mut bytes);
    bytes
}

/// Writes a branch page at `id` whose elements (key "a", "b", ...) point at `children`.
fn branch(bytes: &mut [u8], id: usize, children: &[u64]) {
    let page = &mut bytes[id * PAGE..(id + 1) * PAGE];
    page[..8].copy_from_slice(&(id as u64).to_le_bytes());
    page[8..10].copy_from_slice(&1u16.to_le_bytes());
    page[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
    let data_start = 16 + 16 * children.len();
    for (i, child) in children.iter().enumerate() {
        let at = 16 + 16 * i;
        let pos = (data_start + i - at) as u32;
        page[at..at + 4].copy_from_slice(&pos.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
        page[data_start + i] = b'a' + i as u8;
    }
}

/// Writes an empty leaf page at `id`.
fn empty_leaf(bytes: &mut [u8], id: usize) {
    bytes[id * PAGE..id * PAGE + 8].copy_from_slice(&(id as u64).to_le_bytes());
    bytes[id * PAGE + 8] = 0x02;
}

#[test]
fn sample_is_valid() {
    let got = read_everything(&sample()).expect("readable file");
    let names: Vec<&[u8]> = got.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, [&b"a"[..], b"big", b"key", b"m"]);
    assert_eq!(got[2].1, 600);
}

#[test]
fn truncated_files_are_refused() {
    let bytes = sample();
    for len in (0..bytes.len())
        .step_by(97)
        .chain([80, PAGE, PAGE + 80, bytes.len() - 1])
    {
        match Reader::new(&bytes[..len]) {
            Err(Error::Truncated { needed, actual }) => {
                assert_eq!((needed, actual), (bytes.len() as u64, len as u64));
            }
            Err(Error::NoValidMeta(_)) => assert!(len < PAGE + 80, "length {len}"),
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn a_damaged_meta_falls_back_to_the_other() {
    let good = sample();
    let expected = read_everything(&good).expect("readable file");
    for (page, byte, txid) in [(0, 16 + 8, 1), (0, 16 + 60, 1), (1, 16 + 40, 2), (1, 16, 2)] {
        let mut bytes = good.clone();
        bytes[page * PAGE + byte] ^= 0x01;
        assert_eq!(Reader::new(&bytes[..]).expect("valid file").txid(), txid);
        assert_eq!(read_everything(&bytes).expect("readable file"), expected);
    }
    let mut bytes = good.clone();
    bytes[16 + 50] ^= 0x01;
    bytes[PAGE + 16 + 50] ^= 0x01;
    assert!(matches!(
        Reader::new(&bytes[..]),
        Err(Error::NoValidMeta(_))
    ));
    let mut bytes = good.clone();
    bytes[16..20].copy_from_slice(b"SQLi");
    bytes[PAGE + 16..PAGE + 20].copy_from_slice(b"SQLi");
    assert!(matches!(
        Reader::new(&bytes[..]),
        Err(Error::NoValidMeta("bad magic"))
    ));
}

#[test]
fn the_newer_valid_meta_wins() {
    let mut bytes = sample();
    let pgid = (bytes.len() / PAGE) as u64;
    let root = u64::from_le_bytes(bytes[32..40].try_into().expect("field of fixed size"));
    put_meta(&mut bytes[PAGE..2 * PAGE], 1, PAGE as u32, root, pgid, 9);
    assert_eq!(Reader::new(&bytes[..]).expect("valid file").txid(), 9);
    // The newer meta pointing at a page outside the file is an error, as in bbolt.
    put_meta(
        &mut bytes[PAGE..2 * PAGE],
        1,
        PAGE as u32,
        pgid + 5,
        pgid,
        9,
    );
    assert!(matches!(
        Reader::new(&bytes[..]),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn cycles_and_shared_subtrees_end_in_an_error() {
    // A branch that is its own child.
    let bytes = handmade(3, |b| branch(b, 2, &[2]));
    assert!(matches!(
        read_everything(&bytes),
        Err(Error::Corrupt { .. })
    ));
    // Thirty levels of branches whose two children are the same page: 2^30 paths to one empty
    // leaf, unless the walk notices it reads more nodes than the file has.
    let bytes = handmade(33, |b| {
        for id in 2..32 {
            branch(b, id, &[id as u64 + 1, id as u64 + 1]);
        }
        empty_leaf(b, 32);
    });
    assert!(matches!(
        read_everything(&bytes),
        Err(Error::Corrupt { .. })
    ));
    // The same chain with single children is fine: an empty root bucket.
    let bytes = handmade(33, |b| {
        for id in 2..32 {
            branch(b, id, &[id as u64 + 1]);
        }
        empty_leaf(b, 32);
    });
    assert_eq!(read_everything(&bytes).expect("readable file"), []);
    // ...but not seventy levels of it.
    let bytes = handmade(73, |b| {
        for id in 2..72 {
            branch(b, id, &[id as u64 + 1]);
        }
        empty_leaf(b, 72);
    });
    assert!(matches!(
        read_everything(&bytes),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn bad_pages_and_elements_are_errors() {
    // Child page beyond the high-water mark, and the meta page as a child.
    for child in [99, 3, 0, 1] {
        let bytes = handmade(3, |b| branch(b, 2, &[child]));
        assert!(
            matches!(read_everything(&bytes), Err(Error::Corrupt { .. })),
            "child {child}"
        );
    }
    // A page whose header names another page.
    let bytes = handmade(4, |b| {
        branch(b, 2, &[3]);
        empty_leaf(b, 3);
        b[3 * PAGE] = 7;
    });
    assert!(matches!(
        read_everything(&bytes),
        Err(Error::Corrupt { .. })
    ));
    // Overflow pages past the end, and an element array longer than the page.
    for (offset, value) in [(12, 1u32), (12, u32::MAX), (10, 0xFFFF)] {
        let bytes = handmade(3, |b| {
            empty_leaf(b, 2);
            b[2 * PAGE + offset..2 * PAGE + offset + 4].copy_from_slice(&value.to_le_bytes());
        });
        assert!(
            matches!(read_everything(&bytes), Err(Error::Corrupt { .. })),
            "{offset} {value}"
        );
    }
}

#[test]
fn nested_buckets_are_reported() {
    let mut bytes = sample();
    // Bucket "a" is inline and holds one pair, "small": its element's flags sit 16 bytes before
    // the key. Flagging it as a bucket makes "a" a bucket with a nested bucket.
    let key_at = bytes
        .windows(5)
        .position(|w| w == b"small")
        .expect("key in file");
    bytes[key_at - 16] = 0x01;
    let reader = Reader::new(&bytes[..]).expect("valid file");
    let bucket = reader.bucket(b"a").expect("buckets").expect("bucket a");
    let items: Vec<_> = reader.iter(&bucket).collect();
    assert!(
        matches!(&items[..], [Err(Error::NestedBucket { bucket, key })] if bucket == b"a" && key == b"small"),
        "{items:?}"
    );
    // The other buckets still read.
    let key = reader.bucket(b"key").expect("buckets").expect("bucket key");
    assert_eq!(reader.iter(&key).count(), 600);
}

#[test]
fn trailing_bytes_are_ignored() {
    let mut bytes = sample();
    let expected = read_everything(&bytes).expect("readable file");
    let data_len = bytes.len() as u64;
    assert_eq!(
        Reader::new(&bytes[..])
            .expect("valid file")
            .snapshot_digest()
            .expect("digest"),
        None
    );
    bytes.extend_from_slice(&[0xEE; 32]);
    let reader = Reader::new(&bytes[..]).expect("valid file");
    assert_eq!(reader.snapshot_digest().expect("digest"), Some([0xEE; 32]));
    assert_eq!(
        (reader.data_len(), reader.file_len()),
        (data_len, data_len + 32)
    );
    assert_eq!(read_everything(&bytes).expect("readable file"), expected);
    bytes.push(0);
    let reader = Reader::new(&bytes[..]).expect("valid file");
    assert_eq!(reader.snapshot_digest().expect("digest"), None);
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_files_never_panic() {
    let good = sample();
    let pages = good.len() / PAGE;
    let interesting = |rng: &mut Rng| -> u64 {
        let choices = [
            0,
            1,
            2,
            3,
            0xFF,
            0xFFFF,
            0xFFFF_FFFF,
            u64::MAX,
            pages as u64 - 1,
            pages as u64,
        ];
        if rng.below(3) == 0 {
            rng.next()
        } else {
            choices[rng.below(choices.len())]
        }
    };
    let (mut ok, mut failed) = (0, 0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..3000 {
        let mut bytes = good.clone();
        match round % 5 {
            // Random bytes anywhere past the metas.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = 2 * PAGE + rng.below(bytes.len() - 2 * PAGE);
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            // A page header or element field set to an edge value.
            1 => {
                let field = [0, 8, 10, 12, 16, 20, 24, 28, 32, 36, 40, 44][rng.below(12)];
                let width = [2, 4, 8][rng.below(3)];
                let at = (2 + rng.below(pages - 2)) * PAGE + field;
                let value = interesting(&mut rng).to_le_bytes();
                bytes[at..at + width].copy_from_slice(&value[..width]);
            }
            // A checksummed meta page with edge values.
            2 => {
                let page_size = [512, 1024, 4096, 3000, 0][rng.below(5)];
                let (root, pgid) = (interesting(&mut rng), interesting(&mut rng));
                put_meta(&mut bytes[..PAGE], 0, page_size, root, pgid, 7);
            }
            // One page copied over another, renumbered so that it passes the id check: shared
            // subtrees, dangling children.
            3 => {
                let (from, to) = (2 + rng.below(pages - 2), 2 + rng.below(pages - 2));
                let page = bytes[from * PAGE..(from + 1) * PAGE].to_vec();
                bytes[to * PAGE..(to + 1) * PAGE].copy_from_slice(&page);
                bytes[to * PAGE..to * PAGE + 8].copy_from_slice(&(to as u64).to_le_bytes());
            }
            // Cut short.
            _ => bytes.truncate(rng.below(bytes.len())),
        }
        match read_everything(&bytes) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    // Both outcomes occur, so the mutations reach past the meta pages and into the trees.
    assert!(ok > 100 && failed > 100, "{ok} readable, {failed} refused");
}
