//! Placeholder.
#![allow(missing_docs, reason = "bench")]
fn main() {}
