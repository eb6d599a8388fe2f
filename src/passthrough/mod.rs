//! The PCI passthrough rules: what may be assigned where, and what a qube
//! may take when it starts.

pub mod rules;
pub mod start;
