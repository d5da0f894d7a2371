//! `cargo bench --bench publish` (or `make bench`): publish throughput and
//! latency against a real in-process broker. Settings from the environment:
//! `SIGNET_BENCH_MESSAGES` (default 200000), `SIGNET_BENCH_SIZE` (256),
//! `SIGNET_BENCH_INFLIGHT` (512), `SIGNET_BENCH_FLOOD_QUOTA` (5000).
//! Runs, in turn: publish with one live subscriber; the policy-check costs
//! at 10 and 1,000 rules; one schema check of the 1 KiB example order; one principal publishing while another floods
//! at 10x its quota.

// The allocator the `signet` binary ships with (see src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use signet_testkit::bench;
use signet_testkit::bench::env_or;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = bench::BenchArgs::from_env(200_000, true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(bench::run(args.clone()))?;
    print!("{report}");
    for rules in [10, 1000] {
        print!("{}", bench::policy_costs(rules)?);
    }
    print!("{}", bench::schema_costs()?);
    print!("{}", bench::verify_costs()?);
    let flood = runtime.block_on(bench::flood(
        bench::BenchArgs {
            subscribe: false,
            ..args.clone()
        },
        env_or("SIGNET_BENCH_FLOOD_QUOTA", 5_000) as u32,
    ))?;
    print!("{flood}");
    let (plain, schema) = runtime.block_on(bench::schema_topic(bench::BenchArgs {
        messages: args.messages / 2,
        size: 0,
        subscribe: false,
        ..args.clone()
    }))?;
    print!("json     plain topic, 1 KiB orders: {plain}");
    print!("json     schema topic (15-field schema), 1 KiB orders: {schema}");
    for recipients in [1, 3] {
        let encrypted = runtime.block_on(bench::encrypted_topic(
            bench::BenchArgs {
                messages: args.messages / 2,
                size: 0,
                subscribe: false,
                ..args.clone()
            },
            recipients,
        ))?;
        print!("json     encrypted topic, {recipients} recipient(s), 1 KiB orders: {encrypted}");
    }
    Ok(())
}
