//! kvmnet's pure core: the spec and its validation, the desired state, the observed state as
//! plain data, the plan and its steps, the nftables model, and the host settings kvmnet
//! borrows. No I/O and no `libc`: time, files and the kernel reach it as data from the
//! shell (`kvmnet`'s observe, apply, engine and daemon), so everything here is tested with
//! plain `cargo test`, golden files and fakes.

pub mod borrowed;
pub mod desired;
mod modes;
pub mod nft;
pub mod ovn;
pub mod plan;
mod serde_impls;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod trace;
pub mod types;
