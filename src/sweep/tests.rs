//! Tests of sweep files, plans and shards.
