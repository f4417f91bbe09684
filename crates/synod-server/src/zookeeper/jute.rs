//! Jute, ZooKeeper's record encoding: big-endian ints and longs, length-prefixed buffers and
//! strings (-1 for null), counted vectors, records as their fields in order.

use synod_api::synodpb::ZkAcl;
use synod_core::zk::Stat;

/// A record that cannot be read: ZooKeeper's MarshallingError.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed request: {0}")]
pub struct Malformed(pub &'static str);

/// Reads the fields of one frame in order.
pub struct Decoder<'a> {
    bytes: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed("record ends early"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn int(&mut self) -> Result<i32, Malformed> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn long(&mut self) -> Result<i64, Malformed> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(bytes))
    }

    pub fn bool(&mut self) -> Result<bool, Malformed> {
        Ok(self.take(1)?[0] != 0)
    }

    /// A buffer; `None` for null (length -1).
    pub fn buffer(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        match self.int()? {
            -1 => Ok(None),
            length if length < 0 => Err(Malformed("negative length")),
            length => self.take(length as usize).map(Some),
        }
    }

    /// A string; null reads as empty.
    pub fn string(&mut self) -> Result<String, Malformed> {
        let bytes = self.buffer()?.unwrap_or_default();
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
    }

    /// A vector of `item`s; null reads as empty.
    pub fn vector<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, Malformed>,
    ) -> Result<Vec<T>, Malformed> {
        let count = self.int()?;
        if count < 0 {
            return Ok(Vec::new());
        }
        // Every item takes at least one byte: a count past the frame is a lie.
        if count as usize > self.bytes.len() {
            return Err(Malformed("vector longer than its frame"));
        }
        (0..count).map(|_| item(self)).collect()
    }

    pub fn strings(&mut self) -> Result<Vec<String>, Malformed> {
        self.vector(Self::string)
    }

    pub fn acl(&mut self) -> Result<Vec<ZkAcl>, Malformed> {
        self.vector(|d| {
            Ok(ZkAcl {
                perms: d.int()?,
                scheme: d.string()?,
                id: d.string()?,
            })
        })
    }
}

/// Writes the fields of one frame; [`Encoder::frame`] puts the length in front.
#[derive(Default)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        // Room for the length, filled in by `frame`.
        Encoder { bytes: vec![0; 4] }
    }

    pub fn int(&mut self, value: i32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn long(&mut self, value: i64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.bytes.push(u8::from(value));
        self
    }

    pub fn buffer(&mut self, value: &[u8]) -> &mut Self {
        self.int(value.len() as i32);
        self.bytes.extend_from_slice(value);
        self
    }

    /// A node's data: its bytes, or null (-1) if it was written as null.
    pub fn data(&mut self, node: &synod_core::zk::Node) -> &mut Self {
        if node.meta.null_data {
            self.int(-1)
        } else {
            self.buffer(&node.data.value)
        }
    }

    pub fn string(&mut self, value: &str) -> &mut Self {
        self.buffer(value.as_bytes())
    }

    pub fn strings(&mut self, values: &[String]) -> &mut Self {
        self.int(values.len() as i32);
        for value in values {
            self.string(value);
        }
        self
    }

    pub fn stat(&mut self, stat: &Stat) -> &mut Self {
        self.long(stat.czxid)
            .long(stat.mzxid)
            .long(stat.ctime)
            .long(stat.mtime)
            .int(stat.version)
            .int(stat.cversion)
            .int(stat.aversion)
            .long(stat.ephemeral_owner)
            .int(stat.data_length)
            .int(stat.num_children)
            .long(stat.pzxid)
    }

    pub fn acl(&mut self, acl: &[ZkAcl]) -> &mut Self {
        self.int(acl.len() as i32);
        for entry in acl {
            self.int(entry.perms)
                .string(&entry.scheme)
                .string(&entry.id);
        }
        self
    }

    /// The frame: the length, then the fields.
    pub fn frame(mut self) -> Vec<u8> {
        let length = (self.bytes.len() - 4) as i32;
        self.bytes[..4].copy_from_slice(&length.to_be_bytes());
        self.bytes
    }
}

/// The frame a client opens a new session with (`ConnectRequest`, then the read-only flag):
/// what Synod's own clients (the benchmark, the tests) send.
pub fn connect_request(timeout_ms: i32) -> Vec<u8> {
    let mut hello = Encoder::new();
    hello
        .int(0)
        .long(0)
        .int(timeout_ms)
        .long(0)
        .buffer(&[0; 16])
        .bool(false);
    hello.frame()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let mut encoder = Encoder::new();
        encoder
            .int(-7)
            .long(1 << 40)
            .bool(true)
            .buffer(b"data")
            .string("/a")
            .strings(&["x".to_owned(), "y".to_owned()]);
        let frame = encoder.frame();
        assert_eq!(frame.len() - 4, 4 + 8 + 1 + 8 + 6 + 14);
        assert_eq!(&frame[..4], &(frame.len() as i32 - 4).to_be_bytes());
        let mut decoder = Decoder::new(&frame[4..]);
        assert_eq!(decoder.int(), Ok(-7));
        assert_eq!(decoder.long(), Ok(1 << 40));
        assert_eq!(decoder.bool(), Ok(true));
        assert_eq!(decoder.buffer(), Ok(Some(&b"data"[..])));
        assert_eq!(decoder.string().as_deref(), Ok("/a"));
        assert_eq!(decoder.strings(), Ok(vec!["x".to_owned(), "y".to_owned()]));
        assert!(decoder.is_empty());
    }

    #[test]
    fn lies_are_refused() {
        // A null buffer, then a buffer claiming more bytes than there are.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9, 1, 2];
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.buffer(), Ok(None));
        assert!(decoder.buffer().is_err());
        let huge_vector = [0x7f, 0xff, 0xff, 0xff];
        assert!(Decoder::new(&huge_vector).strings().is_err());
        assert!(Decoder::new(&[0xff, 0xff, 0xff, 0xfe]).buffer().is_err());
    }
}
