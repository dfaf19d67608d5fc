//! The Ebb control plane (`ebb server`): tonic services that own one
//! scheduler core, feed it inputs with `now`, persist its plans and send the
//! resulting actions to executors.
//!
//! The control plane itself is the subject of a later issue. What exists now
//! is the one module where wire types become core types ([`convert`]), so
//! that the scheduler never depends on protobuf (architecture invariant 3),
//! and the reservation sources ([`capacity`]: a static file, or EC2 behind
//! the default `ec2` feature) that will feed the market.

pub mod capacity;
pub mod convert;
