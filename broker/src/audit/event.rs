//! One thing that happened, and the key it is rate-limited under.

use serde_json::{Map, Value};
use std::net::{IpAddr, SocketAddr};

/// Who may cause an event, which decides how it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Caused by a peer (a connection, a refusal, a denial): rate-limited
    /// per kind, principal and remote address; dropped (and counted) when
    /// the queue is full.
    Peer,
    /// The broker's own, rare and security-relevant (start, stop, policy
    /// reloads): never rate-limited, and queued in room peers cannot use.
    System,
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    pub(super) kind: &'static str,
    pub(super) class: Class,
    pub(super) fields: Map<String, Value>,
}

/// What a peer event is rate-limited under: its kind, its principal and
/// the IP address of its remote (the port is kept in summaries only, so a
/// flood from many ports of one host shares one budget).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RateKey {
    pub kind: &'static str,
    pub principal: Option<String>,
    pub ip: Option<IpAddr>,
    /// Set on the one shared key per kind used once the table is full.
    pub overflow: bool,
}

impl Event {
    /// An event caused by a peer. It is rate-limited per kind and per
    /// `principal` and `remote` (the IP address of a `SocketAddr`) taken
    /// from its own fields, so a summary names exactly whom the records
    /// would have named.
    pub fn new(kind: &'static str, fields: Value) -> Event {
        Event::with_class(kind, Class::Peer, fields)
    }

    /// An event of the broker itself (start, stop, policy reload): never
    /// rate-limited and never dropped because peers filled the queue.
    pub fn system(kind: &'static str, fields: Value) -> Event {
        Event::with_class(kind, Class::System, fields)
    }

    fn with_class(kind: &'static str, class: Class, fields: Value) -> Event {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Event {
            kind,
            class,
            fields,
        }
    }

    /// The event's kind (its `event` field).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The `remote` field, as written.
    pub(super) fn remote(&self) -> Option<&str> {
        self.fields.get("remote").and_then(Value::as_str)
    }

    pub(super) fn rate_key(&self) -> RateKey {
        RateKey {
            kind: self.kind,
            principal: self
                .fields
                .get("principal")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ip: self.remote().and_then(|r| {
                r.parse::<SocketAddr>()
                    .map(|a| a.ip())
                    .or_else(|_| r.parse::<IpAddr>())
                    .ok()
            }),
            overflow: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rate_key_comes_from_the_fields_and_ignores_the_port() {
        let a = Event::new(
            "connection_refused",
            json!({ "remote": "10.0.0.1:5000", "reason": "x" }),
        );
        let b = Event::new(
            "connection_refused",
            json!({ "remote": "10.0.0.1:6000", "reason": "y" }),
        );
        assert_eq!(a.rate_key(), b.rate_key());
        assert_eq!(a.rate_key().ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.rate_key().principal, None);
        let c = Event::new(
            "publish_denied",
            json!({ "principal": "bob", "remote": "[::1]:7" }),
        );
        assert_eq!(c.rate_key().principal.as_deref(), Some("bob"));
        assert_eq!(c.rate_key().ip, Some("::1".parse().unwrap()));
    }
}
