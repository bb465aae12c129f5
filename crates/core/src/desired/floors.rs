//! Floors: a network's `bandwidth` shapes its bridge, and each port's `qos.floor` is a
//! guaranteed share of it (an HTB class per VM, numbered stably).

use super::*;

impl Build<'_> {
    pub(super) fn floors(&mut self) {
        let Build {
            spec, links, st, ..
        } = self;
        let spec = *spec;
        for net in spec.networks.values() {
            if let Some(bandwidth) = net.bandwidth_bps {
                let live = links.get(&net.bridge).and_then(|l| l.shaping.as_ref());
                st.shaping
                    .insert(net.bridge.clone(), shaping(spec, net, bandwidth, live));
            }
        }
    }
}

/// A network's shaping. A VM keeps the class it has on the live tree; a new floor takes the
/// lowest free one, so adding or removing a VM never renumbers the others.
fn shaping(
    spec: &Spec,
    net: &crate::spec::Network,
    bandwidth: u64,
    live: Option<&Shaping>,
) -> Shaping {
    let bytes = |bps: u64| bps / 8 * 8;
    let wanted: BTreeMap<Mac, u64> = spec
        .vms
        .values()
        .flat_map(|vm| &vm.ports)
        .filter(|p| p.network == net.name)
        .filter_map(|p| Some((p.mac, bytes(p.qos.as_ref()?.floor_bps?))))
        .collect();
    let kept: BTreeMap<Mac, u16> = live
        .map(|l| {
            l.floors
                .iter()
                .filter(|(mac, _)| wanted.contains_key(mac))
                .map(|(mac, f)| (*mac, f.class))
                .collect()
        })
        .unwrap_or_default();
    let mut used: BTreeSet<u16> = kept.values().copied().collect();
    let mut next = FLOOR_CLASS_MIN;
    let mut floors = BTreeMap::new();
    for (mac, rate) in wanted {
        let class = match kept.get(&mac) {
            Some(c) => *c,
            None => {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                next
            }
        };
        floors.insert(mac, FloorClass { rate, class });
    }
    Shaping {
        bandwidth: bytes(bandwidth),
        floors,
        intact: true,
    }
}
