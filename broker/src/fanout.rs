//! Live delivery: the head (next offset) of every topic, watched by
//! subscriptions. The group-commit writer advances a head after each synced
//! write; a subscription reads stored messages up to the head, then waits
//! for it to move. Delivery therefore always comes from storage by offset,
//! so the switch from stored to live can neither skip nor repeat a message,
//! and a slow subscriber costs no memory here (no per-subscriber queues).

use crate::store::StoredTopic;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Where a topic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The topic's id in storage; `None` until its first message.
    pub topic_id: Option<u32>,
    /// The offset the next message will get.
    pub next_offset: u64,
}

/// Heads of all topics that have messages or watchers.
#[derive(Debug, Default)]
pub struct Registry {
    heads: Mutex<HashMap<String, watch::Sender<Head>>>,
}

impl Registry {
    /// A registry that knows the topics found on disk.
    pub fn new(topics: &[StoredTopic]) -> Registry {
        let heads = topics
            .iter()
            .map(|t| {
                let head = Head {
                    topic_id: Some(t.id),
                    next_offset: t.next_offset,
                };
                (t.name.clone(), watch::Sender::new(head))
            })
            .collect();
        Registry {
            heads: Mutex::new(heads),
        }
    }

    /// Watches a topic's head (a topic with no messages yet starts at 0).
    pub fn watch(&self, topic: &str) -> watch::Receiver<Head> {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads
            .entry(topic.to_owned())
            .or_insert_with(|| {
                watch::Sender::new(Head {
                    topic_id: None,
                    next_offset: 0,
                })
            })
            .subscribe()
    }

    /// Moves a topic's head after a synced write and wakes its watchers.
    pub fn advance(&self, topic: &str, head: Head) {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        match heads.get(topic) {
            Some(sender) => {
                sender.send_replace(head);
            }
            None => {
                heads.insert(topic.to_owned(), watch::Sender::new(head));
            }
        }
    }
}
