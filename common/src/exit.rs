//! Process exit codes shared by `ferry`, `ferry-coordinator` and `ferry-agent`.
//! Scripts rely on them; they never change meaning.

/// Success; for `ferry watch`, the job succeeded.
pub const OK: i32 = 0;
/// The operation failed (or the watched job failed).
pub const FAILED: i32 = 1;
/// Bad arguments, bad input files, or refused by validation.
pub const USAGE: i32 = 2;
/// The watched job was cancelled.
pub const CANCELLED: i32 = 3;
/// The caller's identity was refused: revoked, expired or unknown
/// credentials. An agent exiting with this code needs re-enrollment.
pub const REFUSED: i32 = 4;
/// The coordinator could not be reached.
pub const UNAVAILABLE: i32 = 5;
