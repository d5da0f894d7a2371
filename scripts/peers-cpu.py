#!/usr/bin/env python3
"""CPU time per run of `benches/peers.rs`, per system.

Runs the peers benchmark binary (as `make bench-peers` builds it) and polls,
every 20 ms, the CPU time (user + system, from /proc) of the benchmark
process (Signet's broker and client run in it; so does the NATS client) and
of the `nats-server` processes it starts. Each run's line on stderr marks
its end, so the CPU spent between two lines is that run's: its messages,
plus its set-up (a Signet run starts a fresh broker with its own PKI; a
JetStream run creates a stream).

    cargo bench --bench peers --no-run   # prints the binary's path
    python3 scripts/peers-cpu.py target/release/deps/peers-<hash> [reps]

Prints each run's line with its wall time, the benchmark process's CPU and
the NATS servers' CPU, then the benchmark's own table (whose header gives
the messages per run).
"""
import os
import subprocess
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return None


def children(pid):
    """The processes whose parent is `pid`, from /proc (no process is
    started for it: this runs beside the benchmark)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    env = dict(os.environ, SIGNET_BENCH_REPS=sys.argv[2] if len(sys.argv) > 2 else "1")
    bench = subprocess.Popen([sys.argv[1], "--bench"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    lines = []

    def read():
        for line in bench.stderr:
            lines.append((time.time(), line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    kids, looked = [], 0.0
    while bench.poll() is None:
        # The servers start once, early: look for them once a second.
        if time.time() - looked >= 1.0:
            kids, looked = children(bench.pid), time.time()
        samples.append((time.time(), cpu_seconds(bench.pid), {k: cpu_seconds(k) for k in kids}))
        time.sleep(0.02)
    table = bench.stdout.read()
    reader.join(timeout=5)
    if not samples:
        sys.exit(f"the benchmark ended at once:\n{table}")

    def before(t):
        found = samples[0]
        for sample in samples:
            if sample[0] <= t and sample[1] is not None:
                found = sample
        return found

    last = samples[0]
    for t, line in lines:
        if not line.startswith("rep "):
            continue
        now = before(t)
        own = now[1] - last[1]
        servers = sum((now[2][k] or 0) - (last[2][k] or 0)
                      for k in now[2] if k in last[2] and now[2][k] is not None)
        print(f"{line[:80]:80s} wall {now[0] - last[0]:5.2f} s  bench {own:5.2f} s  "
              f"nats-server {servers:5.2f} s")
        last = now
    print(table)


if __name__ == "__main__":
    main()
