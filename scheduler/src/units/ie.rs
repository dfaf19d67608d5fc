//! Instance equivalents (IE): capacity normalized to one reference instance
//! type. Stored as integer micro-IE so supply and lease comparisons are exact.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// An amount of capacity in instance equivalents, held as micro-IE.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ie {
    micro: u64,
}

/// Micro-IE per IE: six decimal places keep a t3.nano against an m5.16xlarge
/// (1/32 of a vCPU-ratio unit) exact enough for accounting.
const MICRO: f64 = 1_000_000.0;

impl Ie {
    /// No capacity.
    pub const ZERO: Ie = Ie { micro: 0 };

    /// `ie` instance equivalents, rounded to the nearest micro-IE; negative or
    /// non-finite values become zero (callers validate user input first).
    pub fn from_f64(ie: f64) -> Ie {
        if ie.is_finite() && ie > 0.0 {
            Ie {
                micro: (ie * MICRO).round() as u64,
            }
        } else {
            Ie::ZERO
        }
    }

    /// A whole number of instance equivalents.
    pub const fn from_whole(ie: u64) -> Ie {
        Ie {
            micro: ie.saturating_mul(1_000_000),
        }
    }

    /// From micro-IE.
    pub const fn from_micro(micro: u64) -> Ie {
        Ie { micro }
    }

    /// In micro-IE.
    pub const fn as_micro(self) -> u64 {
        self.micro
    }

    /// As a float, for reports.
    pub fn as_f64(self) -> f64 {
        self.micro as f64 / MICRO
    }

    /// `self − other`, stopping at zero.
    #[must_use]
    pub const fn saturating_sub(self, other: Ie) -> Ie {
        Ie {
            micro: self.micro.saturating_sub(other.micro),
        }
    }

    /// `self × factor` for a non-negative finite factor (a policy fraction).
    #[must_use]
    pub fn scale(self, factor: f64) -> Ie {
        Ie::from_f64(self.as_f64() * factor)
    }
}

impl Ie {
    /// `self + other`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, other: Ie) -> Option<Ie> {
        match self.micro.checked_add(other.micro) {
            Some(micro) => Some(Ie { micro }),
            None => None,
        }
    }

    /// `self − other`, or `None` if `other` is larger.
    #[must_use]
    pub const fn checked_sub(self, other: Ie) -> Option<Ie> {
        match self.micro.checked_sub(other.micro) {
            Some(micro) => Some(Ie { micro }),
            None => None,
        }
    }
}

impl Add for Ie {
    type Output = Ie;
    /// Checked: an account that overflows is a bookkeeping bug, never wrapped
    /// or clamped silently. Use [`Ie::checked_add`] where overflow is an input error.
    fn add(self, other: Ie) -> Ie {
        self.checked_add(other).expect("IE account overflow")
    }
}

impl AddAssign for Ie {
    fn add_assign(&mut self, other: Ie) {
        *self = *self + other;
    }
}

impl Sub for Ie {
    type Output = Ie;
    /// Checked: taking more than an account holds is a bookkeeping bug. Where
    /// clamping at zero is the rule (supply never negative) call
    /// [`Ie::saturating_sub`] explicitly.
    fn sub(self, other: Ie) -> Ie {
        self.checked_sub(other).expect("IE account went below zero")
    }
}

impl SubAssign for Ie {
    fn sub_assign(&mut self, other: Ie) {
        *self = *self - other;
    }
}

impl std::iter::Sum for Ie {
    fn sum<I: Iterator<Item = Ie>>(iter: I) -> Ie {
        iter.fold(Ie::ZERO, Add::add)
    }
}

impl fmt::Display for Ie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} IE", self.as_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "below zero")]
    fn subtracting_more_than_held_is_a_bug_not_zero() {
        let _ = Ie::from_whole(1) - Ie::from_whole(2);
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn overflow_is_a_bug_not_a_clamp() {
        let _ = Ie::from_micro(u64::MAX) + Ie::from_micro(1);
    }

    #[test]
    fn explicit_saturation_and_checks() {
        assert_eq!(
            Ie::from_whole(1).saturating_sub(Ie::from_whole(2)),
            Ie::ZERO
        );
        assert_eq!(Ie::from_whole(1).checked_sub(Ie::from_whole(2)), None);
        assert_eq!(
            Ie::from_micro(u64::MAX).checked_add(Ie::from_micro(1)),
            None
        );
    }
}
