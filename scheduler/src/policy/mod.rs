//! Policy: pure functions over the state seen through a round's overlay —
//! feasibility checkers, scorers, the host search, victim selection,
//! clearing prices and compaction suggestions. Nothing here writes state.

pub(crate) mod check;
pub(crate) mod compact;
pub(crate) mod preempt;
pub(crate) mod pricing;
pub(crate) mod repack;
pub(crate) mod score;
pub(crate) mod search;
#[cfg(test)]
pub(crate) mod testkit;
