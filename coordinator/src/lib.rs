//! Ferry's coordinator library; on this branch, only the store.

pub mod store;
