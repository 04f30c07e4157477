//! Audit codec tests.
