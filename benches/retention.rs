//! `cargo bench --bench retention`: whether retention costs publishers.
//! Publishes `SIGNET_BENCH_MESSAGES` (default 200000) messages of
//! `SIGNET_BENCH_SIZE` (256) bytes, `SIGNET_BENCH_INFLIGHT` (512) in
//! flight, to a plain topic and then to a topic with
//! `retention = { max_msgs = 100000 }` (so past the limit every commit also
//! deletes the oldest records), alternating, `SIGNET_BENCH_ROUNDS` (3)
//! times on one broker, and prints each figure and the ratio.

use signet_testkit::bench;
use signet_testkit::bench::env_or;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = bench::BenchArgs::from_env(200_000, false);
    let rounds = env_or("SIGNET_BENCH_ROUNDS", 3);
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
    Ok(())
}
