//! A hook for fault tests: `HARNESS_PAUSE_AT=<point>` stops the process for good at a
//! named point so that a test can kill it exactly there. Inert unless the variable is set.
//!
//! Points: `forward` (after the first batch of a forward pass) and `write:<suffix>`
//! (a file whose path ends with `<suffix>` is fully written to its temporary name but
//! not yet moved into place).

use std::sync::OnceLock;
use std::time::Duration;

/// Pauses forever if `HARNESS_PAUSE_AT` names `point` (and, after a colon, a suffix
/// of `detail`), saying so on stderr first.
pub fn pause_at(point: &str, detail: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let Some(at) = AT.get_or_init(|| std::env::var("HARNESS_PAUSE_AT").ok()) else {
        return;
    };
    let hit = match at.split_once(':') {
        Some((p, suffix)) => p == point && detail.ends_with(suffix),
        None => at == point,
    };
    if hit {
        eprintln!("paused at {at}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
