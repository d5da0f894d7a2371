//! Stable error codes shared by broker and client.
//!
//! A code is a newtype over `u16` so an unknown code from a newer peer
//! survives a round trip. Codes are grouped by subsystem in hundreds; a
//! retired number is never reused.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, numeric error code carried on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($name:ident($num:expr) $desc:literal;)*) => {
        #[allow(non_upper_case_globals)]
        impl ErrorCode {
            $(#[doc = $desc] pub const $name: ErrorCode = ErrorCode($num);)*

            /// Every known code, for tests and documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's stable name, e.g. `"Forbidden"`, or `None` if unknown.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($num => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A one-line description for humans.
            pub fn description(self) -> &'static str {
                match self.0 {
                    $($num => $desc,)*
                    _ => "unknown error code",
                }
            }

            /// The code with the given stable name.
            pub fn from_name(name: &str) -> Option<ErrorCode> {
                match name {
                    $(stringify!($name) => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    // 1xx: authentication and authorization
    Forbidden(100) "the principal is not allowed to do this on this topic";
    UnknownKey(101) "the signing key is not known";
    KeyNotBound(102) "the signing key is not bound to this connection's principal";
    Untrusted(103) "the signing key is trusted, but not for this topic (subscriber trust entry)";
    // 2xx: integrity
    BadSignature(200) "the signature or Merkle proof does not verify";
    Replay(201) "the sequence number is not above the last accepted one for this key";
    StaleTimestamp(202) "the timestamp is outside the broker's clock skew window";
    // 3xx: limits and framing
    TooLarge(300) "the frame or message is larger than allowed";
    BadFrame(301) "the frame could not be decoded";
    BadTopic(302) "the topic name or pattern is invalid";
    QuotaExceeded(303) "the principal is over its quota; retry later";
    TooManyInFlight(304) "too many unacknowledged publishes on this connection";
    TooManyTopics(305) "a pattern subscription would cover more topics than the broker allows";
    // 4xx: payload
    SchemaViolation(400) "the payload does not match the topic's schema";
    EncryptionRequired(401) "the topic requires an encrypted payload";
    NotARecipient(402) "this client holds no key the payload was encrypted to";
    UnsupportedVersion(403) "the envelope or protocol version is not supported";
    UnsupportedSuite(404) "the encryption suite is not supported";
    EncryptionNotAllowed(405) "the topic does not accept encrypted payloads";
    // 6xx: consumer groups
    NoSuchGroup(600) "the policy defines no consumer group of this name";
    LeaseInvalid(601) "the lease token is stale, forged or another member's; nothing changed";
    // 5xx: broker
    Unavailable(500) "the broker cannot serve this now (storage or shutdown)";
    Internal(501) "internal broker error";
    StorageFull(502) "the broker's disk is below its free-space floor; publishes are refused until space returns";
    NotClustered(503) "the broker is a single broker, not a node of a cluster";
    NotLeader(504) "this cluster node does not lead the group holding the topic; the detail names the leader's client address when one is known";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Unknown({})", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_two_codes_collide() {
        let nums: HashSet<u16> = ErrorCode::ALL.iter().map(|c| c.0).collect();
        assert_eq!(nums.len(), ErrorCode::ALL.len());
        let names: HashSet<&str> = ErrorCode::ALL.iter().filter_map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn names_round_trip() {
        for code in ErrorCode::ALL {
            let name = code.name().expect("known");
            assert_eq!(ErrorCode::from_name(name), Some(*code));
        }
    }

    #[test]
    fn unknown_code_survives_round_trip() {
        let unknown = ErrorCode(9999);
        let bytes = rmp_serde::to_vec(&unknown).expect("encode");
        let back: ErrorCode = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, unknown);
        assert_eq!(back.to_string(), "Unknown(9999)");
    }
}
