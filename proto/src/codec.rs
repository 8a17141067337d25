//! The protobuf codec every generated client and server uses.
//!
//! tonic's default allocates an 8 KiB encode and an 8 KiB decode buffer
//! for every call and keeps them for the call's life. An agent's `Session`
//! lives for days and its messages are small (a heartbeat, an ack, a batch
//! of events), so at 10,000 connected agents those two buffers were
//! ~16 KiB of the controller's memory per agent (heaptrack, see
//! docs/benchmarks.md). Buffers here start at 1 KiB and grow to fit a
//! larger message as tonic's do.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of each call's encode and decode buffer.
pub const CALL_BUFFER_BYTES: usize = 1024;
/// tonic's default: encode up to this much before yielding to the runtime.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with small per-call buffers.
#[derive(Debug)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
