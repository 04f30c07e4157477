//! arbiter-proxy: placeholder until its issue lands.
