//! `kvmnet import libvirt` on untrusted XML.

use kvmnet::import::{ImportError, Inputs, import};

/// A network's XML, then (after a NUL byte) a domain's: the import never panics, and the spec
/// it writes is always well-formed YAML. (It checks its output with the validator before
/// printing it: a value kvmnet cannot take, like an interface name with a quote in it, is
/// refused there by name; a YAML syntax error would be the writer's bug.)
pub fn import_libvirt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(2, '\0');
    let network = parts.next().unwrap_or_default().to_string();
    let domains = parts
        .next()
        .map(|d| vec![("domain.xml".to_string(), d.to_string())])
        .unwrap_or_default();
    let inputs = Inputs {
        networks: vec![("network.xml".to_string(), network)],
        domains,
        nwfilter: None,
    };
    if let Err(errors) = import(&inputs) {
        for e in &errors {
            if let ImportError::Unmapped { message, .. } = e {
                assert!(
                    !(message.contains("the imported spec is not valid")
                        && message.contains("YAML syntax error")),
                    "the import wrote malformed YAML: {message}"
                );
            }
        }
    }
}
