//! `cargo bench --bench publish` (or `make bench`): publish throughput and
//! latency against a real in-process broker. Settings from the environment:
//! `SIGNET_BENCH_MESSAGES` (default 200000), `SIGNET_BENCH_SIZE` (256),
//! `SIGNET_BENCH_INFLIGHT` (512).

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = signet::bench::BenchArgs {
        messages: env_or("SIGNET_BENCH_MESSAGES", 200_000),
        size: env_or("SIGNET_BENCH_SIZE", 256),
        inflight: env_or("SIGNET_BENCH_INFLIGHT", 512),
        subscribe: true,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(signet::bench::run(args))?;
    print!("{report}");
    Ok(())
}
