//! The commands' drivers: what `harness embed`, `eval` and `analyze` do between
//! parsed arguments and written results.

pub mod analyze;
pub mod eval;
