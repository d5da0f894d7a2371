//! The `signet` command: run a broker, bootstrap a PKI and keys, publish
//! and subscribe from a shell, benchmark.
#![forbid(unsafe_code)]

// jemalloc instead of glibc's malloc: the broker allocates and frees per
// frame, per envelope and per consumer-group write on several threads, and
// glibc's malloc/free took ~12% of a consumer-group run (BENCHMARKS.md,
// "The allocator"). The benches in benches/ declare the same allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::json;
use signet_admin::{dev, keys, pki};
use signet_broker::Config;
use signet_client::{
    Client, ClientConfig, Error as ClientError, OutgoingMessage, PendingAck, StartAt,
};
use signet_testkit::bench;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::io::AsyncWriteExt;

mod audit;
mod cluster;
mod group;
mod output;

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "Signet: a secure publish/subscribe broker over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authority and certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Generate a key (mode 0600): an Ed25519 signing key (PKCS#8) or an
    /// X25519 encryption key (32 raw bytes); prints its id and public key.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Key kind: ed25519 (signing) or x25519 (encryption).
        #[arg(long, default_value = "ed25519")]
        kind: String,
    },
    /// Run a broker from a policy file (or only check the file with --check).
    Broker {
        /// The policy file.
        #[arg(long, required_unless_present = "check")]
        config: Option<PathBuf>,
        /// Validate a policy file and exit: 0 if valid, 1 with the reason if not.
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        check: Option<PathBuf>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Generate a dev setup where missing (PKI, keys, policy, client files) and run a broker on it.
    Dev {
        /// The dev folder.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// UDP address to listen on (used when the policy is first written).
        #[arg(long, default_value = dev::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Run a cluster of this many nodes in this process instead (files in DIR/cluster, written
        /// by `cluster init` when missing).
        #[arg(long)]
        cluster: Option<u16>,
        /// With --cluster: node i serves clients on PORT+i-1 and its node transport on PORT+100+i-1.
        #[arg(long, default_value_t = signet_admin::cluster::DEFAULT_BASE_PORT)]
        port: u16,
    },
    /// Publish messages; prints one JSON line per ack.
    Pub(PubArgs),
    /// Subscribe; prints one JSON line per verified message.
    Sub(SubArgs),
    /// Join a consumer group; prints one JSON line per delivery, then acks (or naks, terms, leaves) it.
    Consume(group::ConsumeArgs),
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// A cluster of brokers (phase A: the metadata group only; messages are not replicated yet).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Run the publish benchmark against an in-process broker.
    Bench {
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 512)]
        inflight: usize,
        /// Skip the subscriber.
        #[arg(long)]
        no_subscribe: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of one or more audit files, in order (rotated
    /// files oldest first, then the current one); with --broker-key also
    /// the checkpoints the broker signed, and with --checkpoint that the
    /// log still holds a checkpoint kept elsewhere (a cut tail fails).
    Verify {
        /// The broker's identity public key (`ed25519:<base64>`), or a file
        /// holding it (`pki/broker.ed25519.pub`) or the key itself.
        #[arg(long, value_name = "KEY")]
        broker_key: Option<String>,
        /// A checkpoint kept from the `signet.audit.checkpoints` topic: a
        /// file of JSON lines (the newest is used), or the JSON itself.
        #[arg(long, value_name = "FILE", requires = "broker_key")]
        checkpoint: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA and a broker certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Names for the broker certificate (default: localhost, 127.0.0.1).
        #[arg(long = "broker-name")]
        broker_names: Vec<String>,
    },
    /// Issue a client certificate for a principal.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        principal: String,
    },
}

#[derive(Args)]
struct PubArgs {
    /// The client file.
    #[arg(long)]
    client: PathBuf,
    #[arg(long)]
    topic: String,
    /// The payload (taken as given, also when it starts with `-`).
    #[arg(
        long,
        conflicts_with = "file",
        required_unless_present = "file",
        allow_hyphen_values = true
    )]
    data: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// With --file: one message per line, pipelined.
    #[arg(long, requires = "file")]
    lines: bool,
    /// Content type (default: JSON if the payload parses as JSON, else text if UTF-8, else bytes).
    #[arg(long)]
    content_type: Option<String>,
}

#[derive(Args)]
struct SubArgs {
    /// The client file.
    #[arg(long)]
    client: PathBuf,
    /// A topic name, or a pattern (`orders.>`, `*.created`): every
    /// matching topic the client may read, including ones created later.
    #[arg(long)]
    topic: String,
    /// Start at this offset (default: only new messages); a topic only.
    #[arg(long, conflicts_with = "earliest")]
    from_offset: Option<u64>,
    /// Start at the first stored message (of every topic, for a pattern).
    #[arg(long)]
    earliest: bool,
    /// Exit after this many messages (verified or reported bad).
    #[arg(long)]
    count: Option<u64>,
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("signet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("signet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Pki { command } => {
            init_logs("warn");
            pki_command(command)?;
        }
        Command::Keygen { out, kind } => {
            init_logs("warn");
            keygen(&out, &kind)?;
        }
        Command::Broker {
            check: Some(path), ..
        } => {
            init_logs("warn");
            return Ok(check_policy(&path));
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    broker_key,
                    checkpoint,
                },
        } => {
            init_logs("warn");
            return audit::verify_command(&files, broker_key.as_deref(), checkpoint.as_deref());
        }
        Command::Broker { config, .. } => {
            init_logs("info");
            let config = config.ok_or_else(|| anyhow!("--config is required"))?;
            let config = Config::load(&config)?;
            let broker = signet_broker::start(config).await?;
            run_until_signal(broker).await?;
        }
        Command::Dev {
            dir,
            listen,
            cluster: None,
            ..
        } => {
            init_logs("info");
            dev_command(&dir, listen).await?;
        }
        Command::Dev {
            dir,
            cluster: Some(nodes),
            port,
            ..
        } => {
            init_logs("info");
            cluster::dev_cluster(&dir.join("cluster"), nodes, port).await?;
        }
        Command::Pub(args) => {
            init_logs("warn");
            return publish(args).await;
        }
        Command::Sub(args) => {
            init_logs("warn");
            return subscribe(args).await;
        }
        Command::Consume(args) => {
            init_logs("warn");
            return group::consume(args).await;
        }
        Command::Group { command } => {
            init_logs("warn");
            return group::group_command(command).await;
        }
        Command::Cluster { command } => {
            init_logs("warn");
            return cluster::cluster_command(command).await;
        }
        Command::Bench {
            messages,
            size,
            inflight,
            no_subscribe,
        } => {
            init_logs("warn");
            let report = bench::run(bench::BenchArgs {
                messages,
                size,
                inflight,
                subscribe: !no_subscribe,
            })
            .await?;
            print!("{report}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `signet pki init|issue`.
fn pki_command(command: PkiCommand) -> Result<()> {
    match command {
        PkiCommand::Init { dir, broker_names } => {
            pki::init(&dir, &broker_names)?;
            println!("CA: {}", dir.join("ca.crt").display());
            println!("broker certificate: {}", dir.join("broker.crt").display());
            println!(
                "broker identity key: {}",
                pki::identity_key_path(&dir).display()
            );
            println!(
                "broker public key: {}",
                keys::public_of(&pki::identity_key_path(&dir))?
            );
        }
        PkiCommand::Issue { dir, principal } => {
            let files = pki::issue(&dir, &principal)?;
            println!("certificate: {}", files.cert.display());
            println!("key: {}", files.key.display());
        }
    }
    Ok(())
}

/// `signet keygen`: writes the key and prints its id and public key.
fn keygen(out: &std::path::Path, kind: &str) -> Result<()> {
    match kind {
        "ed25519" => {
            let public = keys::generate_ed25519(out)?;
            println!("key_id: {}", public.id().to_hex());
            println!("public_key: {public}");
        }
        "x25519" => {
            let public = keys::generate_x25519(out)?;
            println!("key_id: {}", public.id().to_hex());
            println!("public_key: {public}");
        }
        other => bail!("unknown key kind {other:?} (supported: ed25519, x25519)"),
    }
    Ok(())
}

/// `signet dev`: generates what is missing, starts the broker, prints how to use it.
async fn dev_command(dir: &std::path::Path, listen: SocketAddr) -> Result<()> {
    let metrics: SocketAddr = dev::DEFAULT_METRICS.parse()?;
    let files = dev::ensure(dir, listen, Some(metrics))?;
    let config = Config::load(&files.policy)?;
    let metrics = config.settings.metrics;
    let data_dir = config.settings.data_dir.clone();
    // Start first, so whoever reads the lines below can connect at once.
    let broker = signet_broker::start(config).await?;
    println!("signet dev broker");
    println!(
        "  listening:  {} (UDP, QUIC + mutual TLS)",
        broker.local_addr()
    );
    if let Some(m) = metrics {
        println!("  metrics:    http://{m}/metrics");
    }
    println!("  policy:     {}", files.policy.display());
    println!("  data:       {}", data_dir.display());
    let identity = pki::identity_key_path(&files.dir.join("pki"));
    println!(
        "  broker key: {}  (signs audit checkpoints; trust it to read signet.audit.checkpoints)",
        keys::public_of(&identity)?
    );
    println!(
        "  publisher:  {}  (may publish to orders.>)",
        files.publisher.display()
    );
    println!(
        "  subscriber: {}  (may subscribe to orders.>)",
        files.subscriber.display()
    );
    println!("try:");
    println!(
        "  signet pub --client {} --topic orders.created --data '{{\"id\":1}}'",
        files.publisher.display()
    );
    println!(
        "  signet sub --client {} --topic orders.created --from-offset 0 --count 1",
        files.subscriber.display()
    );
    run_until_signal(broker).await
}

fn check_policy(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let policy = &config.policy;
            println!(
                "ok: {} is valid ({} principals, {} topic settings, sha256 {})",
                path.display(),
                policy.principals.len(),
                policy.topics.len(),
                policy.sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_until_signal(broker: signet_broker::Broker) -> Result<()> {
    wait_for_signal().await?;
    broker.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_signal() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

fn read_payloads(args: &PubArgs) -> Result<Vec<Vec<u8>>> {
    let bytes = match (&args.data, &args.file) {
        (Some(data), _) => return Ok(vec![data.as_bytes().to_vec()]),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => bail!("give --data or --file"),
    };
    if args.lines {
        Ok(bytes
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
            .filter(|line| !line.is_empty())
            .collect())
    } else {
        Ok(vec![bytes])
    }
}

fn error_code_name(e: &ClientError) -> String {
    match (e.code(), e) {
        (Some(code), _) => code.to_string(),
        (None, ClientError::Config(_)) => "ConfigError".to_string(),
        (None, _) => "ConnectionError".to_string(),
    }
}

async fn publish(args: PubArgs) -> Result<ExitCode> {
    let payloads = read_payloads(&args)?;
    let config = ClientConfig::load(&args.client)?;
    let client = Client::connect(config).await?;
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::channel::<(usize, PendingAck)>(4096);
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut failures: Vec<String> = Vec::new();
        while let Some((line, ack)) = acks_rx.recv().await {
            let text = match ack.await {
                Ok(offset) => json!({ "offset": offset }),
                Err(e) => {
                    let code = error_code_name(&e);
                    let v = json!({ "line": line, "error": code, "detail": e.to_string() });
                    failures.push(code);
                    v
                }
            };
            stdout.write_all(format!("{text}\n").as_bytes()).await?;
            stdout.flush().await?;
        }
        anyhow::Ok(failures)
    });
    for (i, payload) in payloads.into_iter().enumerate() {
        let content_type = args
            .content_type
            .clone()
            .unwrap_or_else(|| output::infer_content_type(&payload).to_owned());
        let message = OutgoingMessage::new(args.topic.clone(), payload).content_type(content_type);
        let ack = client.enqueue(message).await?;
        if acks_tx.send((i + 1, ack)).await.is_err() {
            break;
        }
    }
    drop(acks_tx);
    let failures = printer.await.map_err(|e| anyhow!(e))??;
    client.close().await;
    if let Some(first) = failures.first() {
        eprintln!(
            "signet: {} message(s) rejected; first error: {first}",
            failures.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn subscribe(args: SubArgs) -> Result<ExitCode> {
    let config = ClientConfig::load(&args.client)?;
    let client = Client::connect(config).await?;
    let start = match (args.earliest, args.from_offset) {
        (true, _) => StartAt::Earliest,
        (false, Some(offset)) => StartAt::Offset(offset),
        (false, None) => StartAt::Latest,
    };
    let mut messages = client.subscribe(&args.topic, start).await?;
    let mut seen = 0u64;
    let mut bad = 0u64;
    let mut stdout = tokio::io::stdout();
    while args.count.is_none_or(|c| seen < c) {
        let Some(item) = messages.next().await else {
            break;
        };
        if let Err(ClientError::Gap {
            topic,
            from,
            to,
            reason,
        }) = &item
        {
            // Not a message: printed, not counted.
            let gap =
                json!({ "gap": { "topic": topic, "from": from, "to": to, "reason": reason } });
            stdout.write_all(format!("{gap}\n").as_bytes()).await?;
            stdout.flush().await?;
            continue;
        }
        seen += 1;
        match item {
            Ok(m) => {
                let mut line = output::message_json(&m);
                if signet_client::dead_letter::is_dead_letter(&m) {
                    match group::dead_letter_json(&client, &m) {
                        Ok(dead) => line["dead_letter"] = dead,
                        Err(e) => {
                            bad += 1;
                            eprintln!(
                                "{}",
                                json!({ "offset": m.offset, "error": error_code_name(&e), "detail": e.to_string() })
                            );
                            continue;
                        }
                    }
                }
                stdout.write_all(format!("{line}\n").as_bytes()).await?;
                stdout.flush().await?;
            }
            Err(ClientError::Verify {
                offset,
                code,
                detail,
            }) => {
                bad += 1;
                eprintln!(
                    "{}",
                    json!({ "offset": offset, "error": code.to_string(), "detail": detail })
                );
            }
            Err(e) => {
                eprintln!(
                    "{}",
                    json!({ "error": error_code_name(&e), "detail": e.to_string() })
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    drop(messages);
    client.close().await;
    Ok(if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
