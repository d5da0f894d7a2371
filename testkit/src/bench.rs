//! The publish benchmark: a real broker (QUIC, mutual TLS, RocksDB with
//! synced group commits) and a real client in one process, on loopback.
//! Publishes `messages` signed messages of `size` bytes with at most
//! `inflight` unacknowledged, one subscriber reading live, and prints
//! throughput and latency percentiles for publish→ack and
//! publish→delivery.

use crate::sandbox::{PrincipalSpec, Sandbox};
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use signet_client::{Client, OutgoingMessage, PendingAck, StartAt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// A quota far above what a benchmark principal can reach on one machine.
pub(crate) const UNLIMITED_QUOTA: &str =
    "{ msgs_per_sec = 4000000000, bytes_per_sec = 4000000000, stored_bytes = 1000000000000 }";

/// A benchmark setting from the environment (`SIGNET_BENCH_*`), or
/// `default` when unset or not a number.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle of `values` (the upper one of an even count; 0 when none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Messages to publish.
    pub messages: usize,
    /// Payload size, bytes.
    pub size: usize,
    /// Most messages published but not yet acknowledged.
    pub inflight: usize,
    /// Also measure delivery to one live subscriber.
    pub subscribe: bool,
}

impl BenchArgs {
    /// `SIGNET_BENCH_MESSAGES` (else `messages`), `SIGNET_BENCH_SIZE`
    /// (256) and `SIGNET_BENCH_INFLIGHT` (512) from the environment.
    pub fn from_env(messages: usize, subscribe: bool) -> BenchArgs {
        BenchArgs {
            messages: env_or("SIGNET_BENCH_MESSAGES", messages),
            size: env_or("SIGNET_BENCH_SIZE", 256),
            inflight: env_or("SIGNET_BENCH_INFLIGHT", 512),
            subscribe,
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub messages: usize,
    pub size: usize,
    pub inflight: usize,
    pub publish_elapsed: Duration,
    pub ack_us: [u64; 3],
    pub delivery_elapsed: Option<Duration>,
    pub delivery_us: Option<[u64; 3]>,
    /// Broker-side stage figures (Prometheus summary lines of the group commit).
    pub stages: Vec<String>,
}

impl Report {
    /// Messages published per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }

    /// A report of a publish run without a subscriber.
    pub(crate) fn publish_only(
        args: &BenchArgs,
        size: usize,
        publish_elapsed: Duration,
        hist: &Histogram<u64>,
    ) -> Report {
        Report {
            messages: args.messages,
            size,
            inflight: args.inflight,
            publish_elapsed,
            ack_us: percentiles(hist),
            delivery_elapsed: None,
            delivery_us: None,
            stages: Vec::new(),
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> [u64; 3] {
    [
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ]
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.publish_elapsed.as_secs_f64();
        let rate = self.messages as f64 / secs;
        writeln!(
            f,
            "publish  {} msgs x {} B, {} in flight: {:.0} msgs/s, {:.1} MB/s; ack latency p50 {} us, p99 {} us, p999 {} us",
            self.messages,
            self.size,
            self.inflight,
            rate,
            rate * self.size as f64 / 1e6,
            self.ack_us[0],
            self.ack_us[1],
            self.ack_us[2]
        )?;
        if let (Some(elapsed), Some(us)) = (self.delivery_elapsed, self.delivery_us) {
            let rate = self.messages as f64 / elapsed.as_secs_f64();
            writeln!(
                f,
                "delivery {} msgs to 1 subscriber: {:.0} msgs/s, {:.1} MB/s; publish->delivery p50 {} us, p99 {} us, p999 {} us",
                self.messages,
                rate,
                rate * self.size as f64 / 1e6,
                us[0],
                us[1],
                us[2]
            )?;
        }
        for line in &self.stages {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Installs a metrics recorder for this process (if none is installed) so
/// the broker's own stage timings can be read back after the run.
fn recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok().map(|()| handle)
}

fn stage_lines(handle: Option<&metrics_exporter_prometheus::PrometheusHandle>) -> Vec<String> {
    let Some(handle) = handle else {
        return Vec::new();
    };
    handle
        .render()
        .lines()
        .filter(|l| {
            (l.starts_with("signet_commit_seconds")
                || l.starts_with("signet_commit_batch_envelopes"))
                && !l.starts_with('#')
        })
        .map(str::to_owned)
        .collect()
}

/// Runs the benchmark against a fresh in-process broker.
pub async fn run(args: BenchArgs) -> Result<Report> {
    if args.messages == 0 || args.inflight == 0 {
        bail!("messages and inflight must be at least 1");
    }
    let metrics = recorder();
    // The benchmark principal gets quotas far above what it can reach.
    let mut sandbox = Sandbox::new(&[PrincipalSpec::new("bench")
        .publish("bench.>")
        .subscribe("bench.>")
        .quota(UNLIMITED_QUOTA)])?;
    sandbox.start().await?;
    let publisher = Client::connect(sandbox.client_config("bench")?).await?;
    let subscriber = Client::connect(sandbox.client_config("bench")?).await?;
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(args.messages)));
    let delivery = if args.subscribe {
        let sub = subscriber
            .subscribe("bench.load", StartAt::Earliest)
            .await?;
        Some(tokio::spawn(receive(sub, args.messages, sent_at.clone())))
    } else {
        None
    };
    let started = Instant::now();
    let ack_hist = publish_load(&publisher, "bench.load", &args, Some(&sent_at)).await?;
    let publish_elapsed = started.elapsed();
    let (delivery_elapsed, delivery_us) = match delivery {
        Some(task) => {
            let h = task.await??;
            (Some(started.elapsed()), Some(percentiles(&h)))
        }
        None => (None, None),
    };
    publisher.close().await;
    subscriber.close().await;
    sandbox.stop().await;
    Ok(Report {
        messages: args.messages,
        size: args.size,
        inflight: args.inflight,
        publish_elapsed,
        ack_us: percentiles(&ack_hist),
        delivery_elapsed,
        delivery_us,
        stages: stage_lines(metrics.as_ref()),
    })
}

/// Publishes `args.messages` messages of `args.size` bytes to `topic` with
/// at most `args.inflight` unacknowledged; returns the publish→ack latency
/// histogram. Records each send time in `sent_at` when given.
pub(crate) async fn publish_load(
    client: &Client,
    topic: &str,
    args: &BenchArgs,
    sent_at: Option<&Mutex<Vec<Instant>>>,
) -> Result<Histogram<u64>> {
    let template = OutgoingMessage::new(topic, vec![0x5a_u8; args.size]);
    publish_messages(client, &template, args, sent_at).await
}

/// Publishes `args.messages` copies of `template` with at most
/// `args.inflight` unacknowledged; returns the publish→ack histogram.
async fn publish_messages(
    client: &Client,
    template: &OutgoingMessage,
    args: &BenchArgs,
    sent_at: Option<&Mutex<Vec<Instant>>>,
) -> Result<Histogram<u64>> {
    publish_rotating(client, std::slice::from_ref(template), args, sent_at).await
}

/// Publishes `args.messages` messages of `args.size` bytes, to each of
/// `topics` in turn, with at most `args.inflight` unacknowledged; returns
/// the publish→ack histogram.
pub(crate) async fn publish_spread(
    client: &Client,
    topics: &[&str],
    args: &BenchArgs,
) -> Result<Histogram<u64>> {
    let templates: Vec<OutgoingMessage> = topics
        .iter()
        .map(|topic| OutgoingMessage::new(*topic, vec![0x5a_u8; args.size]))
        .collect();
    publish_rotating(client, &templates, args, None).await
}

/// [`publish_messages`], taking `templates` in turn.
async fn publish_rotating(
    client: &Client,
    templates: &[OutgoingMessage],
    args: &BenchArgs,
    sent_at: Option<&Mutex<Vec<Instant>>>,
) -> Result<Histogram<u64>> {
    let (acks_tx, mut acks_rx) = mpsc::channel::<(Instant, PendingAck)>(args.inflight);
    let collector = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
        while let Some((started, ack)) = acks_rx.recv().await {
            ack.await?;
            h.saturating_record(started_elapsed_us(started));
        }
        anyhow::Ok(h)
    });
    for template in templates.iter().cycle().take(args.messages) {
        let now = Instant::now();
        if let Some(sent_at) = sent_at {
            sent_at.lock().await.push(now);
        }
        let ack = client.enqueue(template.clone()).await?;
        if acks_tx.send((now, ack)).await.is_err() {
            break;
        }
    }
    drop(acks_tx);
    collector.await?
}

fn started_elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

async fn receive(
    mut sub: signet_client::Subscription,
    count: usize,
    sent_at: Arc<Mutex<Vec<Instant>>>,
) -> Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..count {
        let message = sub.next().await.context("subscription ended early")??;
        let offset = usize::try_from(message.offset)?;
        if offset != i {
            bail!("expected offset {i}, got {offset}");
        }
        let sent = sent_at.lock().await.get(offset).copied();
        if let Some(sent) = sent {
            h.saturating_record(started_elapsed_us(sent));
        }
    }
    Ok(h)
}

/// Cost of the policy checks on the publish path, in nanoseconds per call:
/// the ACL decision uncached and cached, and the quota check, with `rules`
/// patterns on the principal.
#[derive(Debug, Clone)]
pub struct PolicyCosts {
    pub rules: usize,
    pub acl_uncached_ns: f64,
    pub acl_cached_ns: f64,
    pub quota_ns: f64,
}

impl std::fmt::Display for PolicyCosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "policy   {:>5} rules: ACL check {:.0} ns uncached, {:.0} ns cached; quota check {:.0} ns",
            self.rules, self.acl_uncached_ns, self.acl_cached_ns, self.quota_ns
        )
    }
}

/// Measures [`PolicyCosts`] for `rules` patterns (a realistic mix of
/// literals, `*` and `>`), over a rotating set of topic names. Fails if
/// the ACL does not allow every benchmark topic (the figures would then
/// measure the wrong path).
pub fn policy_costs(rules: usize) -> Result<PolicyCosts> {
    use signet_broker::acl::{Action, DecisionCache, Grants};
    use signet_broker::quota::{QuotaLimits, Quotas};
    let mut grants = Grants::default();
    for i in 0..rules {
        let pattern = match i % 3 {
            0 => format!("svc{i}.events.>"),
            1 => format!("svc{i}.*.created"),
            _ => format!("svc{i}.orders.updated"),
        };
        grants.publish.insert(&pattern);
    }
    grants.publish.insert("bench.>");
    grants.deny_publish.insert("bench.internal.>");
    let topics: Vec<String> = (0..64).map(|i| format!("bench.load.t{i}")).collect();
    let iterations = 200_000usize;
    let started = Instant::now();
    let mut allowed = 0usize;
    for i in 0..iterations {
        allowed += usize::from(grants.allows(Action::Publish, &topics[i % topics.len()]));
    }
    let acl_uncached_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    let mut cache = DecisionCache::default();
    let started = Instant::now();
    for i in 0..iterations {
        allowed +=
            usize::from(cache.allows(1, &grants, Action::Publish, &topics[i % topics.len()]));
    }
    let acl_cached_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    if allowed != 2 * iterations {
        bail!(
            "the ACL allowed {allowed} of {} bench topic checks; every one should be allowed",
            2 * iterations
        );
    }
    let limits = QuotaLimits {
        msgs_per_sec: u32::MAX,
        bytes_per_sec: u32::MAX,
        stored_bytes: u64::MAX,
        ..QuotaLimits::DEFAULT
    };
    let quota = Quotas::new(4 << 20).get("bench", limits, || anyhow::Ok(0))?;
    let cost = [signet_broker::quota::Cost {
        bytes: 256,
        new_topic: false,
    }];
    let started = Instant::now();
    for _ in 0..iterations {
        let _ = quota.admit(&cost);
    }
    let quota_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    Ok(PolicyCosts {
        rules,
        acl_uncached_ns,
        acl_cached_ns,
        quota_ns,
    })
}

/// CPU time of one schema check of the 1 KiB example order.
#[derive(Debug, Clone)]
pub struct SchemaCosts {
    /// As `application/json`.
    pub json_ns: f64,
    /// The same order as `application/msgpack`.
    pub msgpack_ns: f64,
}

impl std::fmt::Display for SchemaCosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "schema   1 KiB order, 15-field schema: check {:.0} ns as JSON, {:.0} ns as MessagePack",
            self.json_ns, self.msgpack_ns
        )
    }
}

/// Measures [`SchemaCosts`] with the example schema; fails if the order
/// does not pass (the figures would then measure a refusal).
pub fn schema_costs() -> Result<SchemaCosts> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.created.json");
    std::fs::write(&path, signet_admin::dev::EXAMPLE_SCHEMA)?;
    let schema = signet_proto::schema::Schema::load(&path).map_err(anyhow::Error::msg)?;
    let json = order_payload();
    let value: serde_json::Value = serde_json::from_slice(&json)?;
    let msgpack = rmp_serde::to_vec_named(&value)?;
    let iterations = 100_000u32;
    let mut costs = [0f64; 2];
    for (cost, (content_type, payload)) in costs.iter_mut().zip([
        ("application/json", &json),
        ("application/msgpack", &msgpack),
    ]) {
        let started = Instant::now();
        for _ in 0..iterations {
            schema
                .check(content_type, std::hint::black_box(payload))
                .map_err(|v| anyhow::anyhow!("the example order fails its schema: {v}"))?;
        }
        *cost = started.elapsed().as_nanos() as f64 / f64::from(iterations);
    }
    Ok(SchemaCosts {
        json_ns: costs[0],
        msgpack_ns: costs[1],
    })
}

/// What a subscriber's verification of one delivered record costs, on
/// batches of 256 records of 256 bytes delivered in order: the record
/// decoded and its proof walked to the root ([`signet_proto::batch::proof_root`],
/// what every record cost before walks were remembered), and the client's
/// [`signet_client::Verifier`] (decode, walk ended at a remembered
/// step, one Ed25519 check per batch, the key's topics).
#[derive(Debug, Clone)]
pub struct VerifyCosts {
    pub full_walk_ns: f64,
    pub verifier_ns: f64,
}

impl std::fmt::Display for VerifyCosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verify   256 B records, batches of 256: decode + full proof walk {:.0} ns, \
             verifier (remembered walks, one signature per batch) {:.0} ns per record",
            self.full_walk_ns, self.verifier_ns
        )
    }
}

/// Measures [`VerifyCosts`] over 64 signed batches; fails if a record does
/// not verify (the figures would then measure a refusal).
pub fn verify_costs() -> Result<VerifyCosts> {
    use signet_proto::envelope::{CONTENT_TYPE_OCTET, Envelope};
    use signet_proto::{SigningKey, StoredRecord, batch, codec};
    let key = SigningKey::from_seed(&[9; 32]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut records = Vec::new();
    for b in 0..64u64 {
        let envelopes: Vec<Envelope> = (0..256u64)
            .map(|i| Envelope {
                version: 1,
                salt: signet_proto::Salt([(i % 251) as u8; 16]),
                topic: "bench.verify".into(),
                key_id: key.id(),
                seq: b * 256 + i + 1,
                timestamp_ms: 1,
                content_type: CONTENT_TYPE_OCTET.into(),
                headers: vec![],
                encryption: None,
                payload: vec![(i % 256) as u8; 256],
            })
            .collect();
        let signed = batch::sign(&key, &envelopes).context("signing a batch")?;
        for (i, envelope) in envelopes.into_iter().enumerate() {
            let record = StoredRecord {
                received_ms: 0,
                envelope,
                proof: signed.proof(i),
            };
            records.push(codec::encode_body(&record)?);
        }
    }
    let started = Instant::now();
    for bytes in &records {
        let record: StoredRecord = codec::decode(std::hint::black_box(bytes))?;
        batch::proof_root(&record.envelope, &record.proof).context("a proof does not verify")?;
    }
    let full_walk_ns = started.elapsed().as_nanos() as f64 / records.len() as f64;
    let trust = std::collections::HashMap::from([(
        key.id(),
        signet_client::TrustedKey::all_topics(key.public_key().clone()),
    )]);
    let mut verifier = signet_client::Verifier::new(trust);
    let started = Instant::now();
    for bytes in &records {
        verifier
            .verify("bench.verify", std::hint::black_box(bytes))
            .map_err(|r| anyhow::anyhow!("a record does not verify: {}", r.detail))?;
    }
    let verifier_ns = started.elapsed().as_nanos() as f64 / records.len() as f64;
    Ok(VerifyCosts {
        full_walk_ns,
        verifier_ns,
    })
}

/// One principal publishing while another floods at 10× its quota.
#[derive(Debug, Clone)]
pub struct FloodReport {
    pub calm: Report,
    pub flood_quota: u32,
    pub flood_attempted: u64,
    pub flood_accepted: u64,
    pub flood_refused: u64,
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flood    a second principal at 10x its quota of {} msgs/s: {} attempted, {} accepted, {} refused QuotaExceeded",
            self.flood_quota, self.flood_attempted, self.flood_accepted, self.flood_refused
        )?;
        write!(f, "  calm principal meanwhile: {}", self.calm)
    }
}

/// Runs the flood scenario: `calm` publishes `args.messages` with
/// `args.inflight` in flight while `flood` (quota `flood_quota` msgs/s)
/// sends 10× that rate.
pub async fn flood(args: BenchArgs, flood_quota: u32) -> Result<FloodReport> {
    let mut sandbox = Sandbox::new(&[
        PrincipalSpec::new("calm")
            .publish("calm.>")
            .quota(UNLIMITED_QUOTA),
        PrincipalSpec::new("flood")
            .publish("flood.>")
            .quota(&format!("{{ msgs_per_sec = {flood_quota} }}")),
    ])?;
    sandbox.start().await?;
    let calm = Client::connect(sandbox.client_config("calm")?).await?;
    let flooder = Client::connect(sandbox.client_config("flood")?).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let per_ms = (u64::from(flood_quota) * 10).div_ceil(1000).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let (mut attempted, mut acks) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_ms {
                    acks.push(
                        flooder
                            .enqueue(OutgoingMessage::new("flood.x", vec![1u8; 256]))
                            .await?,
                    );
                    attempted += 1;
                }
            }
            let (mut accepted, mut refused) = (0u64, 0u64);
            for ack in acks {
                match ack.await {
                    Ok(_) => accepted += 1,
                    Err(e) if e.code() == Some(signet_client::ErrorCode::QuotaExceeded) => {
                        refused += 1
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            flooder.close().await;
            anyhow::Ok((attempted, accepted, refused))
        })
    };
    let started = Instant::now();
    let hist = publish_load(&calm, "calm.load", &args, None).await?;
    let publish_elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (flood_attempted, flood_accepted, flood_refused) = flood_task.await??;
    calm.close().await;
    sandbox.stop().await;
    Ok(FloodReport {
        calm: Report::publish_only(&args, args.size, publish_elapsed, &hist),
        flood_quota,
        flood_attempted,
        flood_accepted,
        flood_refused,
    })
}

/// A realistic order (15 fields, nested items) padded to about 1 KiB,
/// valid against `schemas/orders.created.json`.
pub fn order_payload() -> Vec<u8> {
    let order = serde_json::json!({
        "id": 123456, "status": "paid", "customer_id": "C00012345", "currency": "EUR",
        "total_cents": 125_990, "created_at": "2026-11-24T10:00:00Z", "channel": "web",
        "priority": 3, "gift": false, "coupon": "WINTER-10",
        "tags": ["web", "returning", "newsletter"],
        "shipping": { "street": "12 rue de la Paix", "city": "Paris", "zip": "75002", "country": "FR" },
        "items": [
            { "sku": "SKU-000001", "qty": 2, "price_cents": 19_990 },
            { "sku": "SKU-000002", "qty": 1, "price_cents": 45_000 },
            { "sku": "SKU-000003", "qty": 3, "price_cents": 13_670 }
        ],
        "metadata": { "campaign": "winter", "referrer": "newsletter-2026-11" },
        "note": "x".repeat(480)
    });
    order.to_string().into_bytes()
}

/// Throughput of 1 KiB JSON orders on a plain topic and on a topic with
/// the example schema (validated on ingest), one after the other.
pub async fn schema_topic(args: BenchArgs) -> Result<(Report, Report)> {
    let mut sandbox = Sandbox::new(&[PrincipalSpec::new("bench")
        .publish("plain.>")
        .publish("orders.>")
        .quota(UNLIMITED_QUOTA)])?;
    let schema = sandbox.path().join("orders.created.json");
    std::fs::write(&schema, signet_admin::dev::EXAMPLE_SCHEMA)?;
    sandbox.set_extra_policy(&format!(
        "[[topic]]\nname = \"orders.created\"\nschema = {:?}\n",
        schema.display().to_string()
    ));
    sandbox.start().await?;
    let client = Client::connect(sandbox.client_config("bench")?).await?;
    let payload = order_payload();
    let mut reports = Vec::new();
    for topic in ["plain.orders", "orders.created"] {
        let template =
            OutgoingMessage::new(topic, payload.clone()).content_type("application/json");
        let started = Instant::now();
        let hist = publish_messages(&client, &template, &args, None).await?;
        reports.push(Report::publish_only(
            &args,
            payload.len(),
            started.elapsed(),
            &hist,
        ));
    }
    client.close().await;
    sandbox.stop().await;
    let schema_report = reports.pop().context("schema report")?;
    let plain_report = reports.pop().context("plain report")?;
    Ok((plain_report, schema_report))
}

/// Throughput of `args.size`-byte messages on a plain topic and on a
/// topic with `retention = { max_msgs = max_msgs }` (publishing past it, so
/// every few commits also delete the oldest records), `rounds` times; each
/// run on a fresh broker (as the publish benchmark), the order alternating
/// per round so neither side inherits the other's compaction backlog more
/// often; returns (plain, retained) reports per round.
pub async fn retention_topic(
    args: BenchArgs,
    max_msgs: u64,
    rounds: usize,
) -> Result<Vec<(Report, Report)>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        let (plain, kept) = if round % 2 == 0 {
            let plain = retention_run(&args, None).await?;
            (plain, retention_run(&args, Some(max_msgs)).await?)
        } else {
            let kept = retention_run(&args, Some(max_msgs)).await?;
            (retention_run(&args, None).await?, kept)
        };
        out.push((plain, kept));
    }
    Ok(out)
}

/// One publish run on a fresh broker, no subscriber, no retention.
pub(crate) async fn single_run(args: &BenchArgs) -> Result<Report> {
    retention_run(args, None).await
}

/// One publish run on a fresh broker, to a topic with
/// `retention = { max_msgs }` when given.
async fn retention_run(args: &BenchArgs, max_msgs: Option<u64>) -> Result<Report> {
    let mut sandbox = Sandbox::new(&[PrincipalSpec::new("bench")
        .publish("bench.>")
        .quota(UNLIMITED_QUOTA)])?;
    if let Some(max_msgs) = max_msgs {
        sandbox.set_extra_policy(&format!(
            "[[topic]]\nname = \"bench.>\"\nretention = {{ max_msgs = {max_msgs} }}\n"
        ));
    }
    sandbox.start().await?;
    let client = Client::connect(sandbox.client_config("bench")?).await?;
    let started = Instant::now();
    let hist = publish_load(&client, "bench.load", args, None).await?;
    let report = Report::publish_only(args, args.size, started.elapsed(), &hist);
    client.close().await;
    sandbox.stop().await;
    Ok(report)
}

/// Throughput of 1 KiB JSON orders encrypted end to end to `recipients`
/// X25519 keys (the publisher seals a content key to each), no subscriber.
pub async fn encrypted_topic(args: BenchArgs, recipients: usize) -> Result<Report> {
    let mut sandbox = Sandbox::new(&[PrincipalSpec::new("bench")
        .publish("payroll.>")
        .quota(UNLIMITED_QUOTA)])?;
    sandbox.set_extra_policy("[[topic]]\nname = \"payroll.>\"\nencrypted = true\n");
    sandbox.start().await?;
    let mut config = sandbox.client_config("bench")?;
    let keys = (0..recipients)
        .map(|_| {
            signet_proto::crypt::DecryptionKey::generate()
                .map(|(_, k)| k.public_key().clone())
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    config.recipients = vec![("payroll.>".into(), keys)];
    let client = Client::connect(config).await?;
    let payload = order_payload();
    let template =
        OutgoingMessage::new("payroll.orders", payload.clone()).content_type("application/json");
    let started = Instant::now();
    let hist = publish_messages(&client, &template, &args, None).await?;
    let report = Report::publish_only(&args, payload.len(), started.elapsed(), &hist);
    client.close().await;
    sandbox.stop().await;
    Ok(report)
}
