//! Embeddings: tokenised texts run through a model and pooled into one vector per
//! text and layer, with a cache so a second run costs no forward pass, and the
//! session that shares both between the tasks of a run.

pub mod cache;
pub mod encode;
pub mod pool;
pub mod session;
