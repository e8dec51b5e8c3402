//! Wire encodings the simulator shares with the real API: UUIDs, timestamps and paging cursors.
//!
//! Internally ids are `u128` and times are microseconds since the Unix epoch (`i64`): both are
//! `Copy`, and their natural order equals the order of their wire strings (lowercase UUIDs sort
//! like their numbers), so keyset paging can use them directly.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::variance::Precision;

/// A keyset position: (timestamp in µs, id). Newest-first lists are this order reversed.
pub(crate) type Key = (i64, u128);

/// A random version-4 UUID drawn from `rng` (so ids are deterministic for a seed).
pub(crate) fn new_uuid(rng: &mut impl Rng) -> u128 {
    let raw: u128 = rng.random();
    // Version nibble (bits 76..80) = 4, variant bits (62..64) = 0b10, as RFC 9562 requires.
    (raw & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// A UUID-shaped id derived from another one, for objects we do not store (events).
pub(crate) fn derived_uuid(base: u128, salt: u64) -> u128 {
    // SplitMix64 on both halves: cheap, deterministic, well mixed.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let hi = mix((base >> 64) as u64 ^ salt);
    let lo = mix(base as u64 ^ salt.rotate_left(17));
    let raw = (u128::from(hi) << 64) | u128::from(lo);
    (raw & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// Parses a canonical 8-4-4-4-12 UUID (either case), or the same 32 hex digits without dashes
/// (the form the `non_uuid_ids` drift fault writes); `None` for anything else.
pub(crate) fn parse_uuid(s: &str) -> Option<u128> {
    let bytes = s.as_bytes();
    if bytes.len() == 32 {
        return u128::from_str_radix(s, 16)
            .ok()
            .filter(|_| bytes.iter().all(u8::is_ascii_hexdigit));
    }
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        let digit = char::from(b).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Formats an id as a lowercase UUID string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Uid(pub u128);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            x >> 96,
            (x >> 80) & 0xFFFF,
            (x >> 64) & 0xFFFF,
            (x >> 48) & 0xFFFF,
            x & 0xFFFF_FFFF_FFFF
        )
    }
}

impl Serialize for Uid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The current time of a clock reading, truncated to the API's microsecond precision.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    let us = t.unix_timestamp_nanos().div_euclid(1000);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

/// The `OffsetDateTime` for a microsecond timestamp (the epoch if out of range).
pub(crate) fn datetime(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Parses an RFC 3339 timestamp from a query string or cursor into microseconds.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339).ok().map(micros)
}

/// How a timestamp is written: its precision, and the offset it is shown in (`None`: `Z`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimeFormat {
    pub precision: Precision,
    pub offset: Option<UtcOffset>,
}

impl TimeFormat {
    /// The same format with another precision.
    pub fn with_precision(self, precision: Precision) -> TimeFormat {
        TimeFormat { precision, ..self }
    }

    /// `us` in this format.
    pub fn ts(self, us: i64) -> Ts {
        Ts {
            us,
            format: self,
            year: None,
        }
    }
}

/// `t` with its year replaced, clamped to what the `time` crate can hold; 29 February becomes
/// the 28th in a common year.
fn with_year(t: OffsetDateTime, year: i32) -> OffsetDateTime {
    let year = year.clamp(-9999, 9999);
    t.replace_year(year)
        .or_else(|_| t.replace_day(28).and_then(|t| t.replace_year(year)))
        .unwrap_or(t)
}

/// Writes `us` as RFC 3339 in `format` (truncated, then shown in its offset), with its year
/// replaced by `year` if set. `fixed` forces the fraction of microsecond precision even when
/// it is zero (the cursor form).
fn write_time(
    f: &mut impl fmt::Write,
    us: i64,
    format: TimeFormat,
    year: Option<i32>,
    fixed: bool,
) -> fmt::Result {
    let utc = datetime(format.precision.truncate_us(us));
    // Far from the epoch an offset can push the local date out of range: then stay in UTC.
    let (t, offset) = match format
        .offset
        .and_then(|o| utc.checked_to_offset(o).map(|t| (t, o)))
    {
        Some((t, o)) => (t, Some(o)),
        None => (utc, None),
    };
    let t = year.map_or(t, |y| with_year(t, y));
    write!(
        f,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )?;
    let frac = t.microsecond();
    match format.precision {
        Precision::Micros if fixed || frac != 0 => write!(f, ".{frac:06}")?,
        Precision::Micros | Precision::Seconds => {}
        Precision::Millis => write!(f, ".{:03}", frac / 1000)?,
    }
    match offset {
        None => f.write_char('Z'),
        Some(o) => {
            let (h, m, _) = o.as_hms();
            let sign = if o.is_negative() { '-' } else { '+' };
            write!(f, "{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
        }
    }
}

/// A timestamp as the API prints it in bodies. In the default format: six fractional digits,
/// or none when the microseconds are zero (docs/kapso-api.md §7: both `…Z` and `….000000Z` occur).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ts {
    pub us: i64,
    pub format: TimeFormat,
    /// A year shown instead of the true one (the bad-rows variance).
    pub year: Option<i32>,
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_time(f, self.us, self.format, self.year, false)
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which column a cursor is keyed on (docs/kapso-api.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CursorColumn {
    /// Execution lists: `["created_at","id"]` (the value is the row's `started_at`).
    CreatedAt,
    /// The conversation list: `["last_active_at","id"]`.
    LastActiveAt,
}

impl CursorColumn {
    fn name(self) -> &'static str {
        match self {
            CursorColumn::CreatedAt => "created_at",
            CursorColumn::LastActiveAt => "last_active_at",
        }
    }
}

/// `us` as RFC 3339 in UTC with exactly six fractional digits (`2026-05-15T13:05:00.250000Z`),
/// the form of webhook `occurred_at` values.
pub(crate) fn rfc3339_micros(us: i64) -> String {
    let mut s = String::with_capacity(27);
    // Writing into a String cannot fail.
    let _ = write_time(&mut s, us, TimeFormat::default(), None, true);
    s
}

/// Encodes a keyset position exactly like the documented examples: standard base64 (with
/// padding) of `{"values":["<µs timestamp>","<id>"],"columns":["<column>","id"]}`. In another
/// `format` the timestamp is truncated and written in it; decoding gives the truncated value,
/// which the server then compares with full-precision keys, as a real keyset query would.
pub(crate) fn encode_cursor(column: CursorColumn, key: Key, format: TimeFormat) -> String {
    let mut ts = String::with_capacity(32);
    // Writing into a String cannot fail.
    let _ = write_time(&mut ts, key.0, format, None, true);
    let json = format!(
        r#"{{"values":["{ts}","{}"],"columns":["{}","id"]}}"#,
        Uid(key.1),
        column.name()
    );
    STANDARD.encode(json)
}

/// Decodes a cursor minted by [`encode_cursor`] for the same column; `None` if it is not one.
pub(crate) fn decode_cursor(column: CursorColumn, cursor: &str) -> Option<Key> {
    #[derive(Deserialize)]
    struct Raw {
        values: Vec<String>,
        columns: Vec<String>,
    }
    let bytes = STANDARD.decode(cursor).ok()?;
    let raw: Raw = serde_json::from_slice(&bytes).ok()?;
    if raw.columns.len() != 2 || raw.columns[0] != column.name() || raw.columns[1] != "id" {
        return None;
    }
    match raw.values.as_slice() {
        [ts, id] => Some((parse_time(ts)?, parse_uuid(id)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn uuids_round_trip_and_look_like_v4() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let id = new_uuid(&mut rng);
            let s = Uid(id).to_string();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
            assert_eq!(parse_uuid(&s), Some(id));
        }
        assert_eq!(parse_uuid("not-a-uuid"), None);
        let dashless = Uid(new_uuid(&mut rng)).to_string().replace('-', "");
        assert_eq!(
            parse_uuid(&dashless).map(|i| Uid(i).to_string().replace('-', "")),
            Some(dashless)
        );
        assert_eq!(parse_uuid("+0000000000000000000000000000000"), None);
        assert_eq!(parse_uuid("550e8400-e29b-41d4-a716-44665544000g"), None);
    }

    #[test]
    fn uuid_string_order_matches_numeric_order() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut ids: Vec<u128> = (0..50).map(|_| new_uuid(&mut rng)).collect();
        ids.sort_unstable();
        let strings: Vec<String> = ids.iter().map(|&i| Uid(i).to_string()).collect();
        let mut sorted = strings.clone();
        sorted.sort();
        assert_eq!(strings, sorted);
    }

    #[test]
    fn timestamps_print_fraction_only_when_nonzero() {
        let whole = parse_time("2026-05-15T13:05:00Z").expect("valid");
        let utc = TimeFormat::default();
        assert_eq!(utc.ts(whole).to_string(), "2026-05-15T13:05:00Z");
        assert_eq!(
            utc.ts(whole + 123_456).to_string(),
            "2026-05-15T13:05:00.123456Z"
        );
        assert_eq!(utc.ts(whole + 5).to_string(), "2026-05-15T13:05:00.000005Z");
        assert_eq!(parse_time("2026-05-15T15:05:00+02:00"), Some(whole));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn formats_truncate_and_shift_the_same_instant() {
        let t = parse_time("2026-05-15T13:05:07.123456Z").expect("valid");
        let f = |precision, offset| TimeFormat { precision, offset }.ts(t).to_string();
        let ist = UtcOffset::from_hms(5, 30, 0).ok();
        let brt = UtcOffset::from_hms(-3, 0, 0).ok();
        assert_eq!(f(Precision::Seconds, None), "2026-05-15T13:05:07Z");
        assert_eq!(f(Precision::Millis, None), "2026-05-15T13:05:07.123Z");
        assert_eq!(
            f(Precision::Micros, ist),
            "2026-05-15T18:35:07.123456+05:30"
        );
        assert_eq!(f(Precision::Seconds, brt), "2026-05-15T10:05:07-03:00");
        assert_eq!(
            f(Precision::Micros, Some(UtcOffset::UTC)),
            "2026-05-15T13:05:07.123456+00:00"
        );
        assert_eq!(parse_time(&f(Precision::Micros, ist)), Some(t));
        // Whole milliseconds still print three digits; whole microseconds none (as before).
        let whole = parse_time("2026-05-15T13:05:07Z").expect("valid");
        let ms = TimeFormat::default().with_precision(Precision::Millis);
        assert_eq!(ms.ts(whole).to_string(), "2026-05-15T13:05:07.000Z");
        // A replaced year keeps the rest; 29 February falls back to the 28th.
        let leap = parse_time("2024-02-29T23:00:00Z").expect("valid");
        let mut ts = TimeFormat {
            precision: Precision::Micros,
            offset: ist,
        }
        .ts(leap);
        ts.year = Some(9999);
        assert_eq!(ts.to_string(), "9999-03-01T04:30:00+05:30");
        ts.format.offset = None;
        assert_eq!(ts.to_string(), "9999-02-28T23:00:00Z");
        // The cursor form keeps its fixed fraction per precision.
        for (precision, value) in [
            (Precision::Micros, "2026-05-15T13:05:07.123456Z"),
            (Precision::Millis, "2026-05-15T13:05:07.123Z"),
            (Precision::Seconds, "2026-05-15T13:05:07Z"),
        ] {
            let format = TimeFormat {
                precision,
                offset: None,
            };
            let cursor = encode_cursor(CursorColumn::CreatedAt, (t, 9), format);
            let raw = String::from_utf8(STANDARD.decode(&cursor).expect("base64")).expect("utf-8");
            assert!(raw.contains(value), "{raw}");
            let decoded = decode_cursor(CursorColumn::CreatedAt, &cursor).expect("decodes");
            assert_eq!(decoded, (precision.truncate_us(t), 9));
        }
    }

    #[test]
    fn cursor_matches_documented_example() {
        // The `before` cursor of the listConversationFlowExecutions example (docs/kapso-api.md §3).
        let documented = "eyJ2YWx1ZXMiOlsiMjAyNi0wNS0xNVQxMzowNTowMC4wMDAwMDBaIiwiNTUwZTg0MDAtZTI5Yi00MWQ0LWE3MTYtNDQ2NjU1NDQwMDAwIl0sImNvbHVtbnMiOlsiY3JlYXRlZF9hdCIsImlkIl19";
        let key = decode_cursor(CursorColumn::CreatedAt, documented).expect("decodes");
        assert_eq!(
            TimeFormat::default().ts(key.0).to_string(),
            "2026-05-15T13:05:00Z"
        );
        assert_eq!(
            Uid(key.1).to_string(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(
            encode_cursor(CursorColumn::CreatedAt, key, TimeFormat::default()),
            documented
        );
        // The conversation example uses the other column and is padded.
        let conv = "eyJ2YWx1ZXMiOlsiMjAyNi0wNS0xNVQxMzowNTowMC4wMDAwMDBaIiwiYzYzY2VkNDgtMTI4My00ZDU1LThjOGQtOTMwZjUyNWFhMGU1Il0sImNvbHVtbnMiOlsibGFzdF9hY3RpdmVfYXQiLCJpZCJdfQ==";
        let key = decode_cursor(CursorColumn::LastActiveAt, conv).expect("decodes");
        assert_eq!(
            encode_cursor(CursorColumn::LastActiveAt, key, TimeFormat::default()),
            conv
        );
        assert_eq!(decode_cursor(CursorColumn::CreatedAt, conv), None);
    }

    proptest::proptest! {
        /// Every keyset position from year 1 to 9999 survives a cursor, in both columns.
        #[test]
        fn cursors_round_trip(
            ts in -62_135_596_800_000_000i64..253_402_300_799_999_999,
            id in proptest::prelude::any::<u128>(),
        ) {
            for column in [CursorColumn::CreatedAt, CursorColumn::LastActiveAt] {
                let cursor = encode_cursor(column, (ts, id), TimeFormat::default());
                proptest::prop_assert_eq!(decode_cursor(column, &cursor), Some((ts, id)));
            }
        }

        /// Whatever a client sends as a cursor, decoding answers (mostly `None`), never panics.
        #[test]
        fn arbitrary_cursors_never_panic(
            raw in "\\PC{0,80}",
            values in proptest::collection::vec("\\PC{0,30}", 0..4),
            columns in proptest::collection::vec("created_at|id|last_active_at|\\PC{0,8}", 0..4),
        ) {
            let _ = decode_cursor(CursorColumn::CreatedAt, &raw);
            let json = serde_json::json!({ "values": values, "columns": columns }).to_string();
            let _ = decode_cursor(CursorColumn::CreatedAt, &STANDARD.encode(json));
        }
    }

    #[test]
    fn garbage_cursors_are_rejected() {
        for bad in ["", "%%%", "bm90IGpzb24=", "e30=", "W10="] {
            assert_eq!(decode_cursor(CursorColumn::CreatedAt, bad), None, "{bad}");
        }
    }
}
