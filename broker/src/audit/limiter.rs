//! Rate limits on peer events, applied before the queue (so a flood costs
//! a lock and a map lookup and never fills the queue): per one-second
//! window, at most `per_sec` records of one kind, principal and remote IP
//! are written; the rest are counted, with the remote addresses they came
//! from, and summarized in one `suppressed` record when the window ends.

use super::event::{Event, RateKey};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Length of one rate-limit window.
pub(super) const WINDOW: Duration = Duration::from_secs(1);

/// Distinct remote addresses (`ip:port`) a summary lists; the rest are counted.
pub(super) const REMOTES_KEPT: usize = 8;

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
    remotes: BTreeSet<String>,
    remotes_more: u64,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            written: 0,
            suppressed: 0,
            remotes: BTreeSet::new(),
            remotes_more: 0,
        }
    }
}

/// The windows of every key seen in the last second, bounded.
#[derive(Debug)]
pub(super) struct Limiter {
    per_sec: u32,
    keys_max: usize,
    windows: HashMap<RateKey, Window>,
    /// Summaries of windows that ended while an event replaced them.
    finished: Vec<Event>,
}

fn summary(key: &RateKey, w: &Window, now: Instant) -> Event {
    let remotes: Vec<&String> = w.remotes.iter().collect();
    let mut event = Event::new(
        "suppressed",
        json!({
            "of": key.kind,
            "principal": key.principal,
            "remote": key.ip.map(|ip| ip.to_string()),
            "overflow": key.overflow.then_some(true),
            "count": w.suppressed,
            "remotes": remotes,
            "remotes_more": (w.remotes_more > 0).then_some(w.remotes_more),
            "window_ms": now.saturating_duration_since(w.started).as_millis() as u64,
        }),
    );
    event
        .fields
        .retain(|name, value| !(value.is_null() && (name == "overflow" || name == "remotes_more")));
    event
}

impl Limiter {
    /// At most `per_sec` records per key and second, at most `keys_max` keys.
    pub fn new(per_sec: u32, keys_max: usize) -> Limiter {
        Limiter {
            per_sec,
            keys_max,
            windows: HashMap::new(),
            finished: Vec::new(),
        }
    }

    /// Whether `event` is written; when not, it is counted in its window.
    pub fn admit(&mut self, event: &Event, now: Instant) -> bool {
        let mut key = event.rate_key();
        if !self.windows.contains_key(&key) && self.windows.len() >= self.keys_max {
            key = RateKey {
                kind: key.kind,
                principal: None,
                ip: None,
                overflow: true,
            };
        }
        let window = self
            .windows
            .entry(key.clone())
            .or_insert_with(|| Window::new(now));
        if now.saturating_duration_since(window.started) >= WINDOW {
            let ended = std::mem::replace(window, Window::new(now));
            if ended.suppressed > 0 {
                self.finished.push(summary(&key, &ended, now));
            }
        }
        if window.written < self.per_sec {
            window.written += 1;
            return true;
        }
        window.suppressed += 1;
        if let Some(remote) = event.remote() {
            if window.remotes.len() < REMOTES_KEPT || window.remotes.contains(remote) {
                window.remotes.insert(remote.to_owned());
            } else {
                window.remotes_more += 1;
            }
        }
        false
    }

    /// Summaries of every window that ended (all of them when `all`), and
    /// the ended windows forgotten.
    pub fn ended(&mut self, now: Instant, all: bool) -> Vec<Event> {
        let mut out = std::mem::take(&mut self.finished);
        let ended: Vec<RateKey> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now.saturating_duration_since(w.started) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        let mut summaries: Vec<(RateKey, Event)> = Vec::new();
        for key in ended {
            if let Some(w) = self.windows.remove(&key)
                && w.suppressed > 0
            {
                summaries.push((key.clone(), summary(&key, &w, now)));
            }
        }
        summaries.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(summaries.into_iter().map(|(_, e)| e));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(principal: &str, remote: &str) -> Event {
        Event::new(
            "publish_denied",
            json!({ "principal": principal, "remote": remote }),
        )
    }

    #[test]
    fn each_principal_and_address_has_its_own_budget() {
        let mut limiter = Limiter::new(2, 100);
        let now = Instant::now();
        let admitted = (0..10)
            .filter(|i| limiter.admit(&denied("bob", &format!("10.0.0.1:{i}")), now))
            .count();
        assert_eq!(admitted, 2);
        assert!(limiter.admit(&denied("alice", "10.0.0.1:1"), now));
        assert!(limiter.admit(&denied("bob", "10.0.0.2:1"), now));
        let summaries = limiter.ended(now + WINDOW, false);
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0].fields;
        assert_eq!(s["of"], "publish_denied");
        assert_eq!(s["principal"], "bob");
        assert_eq!(s["remote"], "10.0.0.1");
        assert_eq!(s["count"], 8);
        let remotes = s["remotes"].as_array().unwrap();
        assert_eq!(remotes.len(), REMOTES_KEPT);
        assert!(
            remotes
                .iter()
                .all(|r| r.as_str().unwrap().starts_with("10.0.0.1:"))
        );
        // A new window, a new budget.
        assert!(limiter.admit(&denied("bob", "10.0.0.1:1"), now + WINDOW));
    }

    #[test]
    fn a_full_table_shares_one_window_per_kind_instead_of_growing() {
        let mut limiter = Limiter::new(1, 16);
        let now = Instant::now();
        for i in 0..1000 {
            limiter.admit(&denied(&format!("p{i}"), "10.0.0.1:1"), now);
        }
        assert!(limiter.windows.len() <= 17);
        let summaries = limiter.ended(now, true);
        let overflow = summaries
            .iter()
            .find(|s| s.fields["overflow"] == true)
            .expect("an overflow summary");
        assert_eq!(overflow.fields["count"], 1000 - 16 - 1);
    }

    #[test]
    fn a_window_replaced_by_a_later_event_still_gets_its_summary() {
        let mut limiter = Limiter::new(1, 16);
        let now = Instant::now();
        limiter.admit(&denied("bob", "10.0.0.1:1"), now);
        limiter.admit(&denied("bob", "10.0.0.1:1"), now);
        assert!(limiter.admit(&denied("bob", "10.0.0.1:1"), now + WINDOW));
        let summaries = limiter.ended(now + WINDOW, false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].fields["count"], 1);
    }
}
