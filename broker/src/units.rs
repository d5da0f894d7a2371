//! Durations and sizes as people write them in the policy file:
//! `"500ms"`, `"30s"`, `"15m"`, `"12h"`, `"7d"`; `"50000"`, `"64KiB"`,
//! `"10GiB"`, `"1GB"`. Plain integers (TOML numbers) are bytes or
//! milliseconds. Everything else is refused with what was expected.

use std::time::Duration;

/// A duration like `"30s"` or `"7d"` (units ms, s, m, h, d; a whole
/// number, at least 1 ms).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let ms = parse_duration_ms(text)?;
    if ms == 0 {
        return Err(format!("{:?}: must be at least 1ms", text.trim()));
    }
    Ok(Duration::from_millis(ms))
}

/// A duration like `"250ms"`, `"0s"` or `"7d"` in milliseconds (units ms,
/// s, m, h, d; a whole number; zero allowed).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: a unit is needed (ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number before the unit"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(ms_per)
        .ok_or_else(|| format!("{text:?}: must fit in 64 bits of ms"))
}

/// A size like `"10GiB"`, `"500MB"` or `"50000"` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number of bytes"))?;
    let per: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "",
            "7",
            "7w",
            "d",
            "0s",
            "-1s",
            "1.5s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("50000"), Ok(50_000));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("1 MB"), Ok(1_000_000));
        for bad in ["", "GiB", "1.5GiB", "10gib", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
