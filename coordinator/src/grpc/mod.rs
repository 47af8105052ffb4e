//! Thin gRPC adapters: decode the request, authorize, call the core, encode
//! the reply. No logic lives here.

pub mod agent;
pub mod convert;
pub mod operator;
