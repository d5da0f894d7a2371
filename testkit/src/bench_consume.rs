//! The consumer-group benchmark: messages published to one topic while
//! `members` members of one group lease them and ack each; reports acked
//! deliveries per second and the latency from publish to the consumer's
//! ack being on disk (p50, p99).

use crate::bench::{BenchArgs, UNLIMITED_QUOTA, publish_load};
use crate::sandbox::{PrincipalSpec, Sandbox};
use anyhow::{Result, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use signet_client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};

/// What the members of a consume run share: when each message was
/// published (in publish order), publish→ack latencies, how many are
/// acked, and a wake-up once all `total` are.
#[derive(Clone)]
pub struct AckTally {
    /// Publish times, in publish order (filled by the publisher).
    pub sent_at: Arc<Mutex<Vec<Instant>>>,
    hist: Arc<std::sync::Mutex<Histogram<u64>>>,
    acked: Arc<AtomicUsize>,
    done: Arc<Notify>,
    total: usize,
}

impl AckTally {
    /// A tally for `total` messages.
    pub fn new(total: usize) -> Result<AckTally> {
        Ok(AckTally {
            sent_at: Arc::new(Mutex::new(Vec::with_capacity(total))),
            hist: Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?)),
            acked: Arc::new(AtomicUsize::new(0)),
            done: Arc::new(Notify::new()),
            total,
        })
    }

    /// Counts the ack of the `index`-th message published (from 0) and
    /// records its publish→ack latency.
    pub async fn acked(&self, index: usize) {
        let sent = self.sent_at.lock().await.get(index).copied();
        if let (Some(sent), Ok(mut h)) = (sent, self.hist.lock()) {
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = h.record(us.max(1));
        }
        if self.acked.fetch_add(1, Ordering::SeqCst) + 1 == self.total {
            self.done.notify_one();
        }
    }

    /// Ends the wait in [`AckTally::all_acked`] before every message was
    /// acked (a run that failed).
    pub fn wake(&self) {
        self.done.notify_one();
    }

    /// Returns once every message was acked (or [`AckTally::wake`]).
    pub async fn all_acked(&self) {
        self.done.notified().await;
    }

    /// The latency at quantile `q`, µs.
    pub fn quantile(&self, q: f64) -> Result<u64> {
        let h = self.hist.lock().map_err(|_| anyhow::anyhow!("histogram"))?;
        Ok(h.value_at_quantile(q))
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct ConsumeReport {
    /// Messages published and acked.
    pub messages: usize,
    /// Payload bytes each.
    pub size: usize,
    /// Group members.
    pub members: usize,
    /// From the first publish to the last ack.
    pub elapsed: Duration,
    /// Publish → ack on disk, µs: p50, p99.
    pub latency_us: [u64; 2],
}

impl std::fmt::Display for ConsumeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.messages as f64 / self.elapsed.as_secs_f64();
        writeln!(
            f,
            "consume  {} x {} B, {} members, ack each: {:.0} acked deliveries/s; publish->ack p50 {} us, p99 {} us",
            self.messages, self.size, self.members, rate, self.latency_us[0], self.latency_us[1]
        )
    }
}

const GROUP: &str = "[[group]]\nname = \"bench\"\ntopics = [\"bench.>\"]\nstart = \"earliest\"\nack_wait = \"60s\"\nmax_deliveries = 5\nbackoff = [\"1s\"]\ndead_letter = \"dlq.bench\"\nmax_in_flight = 100000\n";

/// Runs the consume benchmark against a fresh in-process broker.
pub async fn consume(args: BenchArgs, members: usize) -> Result<ConsumeReport> {
    if args.messages == 0 || members == 0 {
        bail!("messages and members must be at least 1");
    }
    let mut sandbox = Sandbox::new(&[PrincipalSpec::new("bench")
        .publish("bench.>")
        .subscribe("bench.>")
        .consume("bench")
        .quota(UNLIMITED_QUOTA)])?;
    sandbox.set_extra_policy(GROUP);
    sandbox.start().await?;
    let publisher = Client::connect(sandbox.client_config("bench")?).await?;
    let tally = AckTally::new(args.messages)?;
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..members {
        let client = Client::connect(sandbox.client_config("bench")?).await?;
        let mut consumer = client.consume_with("bench", 1024).await?;
        clients.push(client);
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let tally = tally.clone();
                tokio::spawn(async move {
                    if d.ack().await.is_ok() {
                        tally.acked(d.offset() as usize).await;
                    }
                });
            }
        }));
    }
    let started = Instant::now();
    publish_load(&publisher, "bench.load", &args, Some(&tally.sent_at)).await?;
    tokio::time::timeout(Duration::from_secs(300), tally.all_acked()).await?;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    for client in clients {
        client.close().await;
    }
    publisher.close().await;
    sandbox.stop().await;
    Ok(ConsumeReport {
        messages: args.messages,
        size: args.size,
        members,
        elapsed,
        latency_us: [tally.quantile(0.50)?, tally.quantile(0.99)?],
    })
}
