//! Which libvirt network filters kvmnet's guard stands for: `clean-traffic`, and a filter
//! (from `--nwfilter DIR`, libvirt's `/etc/libvirt/nwfilter`) that only refers to
//! clean-traffic or to filters that do. A filter with rules of its own, or one that refers
//! to only part of clean-traffic, has no faithful mapping: the guard is one fixed set.

use std::path::Path;

use roxmltree::Document;

use super::xml::{describe, elements, is};

/// The stock filter kvmnet's guard stands for.
const CLEAN_TRAFFIC: &str = "clean-traffic";

/// How deep filters may refer to filters (libvirt refuses loops; this stops them here).
const MAX_DEPTH: usize = 8;

/// `Ok` when filter `name` is clean-traffic; else why not, with the place in the filter's
/// file that says so.
pub fn check(dir: Option<&Path>, name: &str) -> Result<(), String> {
    check_depth(dir, name, 0)
}

fn check_depth(dir: Option<&Path>, name: &str, depth: usize) -> Result<(), String> {
    if name == CLEAN_TRAFFIC {
        return Ok(());
    }
    let Some(dir) = dir else {
        return Err(format!(
            "filter '{name}' is not clean-traffic, which is the filter kvmnet's guard stands for; give --nwfilter DIR with its definition if it only refers to clean-traffic"
        ));
    };
    if depth >= MAX_DEPTH || name.contains('/') || name.is_empty() {
        return Err(format!("filter '{name}' cannot be followed"));
    }
    let path = dir.join(format!("{name}.xml"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "filter '{name}': cannot read {}: {}",
            path.display(),
            crate::error::io_message(&e)
        )
    })?;
    let doc = Document::parse(&text).map_err(|e| {
        format!(
            "filter '{name}': {} is not well-formed XML: {e}",
            path.display()
        )
    })?;
    let root = doc.root_element();
    let at = |n: roxmltree::Node| {
        let p = doc.text_pos_at(n.range().start);
        format!("{}:{}:{}: {}", path.display(), p.row, p.col, describe(n))
    };
    if !is(root, "filter") {
        return Err(format!("{}: not a libvirt filter", at(root)));
    }
    let mut refs = 0;
    for e in elements(root) {
        match e.tag_name().name() {
            "uuid" => {}
            "filterref" => {
                let inner = e.attribute("filter").unwrap_or("");
                if e.attribute_node("filter").is_none() || elements(e).next().is_some() {
                    return Err(format!(
                        "{}: a filter reference with parameters has no mapping in kvmnet's guard",
                        at(e)
                    ));
                }
                check_depth(Some(dir), inner, depth + 1)?;
                refs += 1;
            }
            _ => {
                return Err(format!(
                    "{}: filter '{name}' has rules of its own, and kvmnet's guard is a fixed set (it stands only for clean-traffic)",
                    at(e)
                ));
            }
        }
    }
    if refs == 0 {
        return Err(format!("{}: filter '{name}' filters nothing", at(root)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_traffic_and_filters_made_of_it() {
        assert!(check(None, "clean-traffic").is_ok());
        let e = check(None, "no-mac-spoofing").unwrap_err();
        assert!(e.contains("--nwfilter"), "{e}");
        let dir = std::env::temp_dir().join(format!("kvmnet-nwfilter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("mine.xml"),
            "<filter name='mine' chain='root'>\n  <uuid>x</uuid>\n  <filterref filter='clean-traffic'/>\n</filter>\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("ssh.xml"),
            "<filter name='ssh'>\n  <filterref filter='mine'/>\n  <rule action='accept' direction='in'><tcp dstportstart='22'/></rule>\n</filter>\n",
        )
        .unwrap();
        assert!(check(Some(&dir), "mine").is_ok());
        let e = check(Some(&dir), "ssh").unwrap_err();
        assert!(e.contains("ssh.xml:3:3: <rule"), "{e}");
        assert!(
            check(Some(&dir), "absent")
                .unwrap_err()
                .contains("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
