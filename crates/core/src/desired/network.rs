//! A network's bridge, the same for every mode that has one: its name must be free, it
//! carries the gateway's address, and the mode hangs its lower device under it.

use super::*;

impl Build<'_> {
    /// The network's bridge, with what its mode puts under it
    /// ([`crate::modes::NetworkMode::lower`]).
    pub(crate) fn bridge_network(&mut self, net: &Network, npath: &str) {
        if self.links.foreign(&net.bridge).is_some() {
            self.conflict(
                path_join(npath, "bridge"),
                format!(
                    "interface '{}' already exists and is not managed by kvmnet; choose another bridge name",
                    net.bridge
                ),
            );
        }
        let mut br = BridgeDraft {
            mac: bridge_mac(&net.name),
            mtu: net.mtu.unwrap_or(DEFAULT_MTU),
            addrs: net
                .ipv4
                .iter()
                .map(|gw| Addr::with_standard_broadcast(*gw))
                .collect(),
            routes: Vec::new(),
        };
        net.mode.behaviour().lower(self, net, npath, &mut br);
        self.st.bridges.insert(
            net.bridge.clone(),
            BridgeLink {
                name: net.bridge.clone(),
                network: net.name.clone(),
                mac: br.mac,
                mtu: br.mtu,
                up: true,
            },
        );
        self.st.addrs.insert(net.bridge.clone(), br.addrs);
        let v6: Vec<_> = net.ipv6.iter().map(|v| v.gateway).collect();
        if !v6.is_empty() {
            self.st.addrs6.insert(net.bridge.clone(), v6);
        }
        self.st.routes.insert(net.bridge.clone(), br.routes);
    }
}
