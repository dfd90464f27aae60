//! Plumbing every command needs: where assets live, atomic writes and locks, progress
//! on the terminal, where warnings go, and the fault-injection hook tests use.

pub mod assets;
pub mod faults;
pub mod output;
pub mod progress;
pub mod warnings;
