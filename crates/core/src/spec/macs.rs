//! Derived MACs: unique per host, never colliding within one spec, never moving under a
//! running VM.
//!
//! A port without `mac` gets one derived from this host's identity (its machine ID, as
//! systemd's persistent MAC policy uses it), the kvmnet scope (`--netns`), the VM and the
//! port. Two hosts that each run a VM `web1` on one VXLAN, VLAN or bridged LAN therefore give
//! them different MACs.
//!
//! The form is `52:xx:xx:xx:xx:xx`: 52 is the first octet QEMU and libvirt use
//! (locally administered, unicast: no vendor's burned-in address has it and every guest
//! accepts it), and it keeps the VM's MAC readable from the host end of its port, which is the
//! same address with `fe` in front (see [`super::naming::host_end_mac`]): `kvmnet status`
//! shows the host end, the VM's MAC is `52` and its last five octets. The other 40 bits are
//! hashed, against 24 under QEMU's `52:54:00`: on one segment of n ports the chance that two
//! hosts derived the same MAC is about n²/2⁴¹ (1 in 22,000 at 10,000 ports, where 24 bits
//! make it a near certainty). A host cannot see the other hosts' MACs, so across hosts only
//! these bits help; within one host a collision is resolved (below). The `52:54:00` block is
//! never derived: QEMU and libvirt pick guest MACs there, kvmnet's bridges have theirs there,
//! and so had ports before this derivation.
//!
//! Each port has a sequence of candidates. [`resolve`] gives every derived port the first
//! candidate that no other port holds: first the ports that exist on the host keep the MAC
//! they carry (one of their candidates, or the MAC earlier versions derived: a running VM was
//! started with it), then ports that do not exist now but were given a MAC before (a host
//! that rebooted) get that one back, then the new ports take their first free candidate, in
//! name order. So adding a port never moves an existing one, whatever their names; only an
//! explicit `mac` (which cannot move) displaces a derived one.
//!
//! Ports on OVN networks are the exception: every chassis writes the same Northbound rows,
//! so their MACs are derived from the VM's and the port's names under a key that is the same
//! everywhere, and resolved among the OVN ports alone, from the spec alone (see
//! [`derive_ovn_macs`]).

use super::model::{Mac, Port, Spec};
use super::naming;

/// The first octet of every derived MAC.
const PREFIX: u8 = 0x52;
/// Candidates tried per port before giving up (the 64th is needed only if 63 others of one
/// port's candidates are taken: never by chance).
pub const CANDIDATES: u32 = 64;

/// What derived MACs are made from besides the VM and the port: this host and the scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// The host's 128-bit machine ID (or what stands in for it): the hash key.
    key: [u8; 16],
    /// `host`, or the `--netns` namespace: two scopes on one host differ too.
    scope: String,
}

impl Default for HostIdentity {
    /// An all-zero key for the host scope: for specs that derive nothing (an empty spec) and
    /// tests; a real host uses [`HostIdentity::from_machine_id`].
    fn default() -> Self {
        HostIdentity::new([0; 16], "host")
    }
}

impl HostIdentity {
    pub fn new(key: [u8; 16], scope: &str) -> HostIdentity {
        HostIdentity {
            key,
            scope: scope.to_string(),
        }
    }

    /// From the text of `/etc/machine-id`: 32 hex digits (a trailing newline is fine). `None`
    /// for anything else, an all-zero ID or systemd's `uninitialized` included.
    pub fn from_machine_id(text: &str, scope: &str) -> Option<HostIdentity> {
        let hex = text.trim();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut key = [0u8; 16];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        (key != [0; 16]).then(|| HostIdentity::new(key, scope))
    }

    /// From the host name, for a host without a machine ID: unique only as far as host
    /// names are.
    pub fn from_host_name(name: &str, scope: &str) -> HostIdentity {
        let data = [b"kvmnet host name\0".as_slice(), name.as_bytes()].concat();
        let a = siphash24(&[1; 16], &data).to_le_bytes();
        let b = siphash24(&[2; 16], &data).to_le_bytes();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&a);
        key[8..].copy_from_slice(&b);
        HostIdentity::new(key, scope)
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// SipHash-2-4, the keyed hash systemd derives persistent MACs with: fixed forever (derived
/// MACs must not change between releases), and keyed by the machine ID so that a host's MACs
/// reveal nothing about it.
pub fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let (k0, k1) = (word(&key[..8]), word(&key[8..]));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    };
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        compress(&mut v, word(c));
    }
    compress(
        &mut v,
        word(chunks.remainder()) | ((data.len() as u64) << 56),
    );
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The candidates of one port, in order.
pub struct Candidates<'a> {
    key: &'a [u8; 16],
    /// The hashed message without the counter.
    message: Vec<u8>,
}

impl<'a> Candidates<'a> {
    pub fn new(id: &'a HostIdentity, vm: &str, port: &str) -> Candidates<'a> {
        let mut message = Vec::with_capacity(64);
        message.extend_from_slice(b"kvmnet port mac v1");
        // Each part with its length, so no two (scope, vm, port) give one message.
        for part in [id.scope.as_str(), vm, port] {
            message.extend_from_slice(&(part.len() as u32).to_le_bytes());
            message.extend_from_slice(part.as_bytes());
        }
        Candidates {
            key: &id.key,
            message,
        }
    }

    /// Candidate `k`: `52` and 40 hashed bits, outside the `52:54:00` block.
    pub fn get(&mut self, k: u32) -> Mac {
        let base = self.message.len();
        let mut round = 0u32;
        loop {
            self.message.extend_from_slice(&k.to_le_bytes());
            self.message.extend_from_slice(&round.to_le_bytes());
            let h = siphash24(self.key, &self.message).to_le_bytes();
            self.message.truncate(base);
            if (h[0], h[1]) != (0x54, 0x00) {
                return Mac([PREFIX, h[0], h[1], h[2], h[3], h[4]]);
            }
            // One hash in 65,536 lands in the block: hash again, still candidate k.
            round += 1;
        }
    }
}

/// A derived port as [`resolve`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The MAC the port's device on the host carries (its host end, or a macvtap's own MAC),
    /// if the port exists.
    pub observed: Option<Mac>,
    /// The MAC the port was given when it was last applied, if the host remembers one.
    pub remembered: Option<Mac>,
    /// A MAC known to be one of this port's (from an earlier resolution): recognised without
    /// hashing.
    pub known: Option<Mac>,
    /// The MAC earlier versions derived for the port: kept when the port carries it. (Only
    /// looked at for an observed or remembered MAC that is not `known`.)
    pub legacy: Mac,
}

/// What identifies a MAC among the ports of one host: its last five octets (the host end of a
/// port replaces the first, so two MACs that share these would give two ports one host end).
type Key = [u8; 5];

fn key(m: Mac) -> Key {
    [m.0[1], m.0[2], m.0[3], m.0[4], m.0[5]]
}

/// Gives each derived port (in `claims`, in tie-break order) a MAC no other port holds: the
/// one its existing device carries if that is one of its own (first pass), else the one it
/// was given before (second pass), else its first candidate not taken (last pass, in order).
/// `fixed` are the MACs that cannot move (explicit `mac`s, bridges). `candidate(i, k)` is
/// port i's candidate k. Fails with the index of a port whose candidates are all taken.
pub fn resolve(
    fixed: impl IntoIterator<Item = Mac>,
    claims: &[Claim],
    candidate: &mut dyn FnMut(usize, u32) -> Mac,
) -> Result<Vec<Mac>, usize> {
    let mut taken: foldhash::HashSet<Key> = fixed.into_iter().map(key).collect();
    taken.reserve(claims.len());
    let mut out: Vec<Option<Mac>> = vec![None; claims.len()];
    let passes: [fn(&Claim) -> Option<Mac>; 2] = [|c| c.observed, |c| c.remembered];
    for pass in passes {
        for (i, c) in claims.iter().enumerate() {
            let (None, Some(seen)) = (out[i], pass(c)) else {
                continue;
            };
            let k = key(seen);
            let own = c.known.is_some_and(|m| key(m) == k)
                || key(c.legacy) == k
                || (0..CANDIDATES).any(|j| key(candidate(i, j)) == k);
            // Derived MACs all start with 52, so the five octets give the whole MAC back.
            if own && taken.insert(k) {
                out[i] = Some(Mac([PREFIX, k[0], k[1], k[2], k[3], k[4]]));
            }
        }
    }
    for (i, slot) in out.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let free = (0..CANDIDATES)
            .map(|j| candidate(i, j))
            .find(|m| taken.insert(key(*m)));
        *slot = Some(free.ok_or(i)?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// A derived port of a spec whose candidates are all taken: its VM and position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    pub vm: String,
    pub index: usize,
}

impl Spec {
    /// The spec with its derived MACs given out against what the host has: `observed(port)`
    /// is the MAC the device of port `port` carries, for the ports kvmnet made;
    /// `remembered(port)` the MAC it was given when last applied. `None` when every MAC stays
    /// as it is.
    pub fn settle_macs(
        &self,
        observed: &dyn Fn(&str) -> Option<Mac>,
        remembered: &dyn Fn(&str) -> Option<Mac>,
    ) -> Result<Option<Spec>, Unplaced> {
        let macs = settled(self, observed, remembered, true)?;
        if derived_ports(self).zip(&macs).all(|(p, m)| p.mac == *m) {
            return Ok(None);
        }
        let mut spec = self.clone();
        set(&mut spec, macs);
        Ok(Some(spec))
    }

    /// Gives out the derived MACs with nothing observed: what a new host would get. The
    /// ports on OVN networks (already in `self.ovn`) get theirs from [`derive_ovn_macs`].
    pub(crate) fn derive_macs(&mut self) -> Result<(), Unplaced> {
        let macs = settled(self, &|_| None, &|_| None, false)?;
        set(self, macs);
        if let Some(ovn) = self.ovn.as_mut() {
            derive_ovn_macs(&mut ovn.ports)?;
        }
        Ok(())
    }
}

/// The key OVN ports' derived MACs are hashed with: the same on every chassis.
const OVN_KEY: [u8; 16] = *b"kvmnet ovn ports";

/// Gives the ports on OVN networks that have no `mac` their derived MACs. Every chassis
/// applies the same spec and writes the same Northbound rows, so a port's MAC (in its
/// switch port's `addresses` and `port_security`, and picking its DHCP address) must come
/// out the same on each: it is made from the VM's and the port's names alone, not from
/// this host's machine ID and scope, and collisions are resolved among the OVN ports only
/// (one overlay; the host's bridges are other segments), in port name order, with nothing
/// observed on the host taken into account.
fn derive_ovn_macs(ports: &mut [super::ovn::OvnPort]) -> Result<(), Unplaced> {
    let id = HostIdentity::new(OVN_KEY, "ovn");
    let fixed: Vec<Mac> = ports
        .iter()
        .filter(|p| !p.port.mac_derived)
        .map(|p| p.port.mac)
        .collect();
    let mut order: Vec<usize> = (0..ports.len())
        .filter(|&i| ports[i].port.mac_derived)
        .collect();
    order.sort_unstable_by(|&a, &b| ports[a].port.name.cmp(&ports[b].port.name));
    let nothing = Claim {
        observed: None,
        remembered: None,
        known: None,
        legacy: Mac::default(),
    };
    let claims = vec![nothing; order.len()];
    let mut buf = Vec::with_capacity(64);
    let macs = resolve(fixed, &claims, &mut |j, k| {
        let p = &ports[order[j]].port;
        candidate_in(&mut buf, &id, &p.vm, &p.name, k)
    })
    .map_err(|j| Unplaced {
        vm: ports[order[j]].port.vm.clone(),
        index: ports[order[j]].port.index,
    })?;
    for (j, m) in macs.into_iter().enumerate() {
        // A port shared with a spec cache is copied first: the cache's stays unmade.
        std::sync::Arc::make_mut(&mut ports[order[j]].port).mac = m;
    }
    Ok(())
}

/// The ports with derived MACs, in the order of the spec's VMs and their ports.
fn derived_ports(spec: &Spec) -> impl Iterator<Item = &Port> {
    spec.vms
        .values()
        .flat_map(|v| &v.ports)
        .filter(|p| p.mac_derived)
}

/// Gives the derived ports `macs`, in [`derived_ports`] order.
fn set(spec: &mut Spec, macs: Vec<Mac>) {
    let ports = spec
        .vms
        .values_mut()
        .flat_map(|v| &mut v.ports)
        .filter(|p| p.mac_derived);
    for (p, m) in ports.zip(macs) {
        p.mac = m;
    }
}

/// Candidate `k` of `vm`'s port `port` (see [`Candidates::get`]), made in `buf`: a spec's
/// ports need one or two each, so nothing is kept per port.
fn candidate_in(buf: &mut Vec<u8>, id: &HostIdentity, vm: &str, port: &str, k: u32) -> Mac {
    buf.clear();
    let mut c = Candidates {
        key: &id.key,
        message: std::mem::take(buf),
    };
    c.message.extend_from_slice(b"kvmnet port mac v1");
    for part in [id.scope.as_str(), vm, port] {
        c.message
            .extend_from_slice(&(part.len() as u32).to_le_bytes());
        c.message.extend_from_slice(part.as_bytes());
    }
    let m = c.get(k);
    *buf = c.message;
    m
}

/// Every derived port's MAC in [`derived_ports`] order, resolved in port name order.
/// `known`: the spec's own derived MACs were resolved before (so they are the ports' own).
fn settled(
    spec: &Spec,
    observed: &dyn Fn(&str) -> Option<Mac>,
    remembered: &dyn Fn(&str) -> Option<Mac>,
    known: bool,
) -> Result<Vec<Mac>, Unplaced> {
    let fixed = spec
        .networks
        .values()
        .filter(|n| n.mode.has_bridge())
        .map(|n| naming::bridge_mac(&n.name))
        .chain(
            spec.vms
                .values()
                .flat_map(|v| &v.ports)
                .filter(|p| !p.mac_derived)
                .map(|p| p.mac),
        );
    let derived: Vec<&Port> = derived_ports(spec).collect();
    let mut order: Vec<usize> = (0..derived.len()).collect();
    order.sort_unstable_by(|&a, &b| derived[a].name.cmp(&derived[b].name));
    let claims: Vec<Claim> = order
        .iter()
        .map(|&i| {
            let p = derived[i];
            let (observed, remembered) = (observed(&p.name), remembered(&p.name));
            let known = known.then_some(p.mac);
            // The earlier derivation costs a string: made only where it can matter.
            let unknown = [observed, remembered]
                .into_iter()
                .flatten()
                .any(|m| known.is_none_or(|k| key(k) != key(m)));
            Claim {
                observed,
                remembered,
                known,
                legacy: if unknown {
                    naming::legacy_vm_mac(&p.vm, &p.name)
                } else {
                    Mac::default()
                },
            }
        })
        .collect();
    let mut buf = Vec::with_capacity(64);
    let mut candidate = |j: usize, k: u32| {
        let p = derived[order[j]];
        candidate_in(&mut buf, &spec.identity, &p.vm, &p.name, k)
    };
    let sorted = resolve(fixed, &claims, &mut candidate).map_err(|j| Unplaced {
        vm: derived[order[j]].vm.clone(),
        index: derived[order[j]].index,
    })?;
    let mut macs = vec![Mac::default(); derived.len()];
    for (j, m) in sorted.into_iter().enumerate() {
        macs[order[j]] = m;
    }
    Ok(macs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // From the SipHash paper (appendix A) and its reference implementation's vectors.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(&key, &msg[..8]), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn machine_ids_parse() {
        let id = HostIdentity::from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n", "host");
        assert_eq!(id.unwrap().key[..2], [0x3d, 0x12]);
        for bad in [
            "",
            "uninitialized\n",
            "00000000000000000000000000000000",
            "3d1219c7c4c5404aaa1f6d2a48adfda",
            "3d1219c7c4c5404aaa1f6d2a48adfdag",
        ] {
            assert!(
                HostIdentity::from_machine_id(bad, "host").is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn candidates_are_unicast_local_and_outside_the_qemu_block() {
        let id = HostIdentity::from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4", "host").unwrap();
        let mut seen = std::collections::HashSet::new();
        for vm in 0..2000 {
            let mut c = Candidates::new(&id, &format!("vm{vm}"), "kv-x-0");
            for k in 0..3 {
                let m = c.get(k);
                assert_eq!(m.0[0], 0x52);
                assert!(!m.is_multicast() && m.0[0] & 2 == 2);
                assert_ne!(m.0[1..3], [0x54, 0x00]);
                assert!(seen.insert(m), "{m} twice");
            }
        }
        // Host, scope, VM and port each change the MAC.
        let other_host =
            HostIdentity::from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda5", "host").unwrap();
        let other_scope = HostIdentity::new(id.key, "ns1");
        let a = Candidates::new(&id, "web1", "kv-web1-0").get(0);
        assert_eq!(Candidates::new(&id, "web1", "kv-web1-0").get(0), a);
        for b in [
            Candidates::new(&other_host, "web1", "kv-web1-0").get(0),
            Candidates::new(&other_scope, "web1", "kv-web1-0").get(0),
            Candidates::new(&id, "web2", "kv-web1-0").get(0),
            Candidates::new(&id, "web1", "kv-web1-1").get(0),
            // The parts are length-prefixed: moving a character between them changes it.
            Candidates::new(&id, "web1k", "v-web1-0").get(0),
        ] {
            assert_ne!(a, b);
        }
    }

    /// A deterministic pseudo-random sequence for the tests below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Candidates from a space of 24 MACs, so collisions are everywhere.
    fn tiny(name: u64, k: u32) -> Mac {
        let h = siphash24(
            &[7; 16],
            &[name.to_le_bytes(), u64::from(k).to_le_bytes()].concat(),
        );
        Mac([0x52, 0, 0, 0, 0, (h % 24) as u8])
    }

    fn legacy(name: u64) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, name as u8])
    }

    /// Resolves ports (named by numbers, given in name order) with what is observed.
    fn run(fixed: &[Mac], names: &[u64], observed: &dyn Fn(u64) -> Option<Mac>) -> Vec<Mac> {
        run_with(fixed, names, observed, &|_| None)
    }

    fn run_with(
        fixed: &[Mac],
        names: &[u64],
        observed: &dyn Fn(u64) -> Option<Mac>,
        remembered: &dyn Fn(u64) -> Option<Mac>,
    ) -> Vec<Mac> {
        let claims: Vec<Claim> = names
            .iter()
            .map(|&n| Claim {
                observed: observed(n),
                remembered: remembered(n),
                known: None,
                legacy: legacy(n),
            })
            .collect();
        resolve(fixed.iter().copied(), &claims, &mut |i, k| {
            tiny(names[i], k)
        })
        .unwrap()
    }

    /// Adding ports, in any name order, never moves the MAC of a port that exists; every MAC
    /// is unique and one of its port's own.
    #[test]
    fn existing_ports_never_move_when_ports_are_added() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let fixed: Vec<Mac> = (0..rng.next() % 3)
                .map(|_| Mac([0x02, 0, 0, 0, 0, (rng.next() % 24) as u8]))
                .collect();
            let mut names: Vec<u64> = (0..1 + rng.next() % 8).map(|_| rng.next() % 1000).collect();
            names.sort();
            names.dedup();
            let before = run(&fixed, &names, &|_| None);
            let host: HashMap<u64, Mac> = names.iter().copied().zip(before.clone()).collect();
            let mut more = names.clone();
            more.extend((0..1 + rng.next() % 6).map(|_| rng.next() % 1000));
            more.sort();
            more.dedup();
            let after = run(&fixed, &more, &|n| host.get(&n).copied());
            let mut keys = std::collections::HashSet::new();
            for (n, m) in more.iter().zip(&after) {
                if let Some(b) = host.get(n) {
                    assert_eq!(m, b, "port {n} moved: {names:?} -> {more:?}");
                }
                assert!(keys.insert(key(*m)), "{m} twice");
                assert!(!fixed.iter().any(|f| key(*f) == key(*m)));
                assert!((0..CANDIDATES).any(|k| tiny(*n, k) == *m));
            }
            // And settling again against the new host changes nothing.
            let host2: HashMap<u64, Mac> = more.iter().copied().zip(after.clone()).collect();
            assert_eq!(run(&fixed, &more, &|n| host2.get(&n).copied()), after);
        }
    }

    #[test]
    fn name_order_breaks_ties_between_new_ports_only() {
        // Find two ports whose first candidates collide.
        let (a, b) = (0..1000u64)
            .flat_map(|a| (a + 1..1000).map(move |b| (a, b)))
            .find(|&(a, b)| tiny(a, 0) == tiny(b, 0))
            .unwrap();
        let fresh = run(&[], &[a, b], &|_| None);
        assert_eq!(fresh[0], tiny(a, 0), "the first in name order wins");
        // b exists with that MAC and a is added: b keeps it, a takes its next free one.
        let m = tiny(b, 0);
        let later = run(&[], &[a, b], &|n| (n == b).then_some(m));
        assert_eq!(later[1], m);
        assert_ne!(later[0], m);
        // An explicit MAC cannot move: the existing derived port gives way.
        let forced = run(&[Mac([0x0a, 0, 0, 0, 0, m.0[5]])], &[b], &|_| Some(m));
        assert_ne!(forced[0].0[5], m.0[5]);
    }

    #[test]
    fn the_earlier_derivation_is_kept_where_a_port_carries_it() {
        let host_end = |m: Mac| naming::host_end_mac(m);
        let got = run(&[], &[1, 2], &|n| Some(host_end(legacy(n))));
        assert_eq!(got, [legacy(1), legacy(2)]);
        // A MAC that is none of the port's own (say a `mac` since removed) is not adopted.
        let got = run(&[], &[1], &|_| Some(Mac([0xfe, 9, 9, 9, 9, 9])));
        assert_eq!(got, [tiny(1, 0)]);
    }

    /// A host that rebooted has none of its ports: the MACs they were given come back, ahead
    /// of any new port and below what exists.
    #[test]
    fn remembered_macs_come_back_after_the_ports_went_away() {
        let (a, b) = (0..1000u64)
            .flat_map(|a| (a + 1..1000).map(move |b| (a, b)))
            .find(|&(a, b)| tiny(a, 0) == tiny(b, 0))
            .unwrap();
        // b was there first and kept the first candidate; a took another. Both gone now.
        let before = run(&[], &[a, b], &|n| (n == b).then_some(tiny(b, 0)));
        let memory: HashMap<u64, Mac> = [(a, before[0]), (b, before[1])].into();
        let after = run_with(&[], &[a, b], &|_| None, &|n| memory.get(&n).copied());
        assert_eq!(after, before);
        // Without the memory, name order would have swapped them.
        assert_ne!(run(&[], &[a, b], &|_| None), before);
        // What exists wins over what is remembered.
        let live = run_with(&[], &[a, b], &|n| (n == a).then_some(tiny(a, 0)), &|n| {
            memory.get(&n).copied()
        });
        assert_eq!(live[0], tiny(a, 0));
        assert_ne!(live[1], tiny(a, 0));
        // The earlier derivation, remembered, comes back too.
        let got = run_with(&[], &[5], &|_| None, &|_| Some(legacy(5)));
        assert_eq!(got, [legacy(5)]);
    }

    #[test]
    fn a_port_without_a_free_candidate_is_reported() {
        let fixed: Vec<Mac> = (0..24).map(|i| Mac([0x02, 0, 0, 0, 0, i])).collect();
        let claims = [Claim {
            observed: None,
            remembered: None,
            known: None,
            legacy: legacy(1),
        }];
        assert_eq!(resolve(fixed, &claims, &mut |_, k| tiny(1, k)), Err(0));
    }

    /// Two hosts (and two scopes of one) derive different MACs for their kernel ports, and the
    /// same for the ports on OVN networks, which every chassis writes into one database.
    #[test]
    fn ovn_ports_derive_the_same_mac_on_every_host() {
        let text = "version: 1\novn:\n  nb: tcp:192.0.2.1:6641\n  sb: tcp:192.0.2.1:6642\n  \
                    chassis:\n    hv1: { encap_ip: 172.31.0.1 }\n    hv2: { encap_ip: 172.31.0.2 }\n\
                    networks:\n  web: { backend: ovn, mode: isolated, ipv4: 10.80.0.1/24 }\n  \
                    lan: { mode: isolated, ipv4: 10.81.0.1/24 }\nvms:\n  a:\n    host: hv1\n    ports:\n      \
                    - { network: web }\n      - { network: lan }\n  b:\n    host: hv2\n    \
                    ports:\n      - { network: web }\n      \
                    - { network: web, mac: \"52:54:00:00:00:01\" }\n";
        let hosts = [
            HostIdentity::from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4", "host").unwrap(),
            HostIdentity::from_machine_id("77f0bd7bba1b4c4b8b3e8b6f7e0d2a11", "host").unwrap(),
            HostIdentity::from_machine_id("77f0bd7bba1b4c4b8b3e8b6f7e0d2a11", "ns1").unwrap(),
        ];
        let specs: Vec<Spec> = hosts
            .iter()
            .map(|id| crate::spec::parse(text, id).unwrap())
            .collect();
        let ovn_macs = |s: &Spec| -> Vec<(String, Mac, bool)> {
            let ovn = s.ovn.as_ref().unwrap();
            ovn.ports
                .iter()
                .map(|p| (p.port.name.clone(), p.port.mac, p.port.mac_derived))
                .collect()
        };
        let first = ovn_macs(&specs[0]);
        assert_eq!(first.len(), 3);
        assert!(first.iter().filter(|p| p.2).all(|p| p.1.0[0] == PREFIX));
        let derived: Vec<Mac> = first.iter().filter(|p| p.2).map(|p| p.1).collect();
        assert_eq!(derived.len(), 2);
        assert_ne!(derived[0], derived[1]);
        for s in &specs[1..] {
            assert_eq!(ovn_macs(s), first);
        }
        let lan = |s: &Spec| s.vms["a"].ports[0].mac;
        assert_ne!(lan(&specs[0]), lan(&specs[1]));
        assert_ne!(lan(&specs[1]), lan(&specs[2]));
    }
}
