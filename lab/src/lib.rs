//! arbiter-lab: placeholder until its issue lands.
