//! Live delivery: the head (next offset) of every topic, watched by
//! subscriptions. The group-commit writer advances a head after each synced
//! write; a subscription reads stored messages up to the head, then waits
//! for it to move. Delivery therefore always comes from storage by offset,
//! so the switch from stored to live can neither skip nor repeat a message,
//! and a slow subscriber costs no memory here (no per-subscriber queues).

use crate::store::StoredTopic;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Where a topic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The topic's id in storage; `None` until its first message.
    pub topic_id: Option<u32>,
    /// Its oldest offset still stored (retention moves it up).
    pub first_offset: u64,
    /// The offset the next message will get.
    pub next_offset: u64,
    /// Record bytes stored.
    pub stored_bytes: u64,
}

impl Head {
    /// A name with no messages yet.
    pub const EMPTY: Head = Head {
        topic_id: None,
        first_offset: 0,
        next_offset: 0,
        stored_bytes: 0,
    };
}

/// Heads of all topics that have messages, and of names without messages
/// while a subscription watches them (the last watcher to go removes such
/// a name, so subscribing to names never published leaves nothing behind).
#[derive(Debug)]
pub struct Registry {
    heads: Mutex<HashMap<String, watch::Sender<Head>>>,
    /// Moves with every head and every new topic: what pattern
    /// subscriptions wait on (one wake per group commit, not per topic).
    pulse: watch::Sender<Pulse>,
}

/// Counters pattern subscriptions watch: any head moved, a topic got its
/// first message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulse {
    /// Bumped whenever a head moves.
    pub moved: u64,
    /// Bumped whenever a topic gets its first message.
    pub created: u64,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new(&[])
    }
}

/// A subscription's watch on a topic's head; derefs to the receiver.
#[derive(Debug)]
pub struct TopicWatch {
    registry: Arc<Registry>,
    topic: String,
    head: watch::Receiver<Head>,
}

impl std::ops::Deref for TopicWatch {
    type Target = watch::Receiver<Head>;

    fn deref(&self) -> &watch::Receiver<Head> {
        &self.head
    }
}

impl std::ops::DerefMut for TopicWatch {
    fn deref_mut(&mut self) -> &mut watch::Receiver<Head> {
        &mut self.head
    }
}

impl Drop for TopicWatch {
    fn drop(&mut self) {
        // Watchers are only made and dropped under the lock, so a count of
        // one is this watcher alone.
        let mut heads = self.registry.lock();
        if let Some(sender) = heads.get(&self.topic)
            && sender.borrow().topic_id.is_none()
            && sender.receiver_count() <= 1
        {
            heads.remove(&self.topic);
        }
    }
}

impl Registry {
    /// A registry that knows the topics found on disk.
    pub fn new(topics: &[StoredTopic]) -> Registry {
        let heads = topics
            .iter()
            .map(|t| {
                let head = Head {
                    topic_id: Some(t.id),
                    first_offset: t.first_offset,
                    next_offset: t.next_offset,
                    stored_bytes: t.bytes,
                };
                (t.name.clone(), watch::Sender::new(head))
            })
            .collect();
        Registry {
            heads: Mutex::new(heads),
            pulse: watch::Sender::new(Pulse::default()),
        }
    }

    /// Watches every head move and topic creation (for pattern
    /// subscriptions).
    pub fn watch_pulse(&self) -> watch::Receiver<Pulse> {
        self.pulse.subscribe()
    }

    /// The topics with stored messages whose names `covers` accepts, with a
    /// watch on each head. Walks every topic: called when a pattern
    /// subscription opens and when topics are created or the policy
    /// changes, not per message.
    pub fn topics_where(
        &self,
        mut covers: impl FnMut(&str) -> bool,
    ) -> Vec<(String, watch::Receiver<Head>)> {
        self.lock()
            .iter()
            .filter(|(name, sender)| sender.borrow().topic_id.is_some() && covers(name))
            .map(|(name, sender)| (name.clone(), sender.subscribe()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<Head>>> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches a topic's head (a topic with no messages yet starts at 0).
    pub fn watch(self: &Arc<Self>, topic: &str) -> TopicWatch {
        let mut heads = self.lock();
        let head = heads
            .entry(topic.to_owned())
            .or_insert_with(|| watch::Sender::new(Head::EMPTY))
            .subscribe();
        TopicWatch {
            registry: self.clone(),
            topic: topic.to_owned(),
            head,
        }
    }

    /// Whether `topic` has stored messages (a publish to any other name
    /// creates a topic).
    pub fn has_messages(&self, topic: &str) -> bool {
        self.lock()
            .get(topic)
            .is_some_and(|sender| sender.borrow().topic_id.is_some())
    }

    /// Where a topic stands, if the registry holds it.
    pub fn head(&self, topic: &str) -> Option<Head> {
        self.lock().get(topic).map(|sender| *sender.borrow())
    }

    /// Every topic with messages and where it stands.
    pub fn topics(&self) -> Vec<(String, Head)> {
        self.lock()
            .iter()
            .map(|(name, sender)| (name.clone(), *sender.borrow()))
            .filter(|(_, head)| head.topic_id.is_some())
            .collect()
    }

    /// How many topic heads the registry holds (topics with messages, and
    /// names watched by live subscriptions).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the registry holds no head.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves a topic's head after a synced write and wakes its watchers.
    pub fn advance(&self, topic: &str, head: Head) {
        let mut heads = self.lock();
        let created = match heads.get(topic) {
            Some(sender) => sender.send_replace(head).topic_id.is_none(),
            None => {
                heads.insert(topic.to_owned(), watch::Sender::new(head));
                true
            }
        };
        self.pulse.send_modify(|pulse| {
            pulse.moved = pulse.moved.wrapping_add(1);
            if created {
                pulse.created = pulse.created.wrapping_add(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_messages_leaves_with_its_last_watcher() {
        let registry = Arc::new(Registry::default());
        let a = registry.watch("ghost");
        let b = registry.watch("ghost");
        assert_eq!(registry.len(), 1);
        drop(a);
        assert_eq!(registry.len(), 1, "still watched");
        drop(b);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_topic_with_messages_stays() {
        let registry = Arc::new(Registry::default());
        let watch = registry.watch("real");
        assert!(!registry.has_messages("real"));
        registry.advance(
            "real",
            Head {
                topic_id: Some(1),
                next_offset: 1,
                ..Head::EMPTY
            },
        );
        assert_eq!(watch.borrow().next_offset, 1);
        drop(watch);
        assert!(registry.has_messages("real"));
        assert_eq!(registry.len(), 1);
    }
}
