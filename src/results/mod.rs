//! Result files: one schema per command, written and read by the same types, and one
//! place that decides where they go.

pub mod analyze;
pub mod eval;

use std::path::Path;

use anyhow::Result;

use crate::io::assets::cache_root;
use crate::io::output::{lock_for_writing, WriteLock};

/// Claims the result file `path` for this run (see [`lock_for_writing`]), with the lock
/// under `$HARNESS_CACHE/locks` so a run that fails early leaves nothing where its
/// results would go.
pub fn lock_result(path: &Path) -> Result<WriteLock> {
    lock_for_writing(path, &cache_root()?.join("locks"))
}
