//! `cargo bench --bench cluster`: acked publishes through a three-node
//! cluster on this machine against one broker, in the same run: the
//! cluster once on one topic (one data group, one leader) and once on a
//! topic of each of its three data groups in turn (three leaders).
//! `SIGNET_BENCH_MESSAGES` (default 200000) messages of
//! `SIGNET_BENCH_SIZE` (256) bytes, `SIGNET_BENCH_INFLIGHT` (512) in
//! flight, `SIGNET_BENCH_ROUNDS` (4) rounds with the order alternating,
//! each run on fresh data dirs; prints each figure, the ratio per round
//! and the ratio of the medians. The three nodes share this machine's
//! cores and disk with each other and with the client.

// The allocator the `signet` binary ships with (see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    for (round, r) in results.iter().enumerate() {
        print!("round {round}: one broker:                 {}", r.single);
        print!("round {round}: 3-node cluster, 1 group:    {}", r.cluster);
        print!("round {round}: 3-node cluster, 3 groups:   {}", r.spread);
        println!(
            "round {round}: cluster / one broker = {:.2} (1 group), {:.2} (3 groups)",
            r.cluster.msgs_per_sec() / r.single.msgs_per_sec(),
            r.spread.msgs_per_sec() / r.single.msgs_per_sec()
        );
    }
    let median = |pick: fn(&bench_cluster::Round) -> &bench::Report| {
        let rate = bench::median(results.iter().map(|r| pick(r).msgs_per_sec()).collect());
        let p99 = bench::median(results.iter().map(|r| pick(r).ack_us[1] as f64).collect());
        (rate, p99)
    };
    let (single, single_p99) = median(|r| &r.single);
    let (cluster, cluster_p99) = median(|r| &r.cluster);
    let (spread, spread_p99) = median(|r| &r.spread);
    println!(
        "median: one broker {single:.0} msgs/s (ack p99 {single_p99:.0} us), 3-node cluster {cluster:.0} msgs/s (ack p99 {cluster_p99:.0} us) on 1 group, {spread:.0} msgs/s (ack p99 {spread_p99:.0} us) on 3 groups; cluster / one broker = {:.2} (1 group), {:.2} (3 groups)",
        cluster / single,
        spread / single
    );
    Ok(())
}
