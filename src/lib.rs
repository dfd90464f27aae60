//! harness: measure what every layer of a large language model is good for.
//!
//! The library holds every piece; the `harness` binary only parses arguments.

pub mod commands;
pub mod datasets;
pub mod diagnostics;
pub mod embeddings;
pub mod hub;
pub mod io;
pub mod model;
pub mod probe;
pub mod report;
pub mod results;
pub mod stats;
pub mod tasks;
