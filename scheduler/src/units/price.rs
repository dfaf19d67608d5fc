//! Prices and money in integer micro-units of the internal currency, so that
//! charges add up exactly however many rounds price them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-units per unit of the internal currency.
const MICROS_PER_UNIT: f64 = 1_000_000.0;

/// An internal price per instance-equivalent hour, in micro-units.
///
/// Files and configuration write it as a decimal number of currency units
/// per IE-hour (`bid = 1.5`); it is held as an integer so that ordering,
/// second-price billing and ledger sums are exact. Prices are at most
/// [`Price::MAX`], below which the decimal form round-trips exactly.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price {
    micros: u64,
}

impl Price {
    /// Zero: the price of a job that did not bid.
    pub const ZERO: Price = Price { micros: 0 };

    /// The largest price, 2^50 micro-units (about 1.1 × 10^9 units) per
    /// IE-hour: far above any sensible bid, and low enough that the decimal
    /// form (an `f64`) converts back to the same integer (an `f64` is exact
    /// to about one part in 2^53, and the round trip must stay within half a
    /// micro-unit).
    pub const MAX: Price = Price { micros: 1 << 50 };

    /// A price of `micros` micro-units per IE-hour, or `None` above [`Price::MAX`].
    pub const fn from_micros(micros: u64) -> Option<Price> {
        if micros <= Price::MAX.micros {
            Some(Price { micros })
        } else {
            None
        }
    }

    /// A price from a decimal number of units per IE-hour, rounded to the
    /// nearest micro-unit, or `None` if it is not finite, negative or above
    /// [`Price::MAX`].
    pub fn new(per_ie_hour: f64) -> Option<Price> {
        let micros = (per_ie_hour * MICROS_PER_UNIT).round();
        (per_ie_hour.is_finite() && per_ie_hour >= 0.0 && micros <= Price::MAX.micros as f64)
            .then_some(Price {
                micros: micros as u64,
            })
    }

    /// Micro-units per IE-hour.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// Units per IE-hour, for display and plots.
    pub fn per_ie_hour(self) -> f64 {
        self.micros as f64 / MICROS_PER_UNIT
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/IE-h", Money::from_micros(self.micros))
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.per_ie_hour())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Price, D::Error> {
        let v = f64::deserialize(d)?;
        Price::new(v).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "price {v} must be a finite, non-negative number of units per IE-hour"
            ))
        })
    }
}

/// An amount of the internal currency, in micro-units (charges, savings).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money {
    micros: u64,
}

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money { micros: 0 };

    /// `micros` micro-units.
    pub const fn from_micros(micros: u64) -> Money {
        Money { micros }
    }

    /// In micro-units.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// In units, for display.
    pub fn as_f64(self) -> f64 {
        self.micros as f64 / MICROS_PER_UNIT
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_to_micros_and_refuse_nonsense() {
        let cases = [
            ("whole", 2.0, Some(2_000_000)),
            ("fraction", 0.1234565, Some(123_457)),
            ("zero", 0.0, Some(0)),
            ("negative", -0.5, None),
            ("nan", f64::NAN, None),
            ("infinite", f64::INFINITY, None),
            ("too large", 1e300, None),
            (
                "just above the maximum",
                (1u64 << 50) as f64 / 1e6 + 0.000001,
                None,
            ),
        ];
        for (name, v, want) in cases {
            assert_eq!(Price::new(v).map(Price::as_micros), want, "{name}");
        }
    }

    #[test]
    fn decimal_form_round_trips_exactly() {
        for micros in [
            0,
            1,
            999_999,
            1_000_001,
            123_456_789_012,
            (1 << 50) - 1,
            1 << 50,
        ] {
            let p = Price::from_micros(micros).unwrap();
            let back: Price = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(back, p, "{micros}");
        }
        // And a spread of values across the whole range.
        for i in 0u64..20_000 {
            let micros = (i * 56_294_995_342_131 + 7) % (1 << 50);
            let p = Price::from_micros(micros).unwrap();
            let back: Price = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            assert_eq!(back, p, "{micros}");
        }
    }

    #[test]
    fn money_displays_exact_decimals() {
        assert_eq!(Money::from_micros(1_500_001).to_string(), "1.500001");
        assert_eq!(
            Price::from_micros(250_000).unwrap().to_string(),
            "0.250000/IE-h"
        );
        assert_eq!(Price::from_micros((1 << 50) + 1), None);
    }
}
