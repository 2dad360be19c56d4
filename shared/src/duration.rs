//! Durations in settings: a number with a unit (`500ms`, `10s`, `2m`, `1h`, `90d`, `1m30s`), or a
//! bare number in the setting's own unit, which is what its name ends with (`*_SECS`: seconds,
//! `*_MS`: milliseconds), so that every value written before units were accepted still means
//! what it meant.
//!
//! Used as clap value parsers ([`seconds`], [`milliseconds`]); the config-file loader
//! accepts both a TOML integer and a string for these settings.

use std::time::Duration;

/// A duration whose bare number means seconds (`10` = `10s`).
pub fn seconds(text: &str) -> Result<Duration, String> {
    parse(text, Duration::from_secs(1))
}

/// A duration whose bare number means milliseconds (`500` = `500ms`).
pub fn milliseconds(text: &str) -> Result<Duration, String> {
    parse(text, Duration::from_millis(1))
}

/// Units, longest spelling first so that `ms` is not read as `m` followed by `s`.
const UNITS: &[(&str, Duration)] = &[
    ("ms", Duration::from_millis(1)),
    ("s", Duration::from_secs(1)),
    ("m", Duration::from_secs(60)),
    ("h", Duration::from_secs(3600)),
    ("d", Duration::from_secs(86400)),
];

fn parse(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = || {
        format!(
            "{text:?} is not a duration: write a whole number with a unit (ms, s, m, h, d), \
             e.g. \"500ms\", \"10s\", \"2m\", \"1m30s\"; a bare number means {}",
            if bare_unit == Duration::from_secs(1) {
                "seconds"
            } else {
                "milliseconds"
            }
        )
    };
    if trimmed.is_empty() {
        return Err(invalid());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let number: u32 = trimmed.parse().map_err(|_| invalid())?;
        return bare_unit.checked_mul(number).ok_or_else(invalid);
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u32 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, size) = UNITS
            .iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(invalid)?;
        rest = &rest[unit.len()..];
        total = size
            .checked_mul(number)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

/// `1m30s`, `500ms`, `2h`: the shortest way to write `duration` that [`seconds`] and
/// [`milliseconds`] read back, for messages and `--help`.
pub fn display(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let mut millis = duration.as_millis();
    let mut out = String::new();
    for (unit, size) in UNITS.iter().rev() {
        let size = size.as_millis();
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_numbers() {
        assert_eq!(seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(seconds("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(seconds(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(seconds("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(seconds("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(seconds("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert_eq!(milliseconds("2000"), Ok(Duration::from_secs(2)));
        assert_eq!(milliseconds("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(milliseconds("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn anything_else_is_refused_with_examples() {
        for bad in [
            "",
            "s",
            "10x",
            "1.5s",
            "-1",
            "10 s",
            "ten",
            "5ms5",
            "99999999999",
        ] {
            let error = seconds(bad).expect_err(bad);
            assert!(error.contains("\"10s\""), "{bad}: {error}");
        }
        assert!(milliseconds("x").unwrap_err().contains("milliseconds"));
    }

    #[test]
    fn display_reads_back() {
        for text in [
            "500ms",
            "10s",
            "2m",
            "1m30s",
            "1h",
            "1h1m1s1ms",
            "90d",
            "1d12h",
        ] {
            let duration = seconds(text).unwrap();
            assert_eq!(display(duration), text);
            assert_eq!(seconds(&display(duration)), Ok(duration));
        }
        assert_eq!(display(Duration::ZERO), "0s");
    }
}
