//! Units: identifiers, time, resource vectors, instance equivalents and
//! prices. The bottom layer: it depends on nothing else in the crate.

pub mod ids;
pub mod ie;
pub mod price;
pub mod resources;
pub mod time;
