//! Setting up assignments in bulk: the installer's defaults, and the
//! assignments of an existing qubes.xml.

pub mod defaults;
pub mod qubes_xml;
