//! wfp-ffi: placeholder until its issue lands.
