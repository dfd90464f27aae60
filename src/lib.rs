//! harness: measure what every layer of a large language model is good for.

pub mod tokenizer;
