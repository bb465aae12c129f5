//! The OVN backend: the same spec on OVN's logical switches and routers, across hypervisors.
//!
//! - [`ovsdb`]: the OVSDB protocol (RFC 7047) kvmnet speaks to the Northbound database and
//!   to each chassis's Open_vSwitch database.
//! - [`nb`]: kvmnet's Northbound rows read as the core's rows, and a plan's row changes
//!   written as one transaction.
//! - [`chassis`]: this host's Open_vSwitch database made an OVN chassis (external_ids,
//!   br-int, br-ex, VM ports), borrowing what it does not own.
//! - [`local`]: the chassis as the engine sees it: what kvmnet made it, and a plan's
//!   chassis step carried out.
//! - [`report`]: what OVN says of kvmnet's networks and this chassis, for `status` and
//!   `doctor`.
//! - [`owned`]: kvmnet's rows, marked in `external_ids`, made to match what is wanted
//!   without touching anyone else's, and without duplicates when two hosts apply at once.

pub mod chassis;
pub mod local;
pub mod nb;
mod nb_view;
pub mod ovsdb;
pub mod owned;
pub mod report;
