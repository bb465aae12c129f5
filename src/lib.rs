//! kvmnet: declarative networking for KVM hosts.
//!
//! Layers: `spec` (YAML -> validated Spec) -> `desired` (Spec + host facts -> HostState) ->
//! `plan` (diff of two HostStates -> ordered, invertible steps) -> `apply` (steps through the
//! `backend`s, rolled back on failure). `observe` reads the live host into a `Snapshot`.

pub mod apply;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod daemon;
pub mod dhcp;
pub mod dns;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod export;
pub mod host_macs;
pub mod import;
pub mod log;
pub mod metrics;
pub mod observe;
pub mod ovn;
pub mod ra;
pub mod show;
pub mod statedir;
pub mod status;
pub mod trace;
pub mod watch;

// The pure core, at the paths the rest of kvmnet has always used.
/// The core's OVN rows (`crate::ovn` is the shell's OVN backend).
pub use kvmnet_core::ovn as ovn_core;
pub use kvmnet_core::{borrowed, desired, nft, plan, snapshot, spec, state, types};
