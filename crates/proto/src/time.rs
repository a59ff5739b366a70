//! UTC times: [`Timestamp`] inside the crates, fixed-width RFC 3339 text
//! (`2026-11-26T13:48:46.123Z`) at the edges (JSON, database columns, files), so text
//! order is time order. No time-zone database needed: fieldsync only ever speaks UTC.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC instant with millisecond precision: milliseconds since the Unix epoch.
/// Written (`Display`, serde) only in the fixed-width form [`format_unix_ms`] makes, so
/// its text sorts as it does and every document that carried the string still reads
/// the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The system clock, now.
    pub fn now() -> Self {
        Self(now_unix_ms())
    }

    pub const fn from_unix_ms(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// This instant moved by `ms` milliseconds (saturating, never panics).
    pub const fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_unix_ms(self.0))
    }
}

/// Text that is not a time in the form [`parse_rfc3339`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a UTC time of the form 2026-11-26T13:48:46.123Z: {0:?}")]
pub struct TimestampError(pub String);

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rfc3339(s)
            .map(Self)
            .ok_or_else(|| TimestampError(s.chars().take(64).collect()))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    format_unix_ms(now_unix_ms())
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_unix_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Parses the fixed-width form [`format_unix_ms`] writes (and the same without
/// milliseconds). `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !(b.len() == 20 || b.len() == 24)
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || *b.last()? != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.len() == 24 {
        if b[19] != b'.' {
            return None;
        }
        num(20..23)?
    } else {
        0
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec) * 1000 + ms)
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_795_700_926_123),
            "2026-11-26T13:48:46.123Z"
        );
        for ms in [0, 951_782_400_000, 1_795_700_926_123, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339(&format_unix_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2026-11-26T13:48:46Z"),
            Some(1_795_700_926_000)
        );
        assert_eq!(parse_rfc3339("2026-13-26T13:48:46Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn timestamp_round_trips_through_text_and_json() {
        for ms in [0, 951_782_400_000, 1_795_700_926_123, 4_102_444_800_999] {
            let ts = Timestamp::from_unix_ms(ms);
            assert_eq!(ts.unix_ms(), ms);
            assert_eq!(ts.to_string(), format_unix_ms(ms));
            assert_eq!(ts.to_string().parse::<Timestamp>(), Ok(ts));
            let json = serde_json::to_string(&ts).unwrap();
            assert_eq!(json, format!("\"{}\"", format_unix_ms(ms)));
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), ts);
        }
        assert_eq!(
            "2026-11-26T13:48:46Z".parse::<Timestamp>(),
            Ok(Timestamp::from_unix_ms(1_795_700_926_000))
        );
        let now = Timestamp::now();
        assert_eq!(now.to_string().parse::<Timestamp>(), Ok(now));
        assert_eq!(now.plus_ms(5).unix_ms(), now.unix_ms() + 5);
    }

    #[test]
    fn timestamp_order_is_text_order() {
        let mut times: Vec<Timestamp> = [
            4_102_444_800_999,
            0,
            1_795_700_926_123,
            1_795_700_926_122,
            951_782_400_000,
            1_795_700_927_000,
        ]
        .into_iter()
        .map(Timestamp::from_unix_ms)
        .collect();
        let mut texts: Vec<String> = times.iter().map(Timestamp::to_string).collect();
        times.sort();
        texts.sort();
        let sorted: Vec<String> = times.iter().map(Timestamp::to_string).collect();
        assert_eq!(sorted, texts);
    }

    #[test]
    fn timestamp_refuses_what_is_not_the_form() {
        for bad in [
            "",
            "yesterday",
            "2026-13-26T13:48:46Z",
            "2026-11-26 13:48:46Z",
            "2026-11-26T13:48:46.123",
            "2026-11-26T13:48:46+00:00",
            "2026-11-26T24:00:00Z",
            "2026-11-26T13:48:46,123Z",
        ] {
            let err = bad.parse::<Timestamp>().unwrap_err();
            assert!(err.to_string().contains("not a UTC time"), "{err}");
        }
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("1795700926123").is_err());
    }
}
