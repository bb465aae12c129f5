//! Kernel I/O: thin wrappers, one per interface the kernel offers.

pub mod ethtool;
pub mod events;
pub mod macvtap;
pub mod netlink;
pub mod netns;
mod nfnetlink;
pub mod nft_words;
pub mod nftables;
pub mod rtnl;
pub mod sysctl;
pub mod tap;
pub mod tc;
