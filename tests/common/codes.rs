//! Typed error codes out of what tests get back: a client call's result,
//! or the `Results` frame of a raw publish.

use signet_proto::ErrorCode;
use signet_proto::frame::{Outcome, ServerFrame};

/// The typed code of a refused client call; `None` when it succeeded or
/// failed without a code (e.g. a connection error).
pub fn code<T>(result: &Result<T, signet_client::Error>) -> Option<ErrorCode> {
    result.as_ref().err().and_then(signet_client::Error::code)
}

/// Per envelope of a raw publish's answer: `None` for an ack, the code of a
/// nack. Panics unless the answer is a `Results` frame.
pub fn nack_codes(frame: ServerFrame) -> Vec<Option<ErrorCode>> {
    match frame {
        ServerFrame::Results(r) => r
            .outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Ack(_) => None,
                Outcome::Nack(r) => Some(r.code),
            })
            .collect(),
        other => panic!("expected results, got {other:?}"),
    }
}
