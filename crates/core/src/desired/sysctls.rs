//! Sysctls: the tuning profile's, those a network or firewall implies, the spec's own, and
//! the originals of those kvmnet no longer manages, given back.

use super::*;

/// sysctl values are compared the way the kernel prints them: fields separated by blanks.
pub fn normalize_sysctl(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// sysctls that come only from the tuning profile: skipped where this host (or namespace)
/// does not have them, rather than refused.
pub(super) fn tuning_only(spec: &Spec) -> BTreeSet<String> {
    spec.host
        .tuning
        .map(|t| t.sysctls())
        .unwrap_or_default()
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !spec.host.sysctl.contains_key(k))
        .collect()
}

/// The sysctls kvmnet enforces for this spec (profile, implied, explicit: later wins),
/// without restores.
pub fn managed_sysctls(spec: &Spec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(t) = spec.host.tuning {
        for (k, v) in t.sysctls() {
            out.insert(k.to_string(), v.to_string());
        }
    }
    if spec.networks.values().any(|n| n.mode.forwarding()) {
        out.insert(IP_FORWARD.to_string(), "1".to_string());
    }
    if spec
        .networks
        .values()
        .any(|n| n.mode.forwarding() && n.ipv6.is_some())
    {
        out.insert(IP6_FORWARD.to_string(), "1".to_string());
    }
    if spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .any(|p| p.firewall.is_some())
    {
        out.insert(BRIDGE_NF.to_string(), "1".to_string());
        out.insert(BRIDGE_NF6.to_string(), "1".to_string());
    }
    for (k, v) in &spec.host.sysctl {
        out.insert(k.clone(), normalize_sysctl(v));
    }
    out
}

impl Build<'_> {
    pub(super) fn sysctls(&mut self) {
        let Build {
            spec,
            snap,
            st,
            errors,
            ..
        } = self;
        let (spec, snap) = (*spec, *snap);
        let managed = managed_sysctls(spec);
        let optional = tuning_only(spec);
        let in_netns = snap.scope != "host";
        for (k, v) in &managed {
            let usable =
                matches!(snap.sysctls.get(k), Some(Some(_))) && !snap.sysctl_readonly.contains(k);
            if optional.contains(k) && !usable {
                continue;
            }
            let path = path_join("host.sysctl", k);
            if in_netns && !k.starts_with("net.") {
                errors.push(conflict(
                spec,
                path,
                format!(
                    "'{k}' is not per network namespace; only net.* sysctls can be set with --netns"
                ),
            ));
                continue;
            }
            match snap.sysctls.get(k) {
            Some(Some(_)) if snap.sysctl_readonly.contains(k) => errors.push(conflict(
                spec,
                path,
                format!("sysctl '{k}' is read-only here (only the host's initial namespace can change it)"),
            )),
            Some(Some(_)) => {
                st.sysctls.insert(k.clone(), v.clone());
            }
            _ => errors.push(conflict(
                spec,
                path,
                format!(
                    "no sysctl '{k}' here (/proc/sys/{} does not exist)",
                    k.replace('.', "/")
                ),
            )),
        }
        }
        for (k, orig) in &snap.sysctl_originals {
            if !managed.contains_key(k) && matches!(snap.sysctls.get(k), Some(Some(_))) {
                st.sysctls.insert(k.clone(), normalize_sysctl(orig));
            }
        }
    }
}
