//! `cargo bench --bench cluster`: acked publishes through a three-node
//! cluster on this machine against one broker, in the same run.
//! `SIGNET_BENCH_MESSAGES` (default 200000) messages of
//! `SIGNET_BENCH_SIZE` (256) bytes, `SIGNET_BENCH_INFLIGHT` (512) in
//! flight, `SIGNET_BENCH_ROUNDS` (4) rounds with the order alternating,
//! each run on fresh data dirs; prints each figure, the ratio per round
//! and the ratio of the medians. The three nodes share this machine's
//! cores and disk with each other and with the client.

use signet_testkit::bench::env_or;
use signet_testkit::{bench, bench_cluster};

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = bench::BenchArgs::from_env(200_000, false);
    let rounds = env_or("SIGNET_BENCH_ROUNDS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(bench_cluster::cluster_vs_single(args, rounds))?;
    for (round, (single, cluster)) in results.iter().enumerate() {
        print!("round {round}: one broker:       {single}");
        print!("round {round}: 3-node cluster:   {cluster}");
        println!(
            "round {round}: cluster / one broker = {:.2}",
            cluster.msgs_per_sec() / single.msgs_per_sec()
        );
    }
    let single = bench::median(results.iter().map(|(s, _)| s.msgs_per_sec()).collect());
    let cluster = bench::median(results.iter().map(|(_, c)| c.msgs_per_sec()).collect());
    let p99 = |pick: fn(&(bench::Report, bench::Report)) -> &bench::Report| {
        bench::median(results.iter().map(|r| pick(r).ack_us[1] as f64).collect())
    };
    println!(
        "median: one broker {single:.0} msgs/s (ack p99 {:.0} us), 3-node cluster {cluster:.0} msgs/s (ack p99 {:.0} us), cluster / one broker = {:.2}",
        p99(|r| &r.0),
        p99(|r| &r.1),
        cluster / single
    );
    Ok(())
}
