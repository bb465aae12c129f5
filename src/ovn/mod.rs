//! The OVN backend: the same spec on OVN's logical switches and routers, across hypervisors.
//!
//! - [`ovsdb`]: the OVSDB protocol (RFC 7047) kvmnet speaks to the Northbound database and
//!   to each chassis's Open_vSwitch database.

pub mod ovsdb;
