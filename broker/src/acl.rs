//! Access control: which topics a principal may publish and subscribe to.
//!
//! Grants are topic patterns (`*` one token, `>` the rest) collected from the
//! principal and from every role it holds. Deny beats allow; nothing
//! granted means denied. Topic names are validated before any matching.
//! Decisions are cached per connection (bounded, see [`DecisionCache`]).

use signet_proto::topic;
use std::collections::HashMap;

/// First token of the broker's own topics (`signet.>`): only the broker
/// publishes there (signed by its identity key), whatever a principal's
/// grants say; subscribing takes a normal grant.
pub const SYSTEM_TOPIC_TOKEN: &str = "signet";

/// Whether `topic` is one of the broker's own.
pub fn is_system_topic(topic: &str) -> bool {
    topic.split('.').next() == Some(SYSTEM_TOPIC_TOKEN)
}

/// What a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

/// A set of topic patterns as a token trie: matching walks the topic's
/// tokens once, following the literal child and the `*` child and stopping
/// at a `>`, so its cost depends on the topic's length, not on how many
/// patterns the set holds (1,000 rules cost what 10 do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<String>", try_from = "Vec<String>")]
pub struct PatternSet {
    root: Node,
    patterns: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    literal: HashMap<String, Node>,
    star: Option<Box<Node>>,
    /// A pattern ends here with `>`: any one or more further tokens match.
    tail: bool,
    /// A pattern ends exactly here.
    end: bool,
}

impl Node {
    fn matches(&self, tokens: &[&str]) -> bool {
        let Some((first, rest)) = tokens.split_first() else {
            return self.end;
        };
        if self.tail {
            return true;
        }
        if let Some(child) = self.literal.get(*first)
            && child.matches(rest)
        {
            return true;
        }
        self.star.as_ref().is_some_and(|child| child.matches(rest))
    }
}

impl PatternSet {
    /// Adds a pattern (validated by the caller with `topic::validate_pattern`).
    pub fn insert(&mut self, pattern: &str) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            node = match token {
                ">" => {
                    node.tail = true;
                    self.patterns.push(pattern.to_owned());
                    return;
                }
                "*" => node.star.get_or_insert_with(Box::default),
                literal => node.literal.entry(literal.to_owned()).or_default(),
            };
        }
        node.end = true;
        self.patterns.push(pattern.to_owned());
    }

    /// Whether any pattern matches the (valid) topic name.
    pub fn matches(&self, name: &str) -> bool {
        let mut tokens = [""; signet_proto::limits::TOPIC_TOKENS_MAX];
        let mut count = 0;
        for token in name.split('.') {
            if count == tokens.len() {
                return false;
            }
            tokens[count] = token;
            count += 1;
        }
        self.root.matches(&tokens[..count])
    }

    /// The patterns, in insertion order.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl From<PatternSet> for Vec<String> {
    fn from(set: PatternSet) -> Vec<String> {
        set.patterns
    }
}

/// A replicated command's patterns are checked again as they are read.
impl TryFrom<Vec<String>> for PatternSet {
    type Error = String;

    fn try_from(patterns: Vec<String>) -> Result<PatternSet, String> {
        let mut set = PatternSet::default();
        for p in patterns {
            topic::validate_pattern(&p).map_err(|e| format!("pattern {p:?}: {e}"))?;
            set.insert(&p);
        }
        Ok(set)
    }
}

impl<S: AsRef<str>> FromIterator<S> for PatternSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut set = PatternSet::default();
        for p in iter {
            set.insert(p.as_ref());
        }
        set
    }
}

/// The patterns one principal holds, merged from itself and its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grants {
    /// Patterns the principal may publish to.
    pub publish: PatternSet,
    /// Patterns the principal may subscribe to.
    pub subscribe: PatternSet,
    /// Patterns the principal may never publish to (beats `publish`).
    pub deny_publish: PatternSet,
    /// Patterns the principal may never subscribe to (beats `subscribe`).
    pub deny_subscribe: PatternSet,
}

impl Grants {
    /// Adds another set of grants (a role's) to these.
    pub fn extend(&mut self, other: &Grants) {
        for (mine, theirs) in [
            (&mut self.publish, &other.publish),
            (&mut self.subscribe, &other.subscribe),
            (&mut self.deny_publish, &other.deny_publish),
            (&mut self.deny_subscribe, &other.deny_subscribe),
        ] {
            for p in theirs.patterns() {
                mine.insert(p);
            }
        }
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
        !deny.matches(name) && allow.matches(name)
    }
}

/// A per-connection cache of ACL decisions, valid for one policy version
/// (a reload empties it), holding at most `entries_max` decisions (then it
/// is cleared: bounds the memory a client can make us hold by naming many
/// topics; `limits.acl_cache_entries_max`).
#[derive(Debug)]
pub struct DecisionCache {
    policy_version: u64,
    entries_max: usize,
    decisions: HashMap<(Action, String), bool>,
}

impl Default for DecisionCache {
    /// A cache of the default size.
    fn default() -> DecisionCache {
        DecisionCache::new(crate::limits::Limits::usize(
            crate::limits::Limits::default().acl_cache_entries_max,
        ))
    }
}

impl DecisionCache {
    /// An empty cache of at most `entries_max` decisions.
    pub fn new(entries_max: usize) -> DecisionCache {
        DecisionCache {
            policy_version: 0,
            entries_max: entries_max.max(1),
            decisions: HashMap::new(),
        }
    }

    /// The decision for `action` on `name` under policy `version`.
    pub fn allows(&mut self, version: u64, grants: &Grants, action: Action, name: &str) -> bool {
        if version != self.policy_version {
            self.decisions.clear();
            self.policy_version = version;
        }
        if let Some(&allowed) = self.decisions.get(&(action, name.to_owned())) {
            return allowed;
        }
        let allowed = grants.allows(action, name);
        if self.decisions.len() >= self.entries_max {
            self.decisions.clear();
        }
        self.decisions.insert((action, name.to_owned()), allowed);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_set_is_serialized_as_its_patterns_and_checked_when_read() {
        let set: PatternSet = ["orders.>", "a.*.c"].into_iter().collect();
        let bytes = rmp_serde::to_vec(&set).unwrap();
        let back: PatternSet = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, set);
        assert!(back.matches("orders.eu.created") && back.matches("a.b.c"));
        let bad = rmp_serde::to_vec(&vec!["a.>.b".to_owned()]).unwrap();
        assert!(rmp_serde::from_slice::<PatternSet>(&bad).is_err());
    }

    fn grants() -> Grants {
        Grants {
            publish: ["orders.>", "audit.*"].into_iter().collect(),
            subscribe: ["billing.*"].into_iter().collect(),
            deny_publish: ["orders.internal.>"].into_iter().collect(),
            deny_subscribe: PatternSet::default(),
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
            publish: [">"].into_iter().collect(),
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
                cache.allows(1, &g, Action::Publish, name),
                g.allows(Action::Publish, name)
            );
            assert_eq!(
                cache.allows(1, &g, Action::Publish, name),
                g.allows(Action::Publish, name)
            );
        }
    }

    #[test]
    fn trie_agrees_with_pattern_by_pattern_matching() {
        let patterns = ["a.>", "a.*.c", "*.b", "x", "x.y.>", "*", "*.*.*", "q.*.>"];
        let names = [
            "a", "a.b", "a.b.c", "a.x.c", "z.b", "x", "x.y", "x.y.z", "q", "q.r", "q.r.s", "m.n.o",
            "m.n.o.p",
        ];
        for n in 1..=patterns.len() {
            let set: PatternSet = patterns[..n].iter().collect();
            for name in names {
                let expected = patterns[..n].iter().any(|p| topic::matches(p, name));
                assert_eq!(
                    set.matches(name),
                    expected,
                    "{name} against {:?}",
                    &patterns[..n]
                );
            }
        }
    }

    #[test]
    fn reload_version_empties_the_cache() {
        let mut cache = DecisionCache::default();
        let open = grants();
        assert!(cache.allows(1, &open, Action::Publish, "orders.a"));
        let closed = Grants::default();
        assert!(
            cache.allows(1, &closed, Action::Publish, "orders.a"),
            "same version: cached"
        );
        assert!(
            !cache.allows(2, &closed, Action::Publish, "orders.a"),
            "new version: recomputed"
        );
    }
}
