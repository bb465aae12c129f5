//! [`super::model::rows`] for a process that plans one spec again and again, a little
//! changed each time (the daemon): each network's rows are kept while its ports and the
//! rest of the spec's OVN part stay as they were. When its ports change, its switch-wide
//! rows are made again (a few: the switch, DHCP, isolation, DNS), and of its ports' own
//! rows only those of the ports whose entry or picked addresses changed. Anything else of
//! the OVN part changed, everything is made again.
//!
//! The rows are shared (`Arc`), and a row made again that equals the one kept stays the one
//! kept. After observing, [`RowsMemo::adopt`] has the wanted rows that equal observed ones
//! take the observed copies: the daemon's view of the database keeps a row's copy until
//! the row changes there, so from the next plan on, the comparison of an unchanged row is
//! of two pointers, not of two rows. At 10,000 ports, one port added, comparing took 14 ms
//! and making the rows 28 (8 now, most of it the firewalls' port groups, made whole).
//!
//! What this gives is always exactly what [`super::model::rows`] gives (a test checks it
//! through adds, removals, edits and head changes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::NbRow;
use super::model;
use crate::spec::ovn::{Ovn, OvnPort};

/// The rows by id, as a host state holds them. The ids are shared: copying the map (a
/// daemon's view of the database hands one to every plan) copies no text.
pub type RowMap = BTreeMap<Arc<str>, Arc<NbRow>>;

/// What [`RowsMemo::rows`] made last (see the module's comment).
#[derive(Default)]
pub struct RowsMemo {
    /// The spec's OVN part the kept rows were made from, but for its ports.
    head: Option<Ovn>,
    /// Each network's ports and rows (by id, in the order the model lists them).
    nets: HashMap<String, Kept>,
    /// Where each kept row is: its network and its place there.
    places: HashMap<Arc<str>, (Arc<str>, usize)>,
    /// The ids of the rows made anew and not yet adopted (a row this process creates is
    /// adopted at the plan after, once the database has it): the only ones
    /// [`RowsMemo::adopt`] looks at.
    fresh: HashSet<Arc<str>>,
}

struct Kept {
    ports: Vec<OvnPort>,
    rows: Vec<(Arc<str>, Arc<NbRow>)>,
    /// Each port's own rows (where in `rows`), with what was picked for it.
    own: HashMap<String, (Picks, std::ops::Range<usize>)>,
}

/// What was picked for a port: its rows read nothing else of the other ports.
type Picks = (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>);

/// The spec's OVN part but for its ports: what every network's rows may read.
fn head_of(ovn: &Ovn) -> Ovn {
    let Ovn {
        nb,
        sb,
        ovs,
        datapath,
        encap,
        underlay_mtu,
        chassis,
        external,
        ssl,
        networks,
        ports: _,
        local,
    } = ovn;
    Ovn {
        nb: nb.clone(),
        sb: sb.clone(),
        ovs: ovs.clone(),
        datapath: datapath.clone(),
        encap: encap.clone(),
        underlay_mtu: *underlay_mtu,
        chassis: chassis.clone(),
        external: external.clone(),
        ssl: ssl.clone(),
        networks: networks.clone(),
        ports: Vec::new(),
        local: local.clone(),
    }
}

fn same_ports(kept: &[OvnPort], now: &[&OvnPort]) -> bool {
    kept.len() == now.len() && kept.iter().zip(now).all(|(a, b)| a == *b)
}

impl RowsMemo {
    /// Every row `ovn` wants, by id: [`super::model::rows`], made again only where it
    /// changed.
    pub fn rows(&mut self, ovn: &Ovn) -> RowMap {
        let head = head_of(ovn);
        if self.head.as_ref() != Some(&head) {
            self.nets.clear();
            self.places.clear();
            self.fresh.clear();
            self.head = Some(head);
        }
        let fresh = |rows: Vec<NbRow>| rows.into_iter().map(|r| (r.id().into(), Arc::new(r)));
        let mut all: Vec<(Arc<str>, Arc<NbRow>)> = fresh(model::router_rows(ovn)).collect();
        let routers = all.len();
        let nets = model::by_network(ovn);
        for (net, ports) in &nets {
            if !self
                .nets
                .get(&net.name)
                .is_some_and(|k| same_ports(&k.ports, ports))
            {
                self.make_again(ovn, net, ports);
            }
            all.extend(self.nets[&net.name].rows.iter().cloned());
        }
        if self.nets.len() != nets.len() {
            let named: std::collections::HashSet<&str> =
                nets.iter().map(|(n, _)| n.name.as_str()).collect();
            self.nets.retain(|n, _| named.contains(n.as_str()));
            self.places.retain(|_, (n, _)| named.contains(&**n));
        }
        let tail = all.len();
        all.extend(fresh(model::tail_rows(ovn)));
        let made = all[..routers].iter().chain(&all[tail..]);
        self.fresh.extend(made.map(|(id, _)| Arc::clone(id)));
        // Sorted runs, merged: and of two rows of one id, the later one, as `collect` keeps.
        all.into_iter().collect()
    }

    /// Makes network `net`'s rows again: a port whose entry and picked addresses did not
    /// change keeps its rows as they are (2,500 ports of one network, one of them new, are
    /// one port's rows made), and a row made again equal to the kept one stays the kept copy.
    fn make_again(&mut self, ovn: &Ovn, net: &crate::spec::model::Network, ports: &[&OvnPort]) {
        let old = self.nets.remove(&net.name);
        let empty = Kept {
            ports: Vec::new(),
            rows: Vec::new(),
            own: HashMap::new(),
        };
        let old = old.unwrap_or(empty);
        for (id, _) in &old.rows {
            self.places.remove(id);
        }
        let was: HashMap<&str, &OvnPort> = old
            .ports
            .iter()
            .map(|p| (p.port.name.as_str(), p))
            .collect();
        let before: HashMap<&str, &Arc<NbRow>> =
            old.rows.iter().map(|(id, r)| (&**id, r)).collect();
        let mut made = Vec::new();
        let mut keep = |r: NbRow| {
            let id: Arc<str> = r.id().into();
            let row = match before.get(&*id) {
                Some(b) if ***b == r => Arc::clone(b),
                _ => {
                    made.push(Arc::clone(&id));
                    Arc::new(r)
                }
            };
            (id, row)
        };
        let (shared, addrs, switch) = model::network_parts(ovn, net, ports);
        let mut rows: Vec<(Arc<str>, Arc<NbRow>)> = shared.into_iter().map(&mut keep).collect();
        let mut own = HashMap::with_capacity(ports.len());
        for p in ports {
            let name = p.port.name.as_str();
            let picks = addrs.of(name);
            let start = rows.len();
            match old.own.get(name) {
                Some((kept_picks, range))
                    if *kept_picks == picks && was.get(name).is_some_and(|w| *w == *p) =>
                {
                    rows.extend(old.rows[range.clone()].iter().cloned());
                }
                _ => rows.extend(
                    model::port_rows(net, &p.port, &addrs, &switch)
                        .into_iter()
                        .map(&mut keep),
                ),
            }
            own.insert(name.to_string(), (picks, start..rows.len()));
        }
        self.fresh.extend(made);
        let name: Arc<str> = net.name.as_str().into();
        for (i, (id, _)) in rows.iter().enumerate() {
            self.places.insert(Arc::clone(id), (Arc::clone(&name), i));
        }
        let ports = ports.iter().map(|p| (*p).clone()).collect();
        self.nets
            .insert(net.name.clone(), Kept { ports, rows, own });
    }

    /// Each row of `want` made anew and not adopted yet that equals `have`'s row of its id
    /// takes `have`'s copy, here and in what is kept (see the module's comment); it is
    /// adopted then. The other rows took theirs before: walking all 20,000 rows of 10,000
    /// ports to find the few new ones took a millisecond. (A kept row whose copy in the
    /// database changes later, by another's hand, compares whole from then on: slower, the
    /// same plan.)
    pub fn adopt(&mut self, want: &mut RowMap, have: &RowMap) {
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.retain(|id| {
            let Some(w) = want.get_mut(id) else {
                return false;
            };
            let Some(hr) = have.get(id) else {
                // Not in the database yet: adopted once it is.
                return true;
            };
            if Arc::ptr_eq(w, hr) {
                return false;
            }
            if **w != **hr {
                return true;
            }
            *w = Arc::clone(hr);
            if let Some((net, i)) = self.places.get(id)
                && let Some(k) = self.nets.get_mut(&**net)
                && let Some(slot) = k.rows.get_mut(*i)
            {
                slot.1 = Arc::clone(hr);
            }
            false
        });
        self.fresh = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HostIdentity, parse};

    const HEAD: &str = r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: { encap_ip: 172.31.0.1 }
networks:
  web:
    backend: ovn
    mode: routed
    ipv4: 10.80.0.1/16
    dhcp: { range: 10.80.200.1-10.80.200.200 }
    dns: { domain: web.test }
  lan:
    backend: ovn
    mode: isolated
    ipv4: 10.81.0.1/16
    isolate_ports: true
vms:
"#;

    fn spec(head: &str, vms: &[(usize, &str, &str)]) -> Ovn {
        let mut text = head.to_string();
        for (i, net, fw) in vms {
            text.push_str(&format!(
                "  v{i}:\n    host: hv1\n    ports:\n      - {{ network: {net}, mac: \"52:54:00:00:00:{i:02x}\"{fw} }}\n"
            ));
        }
        parse(&text, &HostIdentity::default())
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .ovn
            .expect("an OVN part")
    }

    fn made(ovn: &Ovn) -> RowMap {
        model::rows(ovn)
            .into_iter()
            .map(|r| (r.id().into(), Arc::new(r)))
            .collect()
    }

    /// Through adds, removals, a firewall edited, a network emptied and the head changed,
    /// the memo gives what the model gives; rows that did not change keep their copy, and
    /// adopted copies are kept.
    #[test]
    fn gives_what_the_model_gives() {
        let fw =
            ", firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22] } ] } }";
        let mut vms: Vec<(usize, &str, &str)> = (0..30)
            .map(|i| (i, if i % 3 == 0 { "lan" } else { "web" }, fw))
            .collect();
        let mut memo = RowsMemo::default();
        let first = memo.rows(&spec(HEAD, &vms));
        assert_eq!(first, made(&spec(HEAD, &vms)));

        // What the database holds: equal rows, other copies. Adopted, they are what the
        // next call gives for unchanged networks.
        let have: RowMap = first
            .iter()
            .map(|(id, r)| (id.clone(), Arc::new(NbRow::clone(r))))
            .collect();
        let mut want = first.clone();
        memo.adopt(&mut want, &have);
        assert!(want.iter().all(|(id, r)| Arc::ptr_eq(r, &have[id])));

        vms.push((30, "web", ""));
        let second = memo.rows(&spec(HEAD, &vms));
        assert_eq!(second, made(&spec(HEAD, &vms)));
        let lan_port = "Logical_Switch_Port v0-lan";
        let kept = second
            .iter()
            .filter(|(id, _)| &***id == lan_port || id.contains("lan"))
            .filter(|(id, r)| have.get(*id).is_some_and(|h| Arc::ptr_eq(h, r)))
            .count();
        assert!(
            kept > 0,
            "the unchanged network's rows are the adopted copies"
        );
        let web_switch = second
            .iter()
            .find(|(id, _)| id.starts_with("Logical_Switch ") && id.ends_with("web"))
            .expect("the web switch");
        assert!(
            Arc::ptr_eq(web_switch.1, &have[web_switch.0]),
            "a row made again equal to the kept one stays the kept (adopted) copy"
        );
        let ports_kept = second
            .iter()
            .filter(|(id, _)| id.starts_with("Logical_Switch_Port ") && have.contains_key(*id))
            .all(|(id, r)| Arc::ptr_eq(r, &have[id]));
        assert!(
            ports_kept,
            "the other ports of the network that changed keep their rows"
        );

        // Rows made while the database does not have them yet (a first apply) are adopted
        // at the plan after, though that plan makes nothing anew.
        let mut memo = RowsMemo::default();
        let mut want = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut want, &RowMap::new());
        let have: RowMap = want
            .iter()
            .map(|(id, r)| (id.clone(), Arc::new(NbRow::clone(r))))
            .collect();
        let mut again = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut again, &have);
        assert!(again.iter().all(|(id, r)| Arc::ptr_eq(r, &have[id])));
        let third = memo.rows(&spec(HEAD, &vms));
        assert!(
            third
                .iter()
                .filter(|(id, _)| id.starts_with("Logical_Switch_Port "))
                .all(|(id, r)| Arc::ptr_eq(r, &have[id])),
            "kept as adopted"
        );

        for step in 0..4 {
            match step {
                0 => vms.retain(|v| v.0 != 4),
                1 => vms[2].2 = "",
                2 => vms.retain(|v| v.1 != "lan"),
                _ => {}
            }
            let head = if step == 3 {
                HEAD.replace("isolate_ports: true", "isolate_ports: false")
            } else {
                HEAD.to_string()
            };
            let ovn = spec(&head, &vms);
            assert_eq!(memo.rows(&ovn), made(&ovn), "step {step}");
        }
    }
}
