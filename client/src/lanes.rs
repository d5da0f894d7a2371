//! Publishing to a cluster whose topics are spread over several data
//! groups (`[cluster] data_groups`, placed by first token, see
//! [`signet_proto::placement`]): one lane per data group, each its own
//! publisher task on its own connection, which follows that group's
//! leader (`NotLeader`) on its own. A node takes a batch only when it
//! leads the group of every envelope in it, so one publisher whose batches
//! mixed two groups with different leaders would be sent back and forth.
//!
//! The lanes are set up at the first publish. With one broker address in
//! the client file, a broker that is not a cluster node (or does not know
//! `Placement`), or a cluster of one data group, there is one lane on the
//! client's own connection. Otherwise the client asks the node it is
//! connected to for the placement (the group count and each group's
//! leader) and dials a group's leader when that group's first message is
//! published. The lanes share the signing key's sequence
//! ([`SharedSeq`]), so each lane's seqs rise; the broker keeps a key's
//! marks per data group.
//!
//! Order: messages of one topic always take the same lane, in the order
//! they were queued (as on one broker); messages of topics in different
//! groups may be stored in any order relative to each other.

use crate::error::Error;
use crate::link::Link;
use crate::message::Request;
use crate::publisher::{self, PublisherSettings};
use crate::seq::SharedSeq;
use signet_proto::SigningKey;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{OnceCell, mpsc};

/// Where a client's publishes go.
pub(crate) struct Lanes {
    /// The client's own connection.
    link: Link,
    key: Arc<SigningKey>,
    seq: SharedSeq,
    settings: PublisherSettings,
    /// Whether the client file lists several brokers (a cluster, maybe of
    /// several data groups).
    several: bool,
    routes: OnceCell<Routes>,
}

enum Routes {
    /// Every publish on one lane.
    One(mpsc::Sender<Request>),
    /// One lane per data group, opened at its first publish.
    Groups {
        count: u64,
        /// Each group's leader when the placement was read.
        leaders: Vec<Option<SocketAddr>>,
        lanes: Vec<OnceCell<Lane>>,
    },
}

/// A lane's queue; its link is a sibling of the client's (closed with it).
struct Lane {
    queue: mpsc::Sender<Request>,
}

impl Lanes {
    pub(crate) fn new(
        link: Link,
        key: Arc<SigningKey>,
        seq: SharedSeq,
        settings: PublisherSettings,
        several: bool,
    ) -> Lanes {
        Lanes {
            link,
            key,
            seq,
            settings,
            several,
            routes: OnceCell::new(),
        }
    }

    /// The queue of the lane `topic`'s messages take.
    pub(crate) async fn queue(&self, topic: &str) -> Result<mpsc::Sender<Request>, Error> {
        let routes = self.routes.get_or_init(|| self.route()).await;
        match routes {
            Routes::One(queue) => Ok(queue.clone()),
            Routes::Groups {
                count,
                leaders,
                lanes,
            } => {
                let index = usize::try_from(signet_proto::placement::group_of(topic, *count) - 1)
                    .map_err(|_| Error::Protocol("data group out of range".into()))?;
                let (Some(lane), Some(leader)) = (lanes.get(index), leaders.get(index)) else {
                    return Err(Error::Protocol("data group out of range".into()));
                };
                let lane = lane.get_or_try_init(|| self.open(*leader)).await?;
                Ok(lane.queue.clone())
            }
        }
    }

    /// One lane, or one per data group after asking the connected node.
    async fn route(&self) -> Routes {
        if self.several {
            let current = self.link.current().await;
            match crate::consumer::placement(&current.conn).await {
                Ok(placement) if placement.data_groups > 1 => {
                    let leaders: Vec<Option<SocketAddr>> = (0..placement.data_groups)
                        .map(|g| {
                            let leader = usize::try_from(g)
                                .ok()
                                .and_then(|g| placement.leaders.get(g).cloned().flatten());
                            leader.and_then(|l| l.parse().ok())
                        })
                        .collect();
                    let lanes = leaders.iter().map(|_| OnceCell::new()).collect();
                    return Routes::Groups {
                        count: placement.data_groups,
                        leaders,
                        lanes,
                    };
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "no placement; publishing on one lane"),
            }
        }
        Routes::One(self.start(self.link.clone()))
    }

    /// A lane on a new connection to `leader` (or the address in use).
    async fn open(&self, leader: Option<SocketAddr>) -> Result<Lane, Error> {
        let link = self.link.sibling(leader).await?;
        Ok(Lane {
            queue: self.start(link),
        })
    }

    fn start(&self, link: Link) -> mpsc::Sender<Request> {
        publisher::start(
            link,
            self.key.clone(),
            self.seq.handle(),
            self.settings.clone(),
        )
    }
}
