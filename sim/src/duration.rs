//! Human-readable durations in scenario files: `"250ms"`, `"30s"`, `"5m"`,
//! `"2h"`, `"1.5d"`. The simulator's clock is integer milliseconds.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of simulated time in milliseconds, written as `<number><unit>` in TOML.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub u64);

/// Milliseconds per unit, longest suffix first so `ms` is not read as `m`.
const UNITS: [(&str, f64); 5] = [
    ("ms", 1.0),
    ("s", 1_000.0),
    ("m", 60_000.0),
    ("h", 3_600_000.0),
    ("d", 86_400_000.0),
];

impl Dur {
    /// `ms` milliseconds.
    pub const fn ms(ms: u64) -> Dur {
        Dur(ms)
    }

    /// `s` seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(s * 1_000)
    }

    /// `m` minutes.
    pub const fn mins(m: u64) -> Dur {
        Dur(m * 60_000)
    }

    /// `h` hours.
    pub const fn hours(h: u64) -> Dur {
        Dur(h * 3_600_000)
    }

    /// The duration in hours, for reports.
    pub fn as_hours(self) -> f64 {
        self.0 as f64 / 3_600_000.0
    }

    /// Parses `"<number><unit>"` with unit one of ms, s, m, h, d.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        let usage =
            || format!("`{text}`: expected a number with a unit (ms, s, m, h, d), e.g. \"30s\"");
        for (suffix, factor) in UNITS {
            if let Some(num) = t.strip_suffix(suffix) {
                let v: f64 = num.trim().parse().map_err(|_| usage())?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("`{text}`: must be a finite, non-negative duration"));
                }
                return Ok(Dur((v * factor).round() as u64));
            }
        }
        Err(usage())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            f.write_str("0s")
        } else if ms.is_multiple_of(86_400_000) {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        let cases = [
            ("250ms", Ok(250)),
            ("30s", Ok(30_000)),
            ("5m", Ok(300_000)),
            ("1.5h", Ok(5_400_000)),
            ("2d", Ok(172_800_000)),
            (" 10 s ", Ok(10_000)),
        ];
        for (text, want) in cases {
            assert_eq!(Dur::parse(text).map(|d| d.0), want, "{text}");
        }
        for bad in ["", "10", "h", "-1h", "1x", "NaNs"] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Dur::hours(48).to_string(), "2d");
        assert_eq!(Dur::ms(1500).to_string(), "1500ms");
    }
}
