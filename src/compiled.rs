//! The compiled rule matcher (rules issue). Placeholder.
