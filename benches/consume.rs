//! `cargo bench --bench consume`: consumer-group throughput and latency
//! against a real in-process broker: 256-byte messages (`SIGNET_BENCH_SIZE`),
//! `SIGNET_BENCH_MESSAGES` of them (default 100000), 4 members
//! (`SIGNET_BENCH_MEMBERS`), each delivery acked; prints acked deliveries
//! per second and p50/p99 from publish to the consumer's ack on disk.

// The allocator the `signet` binary ships with (see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use signet_testkit::bench::env_or;
use signet_testkit::{bench, bench_consume};

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = bench::BenchArgs::from_env(100_000, false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(bench_consume::consume(
        args,
        env_or("SIGNET_BENCH_MEMBERS", 4),
    ))?;
    print!("{report}");
    Ok(())
}
