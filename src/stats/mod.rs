//! Statistics shared by tasks and reports: metrics, bootstrap intervals, chance
//! levels and seeded subsets.

pub mod bootstrap;
pub mod metrics;
pub mod sampling;
pub mod scores;
