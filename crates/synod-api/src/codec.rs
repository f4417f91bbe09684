//! The gRPC codec of every Synod service: prost's, with the refusals etcd's clients expect from
//! grpc-go. A message over the server's limit is `RESOURCE_EXHAUSTED` ("grpc: received message
//! larger than max"), and a message that does not decode (a txn nested past the decoder's depth
//! limit, say) is `INVALID_ARGUMENT`; tonic's own codec answers `OUT_OF_RANGE` and `INTERNAL`.
//!
//! The limit is the process's (`set_message_limit`, from `--max-request-bytes`): the generated
//! stubs build their codec with `Default`, so it cannot travel with the service. Tonic's own
//! limit stays above it as the hard bound on what is buffered.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

static MESSAGE_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets the largest message this process's services decode (gRPC's receive limit).
pub fn set_message_limit(bytes: usize) {
    MESSAGE_LIMIT.store(bytes, Ordering::Relaxed);
}

/// grpc-go's refusal of a message over the receive limit.
pub fn message_too_large(length: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({length} vs. {limit})"
    ))
}

/// prost's codec with grpc-go's refusals; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct EtcdCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec(PhantomData)
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = EtcdDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        EtcdDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder behind the size check, with decode failures as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct EtcdDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for EtcdDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let length = bytes::Buf::remaining(buf);
        let limit = MESSAGE_LIMIT.load(Ordering::Relaxed);
        if length > limit {
            return Err(message_too_large(length, limit));
        }
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "grpc: error unmarshalling request: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
