//! A lenient `:authority` for HTTP/2 clients that send a whole URL there.
//!
//! etcdctl 3.4 (grpc-go of its time) dials `passthrough:///http://host:port` when an endpoint is
//! written with its scheme, which is also what `endpoint status --cluster` does with the
//! members' advertised URLs, and sends `http://host:port` as the request's `:authority`. Go's
//! HTTP/2 server accepts it; the `h2` crate under hyper refuses it (RST_STREAM PROTOCOL_ERROR)
//! and offers no setting to relax the check.
//!
//! [`LenientAuthority`] sits between the socket and hyper and reads the client's frames until
//! the first header block. If that block's `:authority` parses, the connection is passed
//! through untouched from then on (one decode per connection, nothing on the hot path). If it
//! is a URL, every header block of that connection is decoded, its `:authority` cut down to the
//! URL's host and port, and re-encoded with an encoder of our own; hyper's decoder then only
//! ever sees that encoder's output, so the two HPACK tables stay in step.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest maximum frame size a peer may advertise: re-encoded blocks are cut to it, so
/// they fit whatever hyper advertises.
const MIN_MAX_FRAME: usize = 16_384;
/// A header block this large is not one we should buffer; hyper refuses it on its own.
const MAX_BLOCK: usize = 1 << 20;

/// A client connection whose HTTP/2 `:authority` is made acceptable to hyper (module docs).
pub struct LenientAuthority<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the socket and not yet examined.
    input: BytesMut,
    /// Bytes ready for hyper.
    output: BytesMut,
    /// Bytes of a frame that is passed on as it arrives (a frame other than a header block).
    copying: usize,
    /// The header block being gathered (a HEADERS frame and its CONTINUATIONs).
    block: Option<Block>,
    /// Present from the first header block on, while the connection is still examined.
    rewriter: Option<Box<Rewriter>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Before the connection preface.
    Preface,
    /// Reading frames up to the first header block's verdict, or rewriting every block.
    Frames,
    /// Not HTTP/2, or HTTP/2 with a valid authority: bytes go through untouched.
    PassThrough,
}

struct Block {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames exactly as received, sent on unchanged if no rewrite is needed.
    raw: Vec<u8>,
}

struct Rewriter {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Set once a block needed a rewrite: every later block is rewritten too.
    rewriting: bool,
}

enum Step {
    Progress,
    NeedMore,
}

impl<S> LenientAuthority<S> {
    pub fn new(inner: S) -> LenientAuthority<S> {
        LenientAuthority {
            inner,
            mode: Mode::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            copying: 0,
            block: None,
            rewriter: None,
        }
    }

    /// Examines buffered input, moving what is ready to `output`.
    fn step(&mut self) -> io::Result<Step> {
        match self.mode {
            Mode::PassThrough => {
                if self.input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let all = self.input.split();
                self.output.unsplit(all);
                Ok(Step::Progress)
            }
            Mode::Preface => {
                let seen = self.input.len().min(PREFACE.len());
                if self.input[..seen] != PREFACE[..seen] {
                    self.mode = Mode::PassThrough;
                    return Ok(Step::Progress);
                }
                if seen < PREFACE.len() {
                    return Ok(Step::NeedMore);
                }
                let preface = self.input.split_to(PREFACE.len());
                self.output.unsplit(preface);
                self.mode = Mode::Frames;
                Ok(Step::Progress)
            }
            Mode::Frames => self.frame_step(),
        }
    }

    fn frame_step(&mut self) -> io::Result<Step> {
        if self.copying > 0 {
            if self.input.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = self.copying.min(self.input.len());
            let bytes = self.input.split_to(n);
            self.output.unsplit(bytes);
            self.copying -= n;
            return Ok(Step::Progress);
        }
        if self.input.len() < FRAME_HEADER {
            return Ok(Step::NeedMore);
        }
        let length = usize::from(self.input[0]) << 16
            | usize::from(self.input[1]) << 8
            | usize::from(self.input[2]);
        let kind = self.input[3];
        let is_block = kind == HEADERS || (kind == CONTINUATION && self.block.is_some());
        if !is_block {
            if self.block.is_some() {
                // A block interrupted by another frame is a protocol error hyper reports.
                self.give_up();
                return Ok(Step::Progress);
            }
            let header = self.input.split_to(FRAME_HEADER);
            self.output.unsplit(header);
            self.copying = length;
            return Ok(Step::Progress);
        }
        let gathered = self.block.as_ref().map_or(0, |block| block.raw.len());
        if gathered + length > MAX_BLOCK {
            self.give_up();
            return Ok(Step::Progress);
        }
        if self.input.len() < FRAME_HEADER + length {
            return Ok(Step::NeedMore);
        }
        let frame = self.input.split_to(FRAME_HEADER + length);
        if !self.gather(&frame) {
            // Malformed framing: pass it on and let hyper answer it.
            self.output.unsplit(frame);
            self.give_up();
            return Ok(Step::Progress);
        }
        if frame[4] & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(Step::Progress)
    }

    /// Adds one HEADERS or CONTINUATION frame to the block; false if it is malformed.
    fn gather(&mut self, frame: &[u8]) -> bool {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let mut payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            let mut priority = None;
            let mut padding = 0;
            if flags & PADDED != 0 {
                let Some((&pad, rest)) = payload.split_first() else {
                    return false;
                };
                padding = usize::from(pad);
                payload = rest;
            }
            if flags & PRIORITY != 0 {
                let Some((head, rest)) = payload.split_first_chunk::<5>() else {
                    return false;
                };
                priority = Some(*head);
                payload = rest;
            }
            let Some(fragment) = payload.len().checked_sub(padding).map(|n| &payload[..n]) else {
                return false;
            };
            self.block = Some(Block {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                raw: frame.to_vec(),
            });
            return true;
        }
        match &mut self.block {
            Some(block) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
                true
            }
            _ => false,
        }
    }

    fn finish_block(&mut self) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let rewriter = self.rewriter.get_or_insert_with(|| {
            Box::new(Rewriter {
                decoder: loona_hpack::Decoder::new(),
                encoder: loona_hpack::Encoder::new(),
                rewriting: false,
            })
        });
        let headers = match rewriter.decoder.decode(&block.fragment) {
            Ok(headers) => headers,
            Err(error) if rewriter.rewriting => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("undecodable HTTP/2 header block: {error:?}"),
                ));
            }
            Err(_) => {
                // hyper's own decoder reports it.
                self.output.put_slice(&block.raw);
                self.give_up();
                return Ok(());
            }
        };
        let mut fixed = false;
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority"
                    && let Some(host) = lenient_authority(&value)
                {
                    fixed = true;
                    (name, host.to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        if !fixed && !rewriter.rewriting {
            // The usual case: a valid authority. Hands the connection to hyper as it is.
            self.output.put_slice(&block.raw);
            self.give_up();
            return Ok(());
        }
        if !rewriter.rewriting {
            tracing::debug!("a client sends a URL as its HTTP/2 :authority; rewriting its headers");
            rewriter.rewriting = true;
        }
        let encoded = rewriter
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_block(&mut self.output, &block, &encoded);
        Ok(())
    }

    /// Stops examining: everything from here on goes through untouched.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.put_slice(&block.raw);
        }
        self.rewriter = None;
        self.mode = Mode::PassThrough;
    }
}

/// The `host:port` of an `:authority` that holds a URL; `None` when it is fine as it is or
/// cannot be saved.
fn lenient_authority(value: &[u8]) -> Option<&[u8]> {
    if axum::http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let (_, rest) = text.split_once("://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    axum::http::uri::Authority::try_from(host).ok()?;
    Some(host.as_bytes())
}

/// Writes `encoded` as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(output: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let mut rest = encoded;
    let mut first = true;
    loop {
        let priority: &[u8] = match (&block.priority, first) {
            (Some(priority), true) => priority,
            _ => &[],
        };
        let room = MIN_MAX_FRAME - priority.len();
        let (chunk, after) = rest.split_at(rest.len().min(room));
        let mut flags = 0;
        if after.is_empty() {
            flags |= END_HEADERS;
        }
        let kind = if first {
            if block.end_stream {
                flags |= END_STREAM;
            }
            if block.priority.is_some() {
                flags |= PRIORITY;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        let length = priority.len() + chunk.len();
        output.put_uint(length as u64, 3);
        output.put_u8(kind);
        output.put_u8(flags);
        output.put_slice(&block.stream_id);
        output.put_slice(priority);
        output.put_slice(chunk);
        if after.is_empty() {
            return;
        }
        rest = after;
        first = false;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::PassThrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Step::Progress = this.step()? {
                continue;
            }
            let mut scratch = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: whatever is left is hyper's to judge.
                this.give_up();
                if this.input.is_empty() && this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_uint(payload.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_slice(&[0, 0, 0, stream]);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A header block as grpc-go writes it: `:authority` as a literal with incremental
    /// indexing (static name index 1), so later blocks can refer to it as dynamic entry 62.
    fn first_block(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.push(0x41);
        block.push(u8::try_from(authority.len()).expect("short"));
        block.extend_from_slice(authority.as_bytes());
        block.push(0x04); // :path, literal without indexing, static name index 4
        let path = b"/etcdserverpb.KV/Range";
        block.push(u8::try_from(path.len()).expect("short"));
        block.extend_from_slice(path);
        for (name, value) in extra {
            block.extend(unindexed(name, value));
        }
        block
    }

    /// A literal header field without indexing, new name, no Huffman coding.
    fn unindexed(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        out.extend(loona_hpack::encoder::encode_integer(name.len(), 7));
        out.extend_from_slice(name.as_bytes());
        out.extend(loona_hpack::encoder::encode_integer(value.len(), 7));
        out.extend_from_slice(value.as_bytes());
        out
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        LenientAuthority::new(input.as_slice())
            .read_to_end(&mut out)
            .await
            .expect("read");
        out
    }

    /// Splits HTTP/2 frames (after the preface) into (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u8, Vec<u8>)> {
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let length =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            out.push((bytes[3], bytes[4], bytes[8], bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        out
    }

    fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, value) = headers
            .iter()
            .find(|(name, _)| name == b":authority")
            .expect("an authority");
        String::from_utf8(value.clone()).expect("utf8")
    }

    #[tokio::test]
    async fn a_valid_authority_passes_through_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &first_block("127.0.0.1:2379", &[]),
        ));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbe]));
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn http1_passes_through() {
        let input = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn a_url_authority_is_cut_to_host_and_port_in_every_block() {
        let big = "x".repeat(40_000);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        let first = first_block("http://127.0.0.1:2379", &[("te", "trailers")]);
        // The first block arrives padded and in two frames.
        let (head, tail) = first.split_at(10);
        let mut padded = vec![3];
        padded.extend_from_slice(head);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, tail));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // The second refers to the first's dynamic entry and carries a header larger than a
        // frame once re-encoded.
        let mut second = vec![0x83, 0x86, 0xbe];
        second.extend(unindexed("x-big", &big));
        let (head, tail) = second.split_at(16_000);
        input.extend(frame(HEADERS, END_STREAM, 3, head));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, tail));

        let out = through(input).await;
        let frames = frames(&out);
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks: Vec<(u8, Vec<u8>)> = Vec::new();
        for (kind, flags, stream, payload) in &frames {
            match *kind {
                HEADERS => {
                    assert_eq!(flags & (PADDED | PRIORITY), 0, "padding is dropped");
                    blocks.push((*stream, payload.clone()));
                }
                CONTINUATION => blocks.last_mut().expect("a block").1.extend(payload),
                _ => {}
            }
            assert!(payload.len() <= MIN_MAX_FRAME);
        }
        assert_eq!(frames[2].0, 0x0, "the data frame keeps its place");
        let ends: Vec<u8> = frames
            .iter()
            .filter(|f| f.0 == HEADERS)
            .map(|f| f.1 & END_STREAM)
            .collect();
        assert_eq!(ends, vec![0, END_STREAM]);
        assert!(frames.iter().filter(|f| f.0 == CONTINUATION).count() >= 2);
        let first = decoder.decode(&blocks[0].1).expect("decodes");
        assert_eq!(authority_of(&first), "127.0.0.1:2379");
        assert!(first.contains(&(b"te".to_vec(), b"trailers".to_vec())));
        assert!(first.contains(&(b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec())));
        let second = decoder.decode(&blocks[1].1).expect("decodes");
        assert_eq!(blocks[1].0, 3);
        assert_eq!(authority_of(&second), "127.0.0.1:2379");
        assert!(second.contains(&(b"x-big".to_vec(), big.into_bytes())));
    }

    #[test]
    fn only_urls_are_rewritten() {
        assert_eq!(lenient_authority(b"127.0.0.1:2379"), None);
        assert_eq!(lenient_authority(b"localhost"), None);
        assert_eq!(
            lenient_authority(b"https://m1.example:2379/"),
            Some(b"m1.example:2379".as_slice())
        );
        assert_eq!(lenient_authority(b"not a host"), None);
    }
}
