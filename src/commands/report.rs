//! `harness report`: every eval and analyze result under a directory, written out
//! as the leaderboard, depth curves and layer analyses.

use std::path::Path;

use anyhow::Result;

/// Reads the results under `results` and writes the report into `out`, naming
/// every file written.
pub fn run(results: &Path, out: &Path) -> Result<()> {
    let loaded = crate::report::load(results)?;
    for warning in &loaded.warnings {
        crate::io::warnings::warn(warning);
    }
    for path in crate::report::write_report(&loaded, out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
