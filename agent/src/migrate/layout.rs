//! The migrations folder reader. It lives in ferry-common
//! ([`ferry_common::migration_layout`]) so that the CLI, which reads `dir`
//! before submitting, and this agent, which applies the files the job
//! carried, read a folder with the same code; here it is re-exported, and
//! its error becomes the engine's.

pub use ferry_common::migration_layout::{
    DRIZZLE_BREAKPOINT, Files, Layout, LayoutError, MAX_BYTES, MAX_FILES, Migration, MigrationSet,
    NO_TRANSACTION, load, load_dir, read_dir, sha256_hex,
};

use super::error::MigrateError;

impl From<LayoutError> for MigrateError {
    fn from(e: LayoutError) -> Self {
        MigrateError::Layout {
            file: e.file,
            reason: e.reason,
        }
    }
}
