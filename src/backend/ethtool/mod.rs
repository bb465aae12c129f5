//! Interface settings through the `SIOCETHTOOL` ioctl, the interface ethtool(8) uses: offload
//! toggles, ring sizes and channel counts. Settings are named by kvmnet's keys (see [`KEYS`]),
//! values are numbers (offloads 0/1), so a device's settings are one plain map.
//!
//! An offload key means what ethtool(8)'s name of it means: the group of named feature bits
//! its pattern matches ([`features`]), read and set through ETHTOOL_GFEATURES/SFEATURES. Where
//! the kernel refuses the named interface, or names no feature of a group, the per-feature
//! legacy commands (ETHTOOL_STSO and the like) stand in.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use features::Features;

mod features;

const SIOCETHTOOL: libc::c_ulong = 0x8946;

const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_SRINGPARAM: u32 = 0x11;
const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_SRXCSUM: u32 = 0x15;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;
/// `ETH_FLAG_LRO` in the flags word of ETHTOOL_GFLAGS/SFLAGS.
const ETH_FLAG_LRO: u32 = 1 << 15;

/// Every setting kvmnet knows, by its key: the offloads, then `rings.*` and `channels.*`.
pub const KEYS: &[&str] = &[
    "tso",
    "gso",
    "gro",
    "lro",
    "rx_checksum",
    "tx_checksum",
    "rings.rx",
    "rings.tx",
    "channels.combined",
    "channels.rx",
    "channels.tx",
];

#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("ethtool {key} on {dev}: the device does not support changing it ({source})")]
    Unsupported {
        dev: String,
        key: String,
        source: io::Error,
    },
    #[error("ethtool {key} on {dev}: {source}")]
    Sys {
        dev: String,
        key: String,
        source: io::Error,
    },
    #[error(
        "ethtool {key} on {dev}: the kernel kept {got} instead of {want} (another setting it depends on is off?)"
    )]
    NotTaken {
        dev: String,
        key: String,
        want: u32,
        got: u32,
    },
    #[error("ethtool: unknown setting '{0}'")]
    UnknownKey(String),
}

/// What a device reports: current values, and for rings and channels the maxima.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readout {
    pub values: BTreeMap<String, u32>,
    /// Upper bound of each ring/channel key the device reports (0: it has none of that kind).
    pub max: BTreeMap<String, u32>,
}

struct Sock(OwnedFd);

impl Sock {
    fn open() -> io::Result<Sock> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Sock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One SIOCETHTOOL call on `dev` with `data` (a struct whose first u32 is the command).
    fn call(&self, dev: &str, data: &mut [u32]) -> io::Result<()> {
        self.call_raw(dev, data.as_mut_ptr().cast())
    }

    /// The same with a byte buffer, for the commands whose structs mix widths.
    fn call_bytes(&self, dev: &str, data: &mut [u8]) -> io::Result<()> {
        self.call_raw(dev, data.as_mut_ptr().cast())
    }

    /// `data` must point at a buffer as large as the command reads and writes.
    fn call_raw(&self, dev: &str, data: *mut libc::c_void) -> io::Result<()> {
        #[repr(C)]
        struct IfReq {
            name: [libc::c_char; libc::IFNAMSIZ],
            data: *mut libc::c_void,
            _pad: [u8; 16],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data,
            _pad: [0; 16],
        };
        if dev.len() >= libc::IFNAMSIZ || dev.bytes().any(|b| b == 0) {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        for (d, s) in req.name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: req points at a live buffer of the size the command expects.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL, &mut req) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The device's named features: their names (GSSET_INFO and GSTRINGS of ETH_SS_FEATURES)
    /// and state (GFEATURES). An error where the kernel refuses any of it.
    fn features(&self, dev: &str) -> io::Result<Features> {
        let malformed = || io::Error::from(io::ErrorKind::InvalidData);
        let mut info = features::sset_info_request();
        self.call_bytes(dev, &mut info)?;
        let count = features::sset_count(&info)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
        let mut strings = features::strings_request(count);
        self.call_bytes(dev, &mut strings)?;
        let names = features::parse_strings(&strings).ok_or_else(malformed)?;
        // As many words as there are names; should the kernel have more, it says how many,
        // and SFEATURES takes no other number, so ask again with that.
        let mut words = count.div_ceil(32);
        for _ in 0..2 {
            let mut g = features::features_request(words);
            self.call_bytes(dev, &mut g)?;
            let (size, blocks) = features::parse_features(&g).ok_or_else(malformed)?;
            if size == words {
                return Ok(Features { names, blocks });
            }
            words = size;
        }
        Err(malformed())
    }

    fn set_features(&self, dev: &str, words: &[(u32, u32)]) -> io::Result<()> {
        let mut req = features::set_request(words);
        self.call_bytes(dev, &mut req)
    }

    fn get_value(&self, dev: &str, cmd: u32) -> io::Result<u32> {
        let mut v = [cmd, 0];
        self.call(dev, &mut v)?;
        Ok(v[1])
    }

    fn set_value(&self, dev: &str, cmd: u32, value: u32) -> io::Result<()> {
        let mut v = [cmd, value];
        self.call(dev, &mut v)
    }

    /// struct ethtool_ringparam: cmd, rx_max, rx_mini_max, rx_jumbo_max, tx_max, rx, rx_mini,
    /// rx_jumbo, tx.
    fn rings(&self, dev: &str) -> io::Result<[u32; 9]> {
        let mut r = [0u32; 9];
        r[0] = ETHTOOL_GRINGPARAM;
        self.call(dev, &mut r)?;
        Ok(r)
    }

    /// struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined, rx, tx, other,
    /// combined.
    fn channels(&self, dev: &str) -> io::Result<[u32; 9]> {
        let mut c = [0u32; 9];
        c[0] = ETHTOOL_GCHANNELS;
        self.call(dev, &mut c)?;
        Ok(c)
    }
}

/// An offload key through the legacy commands: the kernel's fixed mask for it.
fn legacy_get(s: &Sock, dev: &str, key: &str) -> Option<u32> {
    if key == "lro" {
        let f = s.get_value(dev, ETHTOOL_GFLAGS).ok()?;
        return Some(u32::from(f & ETH_FLAG_LRO != 0));
    }
    let (get, _) = offload_cmds(key)?;
    s.get_value(dev, get).ok().map(|v| u32::from(v != 0))
}

fn legacy_set(s: &Sock, dev: &str, key: &str, v: u32) -> io::Result<()> {
    if key == "lro" {
        // The flags word holds other flags too: change only LRO.
        let f = s.get_value(dev, ETHTOOL_GFLAGS)?;
        let f = if v != 0 {
            f | ETH_FLAG_LRO
        } else {
            f & !ETH_FLAG_LRO
        };
        return s.set_value(dev, ETHTOOL_SFLAGS, f);
    }
    let (_, set) = offload_cmds(key).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    s.set_value(dev, set, v)
}

fn offload_cmds(key: &str) -> Option<(u32, u32)> {
    Some(match key {
        "tso" => (ETHTOOL_GTSO, ETHTOOL_STSO),
        "gso" => (ETHTOOL_GGSO, ETHTOOL_SGSO),
        "gro" => (ETHTOOL_GGRO, ETHTOOL_SGRO),
        "rx_checksum" => (ETHTOOL_GRXCSUM, ETHTOOL_SRXCSUM),
        "tx_checksum" => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM),
        _ => return None,
    })
}

/// Index of a key's current value and of its maximum in the ring/channel structs.
fn ring_slot(key: &str) -> Option<(usize, usize)> {
    match key {
        "rings.rx" => Some((5, 1)),
        "rings.tx" => Some((8, 4)),
        _ => None,
    }
}
fn channel_slot(key: &str) -> Option<(usize, usize)> {
    match key {
        "channels.rx" => Some((5, 1)),
        "channels.tx" => Some((6, 2)),
        "channels.combined" => Some((8, 4)),
        _ => None,
    }
}

/// Reads every setting of `dev` the device reports; what it cannot report is left out.
pub fn read(dev: &str) -> io::Result<Readout> {
    let s = Sock::open()?;
    let mut out = Readout::default();
    let named = s.features(dev).ok();
    for key in features::offload_keys() {
        let v = named
            .as_ref()
            .and_then(|f| f.value(key))
            .or_else(|| legacy_get(&s, dev, key));
        if let Some(v) = v {
            out.values.insert(key.to_string(), v);
        }
    }
    if let Ok(r) = s.rings(dev) {
        for key in ["rings.rx", "rings.tx"] {
            let (cur, max) = ring_slot(key).expect("ring key");
            out.values.insert(key.into(), r[cur]);
            out.max.insert(key.into(), r[max]);
        }
    }
    if let Ok(c) = s.channels(dev) {
        for key in ["channels.rx", "channels.tx", "channels.combined"] {
            let (cur, max) = channel_slot(key).expect("channel key");
            out.values.insert(key.into(), c[cur]);
            out.max.insert(key.into(), c[max]);
        }
    }
    Ok(out)
}

fn failed(dev: &str, key: &str, e: io::Error) -> EthtoolError {
    let (dev, key) = (dev.to_string(), key.to_string());
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        EthtoolError::Unsupported {
            dev,
            key,
            source: e,
        }
    } else {
        EthtoolError::Sys {
            dev,
            key,
            source: e,
        }
    }
}

fn is_offload(key: &str) -> bool {
    features::offload_keys().any(|k| k == key)
}

/// Sets the offload keys: those the kernel names features of in one ETHTOOL_SFEATURES call,
/// every changeable bit of each group; the rest, or all where the named interface is
/// refused, through the legacy commands. A group the device cannot change fails as the
/// legacy command does, with EOPNOTSUPP, before anything is changed.
fn set_offloads(s: &Sock, dev: &str, want: &BTreeMap<String, u32>) -> Result<(), EthtoolError> {
    if want.is_empty() {
        return Ok(());
    }
    let all = || want.keys().map(String::as_str).collect::<Vec<_>>();
    let legacy = match s.features(dev) {
        Err(_) => all(),
        Ok(f) => {
            let unsupported = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
            let features::Request { words, legacy } =
                f.request(want).map_err(|k| failed(dev, k, unsupported))?;
            if words.iter().all(|(valid, _)| *valid == 0) {
                legacy
            } else {
                match s.set_features(dev, &words) {
                    Ok(()) => legacy,
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => all(),
                    Err(e) => {
                        let named: Vec<&str> =
                            all().into_iter().filter(|k| !legacy.contains(k)).collect();
                        return Err(failed(dev, &named.join(", "), e));
                    }
                }
            }
        }
    };
    for key in legacy {
        legacy_set(s, dev, key, want[key]).map_err(|e| failed(dev, key, e))?;
    }
    Ok(())
}

/// Sets `values` on `dev` (rings and channels each in one call), then reads them back: a
/// setting the kernel silently declined is an error, not a success.
pub fn set(dev: &str, values: &BTreeMap<String, u32>) -> Result<(), EthtoolError> {
    let s = Sock::open().map_err(|e| failed(dev, "socket", e))?;
    let mut rings = None;
    let mut channels = None;
    // Nothing changes when any key is unknown.
    if let Some(k) = values.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(EthtoolError::UnknownKey(k.clone()));
    }
    let offloads: BTreeMap<String, u32> = values
        .iter()
        .filter(|(k, _)| is_offload(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    set_offloads(&s, dev, &offloads)?;
    for (key, &v) in values {
        if let Some((cur, _)) = ring_slot(key) {
            if rings.is_none() {
                rings = Some(s.rings(dev).map_err(|e| failed(dev, key, e))?);
            }
            rings.as_mut().expect("read above")[cur] = v;
        } else if let Some((cur, _)) = channel_slot(key) {
            if channels.is_none() {
                channels = Some(s.channels(dev).map_err(|e| failed(dev, key, e))?);
            }
            channels.as_mut().expect("read above")[cur] = v;
        }
    }
    if let Some(mut r) = rings {
        r[0] = ETHTOOL_SRINGPARAM;
        s.call(dev, &mut r).map_err(|e| failed(dev, "rings", e))?;
    }
    if let Some(mut c) = channels {
        c[0] = ETHTOOL_SCHANNELS;
        s.call(dev, &mut c)
            .map_err(|e| failed(dev, "channels", e))?;
    }
    let now = read(dev).map_err(|e| failed(dev, "read back", e))?;
    for (key, &want) in values {
        let got = now.values.get(key).copied().unwrap_or(u32::MAX);
        if got != want {
            return Err(EthtoolError::NotTaken {
                dev: dev.to_string(),
                key: key.clone(),
                want,
                got,
            });
        }
    }
    Ok(())
}
