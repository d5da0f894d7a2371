//! `cargo bench --bench retention`: whether retention costs publishers.
//! Publishes `SIGNET_BENCH_MESSAGES` (default 400000) messages of
//! `SIGNET_BENCH_SIZE` (256) bytes, `SIGNET_BENCH_INFLIGHT` (512) in
//! flight, to a plain topic and to a topic with
//! `retention = { max_msgs = 100000 }` (so past the limit, three quarters
//! of the run, every few commits also delete the oldest records), each run
//! on a fresh broker like the publish benchmark, `SIGNET_BENCH_ROUNDS` (4)
//! rounds with the order alternating, and prints each figure, the ratio
//! per round and the ratio of the medians.

// The allocator the `signet` binary ships with (see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use signet_testkit::bench;
use signet_testkit::bench::env_or;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = bench::BenchArgs::from_env(400_000, false);
    let rounds = env_or("SIGNET_BENCH_ROUNDS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(bench::retention_topic(args, 100_000, rounds))?;
    for (round, (plain, kept)) in results.iter().enumerate() {
        print!("round {round}: no retention:       {plain}");
        print!("round {round}: max_msgs = 100000:  {kept}");
        println!(
            "round {round}: retained / plain = {:.2}",
            kept.msgs_per_sec() / plain.msgs_per_sec()
        );
    }
    let plain = bench::median(results.iter().map(|(p, _)| p.msgs_per_sec()).collect());
    let kept = bench::median(results.iter().map(|(_, k)| k.msgs_per_sec()).collect());
    println!(
        "median: no retention {plain:.0} msgs/s, max_msgs = 100000 {kept:.0} msgs/s, retained / plain = {:.2}",
        kept / plain
    );
    Ok(())
}
