//! Kernel I/O: thin wrappers, one per interface the kernel offers; and the seam the engine
//! drives a backend through ([`seam`]), with the kernel as its implementation.

pub mod counters;
pub mod ethtool;
pub mod events;
pub mod macvtap;
pub mod netlink;
pub mod netns;
mod nfnetlink;
pub mod nft_words;
pub mod nftables;
pub mod rtnl;
pub mod seam;
pub mod sysctl;
pub mod tap;
pub mod tc;
