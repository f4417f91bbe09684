//! Frames: a 4-byte big-endian length, then that many bytes. A length below zero or above
//! `jute.maxbuffer` ends the connection without a reply, as ZooKeeper does.

use tokio::io::{AsyncRead, AsyncReadExt};

/// How a connection's input ended.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is over jute.maxbuffer")]
    TooLong(i64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the 4 bytes in front of a frame (the first ones may be a four-letter word).
pub async fn read_head(reader: &mut (impl AsyncRead + Unpin)) -> Result<[u8; 4], FrameError> {
    let mut head = [0u8; 4];
    match reader.read_exact(&mut head).await {
        Ok(_) => Ok(head),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(error) => Err(error.into()),
    }
}

/// Reads the body of a frame whose head was `head`.
pub async fn read_body(
    reader: &mut (impl AsyncRead + Unpin),
    head: [u8; 4],
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let length = i32::from_be_bytes(head);
    if length < 0 || length as usize > max {
        return Err(FrameError::TooLong(i64::from(length)));
    }
    let mut body = vec![0u8; length as usize];
    reader.read_exact(&mut body).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            error.into()
        }
    })?;
    Ok(body)
}

/// Reads one whole frame.
pub async fn read(
    reader: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let head = read_head(reader).await?;
    read_body(reader, head, max).await
}
