//! Where the library's warnings go. The library never prints on its own: a warning is
//! handed to the reporter the program installed, or written to stderr as `warning: ...`
//! when none was, so a library user can collect, log or silence them.

use std::sync::OnceLock;

/// Receives each warning's text (without the `warning: ` prefix).
pub type Reporter = Box<dyn Fn(&str) + Send + Sync>;

static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// Installs the reporter for the rest of the process; `false` when one was already
/// installed (the first stays, so warnings never change destination mid-run).
pub fn set_reporter(reporter: Reporter) -> bool {
    REPORTER.set(reporter).is_ok()
}

/// Reports `message` to the installed reporter, or to stderr.
pub fn warn(message: &str) {
    match REPORTER.get() {
        Some(report) => report(message),
        None => eprintln!("warning: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn warnings_reach_the_installed_reporter_and_it_stays() {
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        assert!(set_reporter(Box::new(|m| SEEN
            .lock()
            .unwrap()
            .push(m.to_string()))));
        assert!(!set_reporter(Box::new(|_| {})));
        warn("the cache entry was torn");
        assert!(SEEN
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "the cache entry was torn"));
    }
}
