//! Fuzz targets for kvmnet's parsers and wire codecs, as plain functions of one input.
//!
//! The libFuzzer binaries in `fuzz_targets/` call them, and so does the smoke test
//! (`tests/fuzz_smoke.rs`, which includes this file as a module), so CI runs on stable what
//! the long runs explore. Every target panics exactly when it finds a bug: a panic in kvmnet,
//! or a property that does not hold.
//!
//! - [`spec`]: `spec::parse_bytes` never panics, its errors are well formed, and a spec it
//!   accepts goes through the pure layers after it (DHCP scopes, nftables, desired state,
//!   plan) without a panic.
//! - [`spec_cache`]: a sequence of texts (NUL-separated) through one `SpecCache` gives, text
//!   by text, exactly what the full parse gives.
//! - [`dhcp`]: `Packet::parse` never panics, decode∘encode is the identity on what it
//!   accepts, and the fields agree with the `dhcproto` crate's reading of the same bytes.
//! - [`dns`]: the DNS service's engine answers any query and any upstream answer with
//!   well-formed responses that carry the query's ID and fit in UDP.
//! - [`dhcp6`]: the DHCPv6 server's engine takes any message without a panic, answers only
//!   with Advertise or Reply, binds nothing outside its pool and reservation, and `dhcproto`
//!   (its wire format) reads back what it writes.
//! - [`api`]: the daemon's HTTP request reader never panics and answers a malformed request
//!   with a 4xx.
//! - [`import_libvirt`]: libvirt network and domain XML never panic the import, and what it
//!   accepts is a spec kvmnet takes.
//! - [`ovsdb`]: OVSDB monitor updates and values from a server never panic the client's
//!   replica, and values survive a write and a read.
//! - [`ra_rs`]: the router solicitation parser never panics and accepts only well-formed
//!   solicitations, which read the same written back.

mod api_target;
mod dhcp6_target;
mod dhcp_target;
mod dns_target;
mod import_target;
pub mod mutate;
mod ovsdb_target;
mod ra_target;
mod spec_target;

pub use api_target::{ApiOutcome, api, api_parse, cli_round_trip};
pub use dhcp_target::dhcp;
pub use dhcp6_target::dhcp6;
pub use dns_target::dns;
pub use import_target::import_libvirt;
pub use ovsdb_target::ovsdb;
pub use ra_target::ra_rs;
pub use spec_target::{spec, spec_cache};

/// A fuzz target: one input, a panic for a bug.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, Target); 9] = [
    ("spec", spec),
    ("spec_cache", spec_cache),
    ("dhcp", dhcp),
    ("dns", dns),
    ("dhcp6", dhcp6),
    ("api", api),
    ("import_libvirt", import_libvirt),
    ("ovsdb", ovsdb),
    ("ra_rs", ra_rs),
];
