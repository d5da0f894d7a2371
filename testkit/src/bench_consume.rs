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
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(args.messages)));
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..members {
        let client = Client::connect(sandbox.client_config("bench")?).await?;
        let mut consumer = client.consume_with("bench", 1024).await?;
        clients.push(client);
        let (sent_at, hist, acked, done, total) = (
            sent_at.clone(),
            hist.clone(),
            acked.clone(),
            done.clone(),
            args.messages,
        );
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let (sent_at, hist, acked, done) =
                    (sent_at.clone(), hist.clone(), acked.clone(), done.clone());
                tokio::spawn(async move {
                    if d.ack().await.is_ok() {
                        let sent = sent_at.lock().await.get(d.offset() as usize).copied();
                        if let Some(sent) = sent {
                            let us = sent.elapsed().as_micros() as u64;
                            if let Ok(mut h) = hist.lock() {
                                let _ = h.record(us.max(1));
                            }
                        }
                        if acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == total {
                            done.notify_one();
                        }
                    }
                });
            }
        }));
    }
    let started = Instant::now();
    publish_load(&publisher, "bench.load", &args, Some(&sent_at)).await?;
    tokio::time::timeout(Duration::from_secs(300), done.notified()).await?;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    for client in clients {
        client.close().await;
    }
    publisher.close().await;
    sandbox.stop().await;
    let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram"))?;
    Ok(ConsumeReport {
        messages: args.messages,
        size: args.size,
        members,
        elapsed,
        latency_us: [h.value_at_quantile(0.50), h.value_at_quantile(0.99)],
    })
}
