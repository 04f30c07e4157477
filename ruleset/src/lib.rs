//! arbiter-ruleset: placeholder until its issue lands.
