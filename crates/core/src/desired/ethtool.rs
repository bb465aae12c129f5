//! The ethtool feature: ports' settings, foreign interfaces' settings (`host.ethtool`), and
//! the originals of foreign settings the spec no longer makes, restored.

use super::*;

impl Build<'_> {
    pub(super) fn ethtool(&mut self) {
        let Build {
            spec,
            snap,
            links,
            st,
            errors,
            ..
        } = self;
        let (spec, snap) = (*spec, *snap);
        for vm in spec.vms.values() {
            for port in &vm.ports {
                let Some(e) = &port.ethtool else { continue };
                let kind = match port.kind {
                    SpecPortKind::Tap => "tun",
                    SpecPortKind::Veth => "veth",
                    SpecPortKind::Macvtap => "macvtap",
                };
                // What an existing device of the same kind reports is what the new one will.
                if links.get(&port.name).is_some_and(|l| l.kind == kind) {
                    check_ethtool(spec, snap, &port.name, e, errors);
                }
                st.ethtool.insert(port.name.clone(), e.settings.clone());
            }
        }
        for (dev, e) in &spec.host.ethtool {
            match links.get(dev) {
                None => errors.push(conflict(
                    spec,
                    e.path.clone(),
                    format!("interface '{dev}' does not exist on this host"),
                )),
                Some(l) if is_ours(l) => errors.push(conflict(
                    spec,
                    e.path.clone(),
                    format!("'{dev}' is a device kvmnet created; set ethtool on its port instead"),
                )),
                Some(_) => {
                    check_ethtool(spec, snap, dev, e, errors);
                    st.ethtool.insert(dev.clone(), e.settings.clone());
                }
            }
        }
        for (dev, orig) in &snap.ethtool_originals {
            if links.get(dev).is_some() {
                let w = st.ethtool.entry(dev.clone()).or_default();
                for (k, v) in orig {
                    w.entry(k.clone()).or_insert(*v);
                }
            }
        }
    }
}

/// Settings a device cannot take, found before anything changes: ring and channel counts
/// beyond what it reports (or of a kind it has none of), offloads it does not report.
fn check_ethtool(
    spec: &Spec,
    snap: &Snapshot,
    dev: &str,
    e: &crate::spec::Ethtool,
    errors: &mut Vec<SpecError>,
) {
    let Some(have) = snap.ethtool.get(dev) else {
        return;
    };
    for (k, v) in &e.settings {
        let msg = if k.contains('.') {
            match have.max.get(k) {
                None => Some(format!(
                    "'{dev}' does not support {} settings (the kernel refuses them for this device)",
                    k.split('.').next().unwrap_or(k)
                )),
                Some(0) => Some(format!("'{dev}' has no {k} to set (its maximum is 0)")),
                Some(m) if v > m => Some(format!(
                    "{k} {v} is more than '{dev}' supports (at most {m})"
                )),
                Some(_) => None,
            }
        } else if !have.values.contains_key(k) {
            Some(format!("'{dev}' does not report the {k} offload"))
        } else {
            None
        };
        if let Some(m) = msg {
            errors.push(conflict(spec, e.field_path(k), m));
        }
    }
}
