//! Access control: which topics a principal may publish and subscribe to.
//!
//! Grants are topic patterns (`*` one token, `>` the rest) collected from the
//! principal and from every role it holds. Deny beats allow; nothing
//! granted means denied. Topic names are validated before any matching.
//! Decisions are cached per connection (bounded, see [`DecisionCache`]).

use signet_proto::topic;
use std::collections::HashMap;

/// What a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

/// The patterns one principal holds, merged from itself and its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Patterns the principal may publish to.
    pub publish: Vec<String>,
    /// Patterns the principal may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns the principal may never publish to (beats `publish`).
    pub deny_publish: Vec<String>,
    /// Patterns the principal may never subscribe to (beats `subscribe`).
    pub deny_subscribe: Vec<String>,
}

impl Grants {
    /// Adds another set of grants (a role's) to these.
    pub fn extend(&mut self, other: &Grants) {
        self.publish.extend(other.publish.iter().cloned());
        self.subscribe.extend(other.subscribe.iter().cloned());
        self.deny_publish.extend(other.deny_publish.iter().cloned());
        self.deny_subscribe
            .extend(other.deny_subscribe.iter().cloned());
    }

    /// All patterns, for validation.
    pub fn patterns(&self) -> impl Iterator<Item = &String> {
        self.publish
            .iter()
            .chain(&self.subscribe)
            .chain(&self.deny_publish)
            .chain(&self.deny_subscribe)
    }

    /// Whether `action` on the topic `name` is allowed. An invalid name is
    /// never allowed.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        if topic::validate_name(name).is_err() {
            return false;
        }
        let (allow, deny) = match action {
            Action::Publish => (&self.publish, &self.deny_publish),
            Action::Subscribe => (&self.subscribe, &self.deny_subscribe),
        };
        !deny.iter().any(|p| topic::matches(p, name))
            && allow.iter().any(|p| topic::matches(p, name))
    }
}

/// Most decisions a connection caches before the cache is cleared.
/// Bounds memory a client can make us hold by naming many topics.
pub const DECISION_CACHE_ENTRIES_MAX: usize = 1024;

/// A per-connection cache of ACL decisions.
#[derive(Debug, Default)]
pub struct DecisionCache {
    decisions: HashMap<(Action, String), bool>,
}

impl DecisionCache {
    /// The decision for `action` on `name`, computed once per connection.
    pub fn allows(&mut self, grants: &Grants, action: Action, name: &str) -> bool {
        if let Some(&allowed) = self.decisions.get(&(action, name.to_owned())) {
            return allowed;
        }
        let allowed = grants.allows(action, name);
        if self.decisions.len() >= DECISION_CACHE_ENTRIES_MAX {
            self.decisions.clear();
        }
        self.decisions.insert((action, name.to_owned()), allowed);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            publish: vec!["orders.>".into(), "audit.*".into()],
            subscribe: vec!["billing.*".into()],
            deny_publish: vec!["orders.internal.>".into()],
            deny_subscribe: vec![],
        }
    }

    #[test]
    fn deny_beats_allow() {
        let g = grants();
        assert!(g.allows(Action::Publish, "orders.created"));
        assert!(!g.allows(Action::Publish, "orders.internal.x"));
    }

    #[test]
    fn nothing_granted_means_denied() {
        let g = grants();
        assert!(!g.allows(Action::Subscribe, "orders.created"));
        assert!(!g.allows(Action::Publish, "orders"));
        assert!(!Grants::default().allows(Action::Publish, "a"));
    }

    #[test]
    fn invalid_names_never_match() {
        let g = Grants {
            publish: vec![">".into()],
            ..Grants::default()
        };
        assert!(!g.allows(Action::Publish, "a..b"));
        assert!(!g.allows(Action::Publish, "a.>"));
        assert!(!g.allows(Action::Publish, ""));
    }

    #[test]
    fn cache_agrees_with_grants() {
        let g = grants();
        let mut cache = DecisionCache::default();
        for name in [
            "orders.created",
            "orders.internal.x",
            "audit.a",
            "audit.a.b",
        ] {
            assert_eq!(
                cache.allows(&g, Action::Publish, name),
                g.allows(Action::Publish, name)
            );
            assert_eq!(
                cache.allows(&g, Action::Publish, name),
                g.allows(Action::Publish, name)
            );
        }
    }
}
