//! The broker as a separate process (`signet broker`), for tests that must
//! watch it from outside: its memory, its logs, a SIGKILL.

use super::{Sandbox, within};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

/// The port in a log line like `broker listening local_addr=127.0.0.1:PORT`
/// (ANSI colours around the field are skipped).
fn listening_port(line: &str) -> Option<u16> {
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Runs `signet broker` on the sandbox's policy with `RUST_LOG=filter`,
/// points the sandbox's clients at it, and returns the process and a task
/// collecting its log lines.
pub async fn spawn_broker(sandbox: &mut Sandbox, filter: &str) -> (Child, JoinHandle<Vec<String>>) {
    sandbox.write_policy().unwrap();
    let mut broker = Command::new(SIGNET)
        .args([
            "broker",
            "--config",
            sandbox.policy_path().to_str().unwrap(),
        ])
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(broker.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    let port = loop {
        let line = within(log.next_line())
            .await
            .unwrap()
            .expect("broker starts");
        let port = line
            .contains("broker listening")
            .then(|| listening_port(&line));
        lines.push(line);
        if let Some(port) = port {
            break port.expect("port in the log line");
        }
    };
    let collector = tokio::spawn(async move {
        while let Ok(Some(line)) = log.next_line().await {
            lines.push(line);
        }
        lines
    });
    sandbox.set_addr(([127, 0, 0, 1], port).into());
    (broker, collector)
}

/// What a `signet` command printed and how it ended.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Whether it exited with success.
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs the `signet` binary with `args` to its end.
pub async fn signet(args: &[&str]) -> Run {
    let out = within(Command::new(SIGNET).args(args).kill_on_drop(true).output())
        .await
        .expect("signet runs");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resets the process's peak resident size (`VmHWM`) to its current
/// resident size; returns false where the kernel does not allow it.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
