//! harness: measure what every layer of a large language model is good for.
//!
//! The library holds every piece; the `harness` binary only parses arguments.

pub mod analyze;
pub mod assets;
pub mod cache;
pub mod capture;
pub mod datasets;
pub mod diagnostics;
pub mod embed;
pub mod eval;
pub mod faults;
pub mod hub;
pub mod loader;
pub mod metrics;
pub mod models;
pub mod output;
pub mod probe;
pub mod progress;
pub mod report;
pub mod sampling;
pub mod scores;
pub mod tasks;
pub mod tokenizer;
