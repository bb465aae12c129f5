//! kvmnet: declarative networking for KVM hosts.
//!
//! Layers: `spec` (YAML -> validated Spec) -> `desired` (Spec + host facts -> HostState) ->
//! `plan` (diff of two HostStates -> ordered, invertible steps) -> `apply` (steps through the
//! `backend`s, rolled back on failure). `observe` reads the live host into a `Snapshot`.

pub mod apply;
pub mod audit;
pub mod backend;
pub mod borrowed;
pub mod cli;
pub mod daemon;
pub mod desired;
pub mod dhcp;
pub mod engine;
pub mod error;
pub mod host_macs;
pub mod nft;
pub mod observe;
pub mod plan;
mod serde_impls;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod statedir;
pub mod status;
pub mod types;
pub mod watch;
