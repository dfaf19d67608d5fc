//! The gRPC services: thin layers that authenticate (through the
//! interceptor), validate, authorize by role, and forward to the driver.

pub mod executor;
pub mod jobs;
pub mod market;
