//! Specs: the vocabulary shells speak to the core — jobs, hosts, pools and
//! reservations, configuration with every policy as data, the instance type
//! catalog, pending reasons and input errors. Depends only on `units`.

pub mod catalog;
pub mod config;
pub mod error;
pub mod host;
pub mod job;
pub mod market;
pub mod reason;
