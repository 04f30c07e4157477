//! arbiter-callout: placeholder until its issue lands.
