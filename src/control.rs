//! The control protocol between the driver and user mode (user-mode issue). Placeholder.
