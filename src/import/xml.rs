//! Reading libvirt XML strictly: every attribute and child element an element has must be
//! one the reader takes, and whatever is not is reported at its line and column with the
//! reason it has no mapping.

use roxmltree::{Document, Node};

use super::ImportError;

/// Where refusals and notes of one file go.
pub struct Report<'a> {
    pub file: &'a str,
    errors: &'a mut Vec<ImportError>,
    notes: &'a mut Vec<String>,
}

impl<'a> Report<'a> {
    pub fn new(
        file: &'a str,
        errors: &'a mut Vec<ImportError>,
        notes: &'a mut Vec<String>,
    ) -> Report<'a> {
        Report {
            file,
            errors,
            notes,
        }
    }

    /// Parses the text, or reports where it is not well-formed.
    pub fn parse<'t>(&mut self, text: &'t str) -> Option<Document<'t>> {
        match Document::parse(text) {
            Ok(d) => Some(d),
            Err(e) => {
                let p = e.pos();
                self.errors.push(ImportError::Xml {
                    file: self.file.to_string(),
                    line: p.row,
                    col: p.col,
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// `node` has no faithful mapping (or a value kvmnet cannot take): `message` says why.
    pub fn refuse(&mut self, node: Node, message: impl Into<String>) {
        let p = node.document().text_pos_at(node.range().start);
        self.errors.push(ImportError::Unmapped {
            file: self.file.to_string(),
            line: p.row,
            col: p.col,
            element: describe(node),
            message: message.into(),
        });
    }

    /// Refuses `node` as having no faithful mapping.
    pub fn unmapped(&mut self, node: Node, why: &str) {
        self.refuse(node, format!("no faithful mapping in kvmnet ({why})"));
    }

    /// A libvirt behaviour that is not carried over but changes no address: said on stderr.
    pub fn note(&mut self, node: Node, message: &str) {
        let p = node.document().text_pos_at(node.range().start);
        self.notes.push(format!(
            "{}:{}:{}: {}: {message}",
            self.file,
            p.row,
            p.col,
            describe(node)
        ));
    }

    /// Where `node` is, for a refusal made later (when networks and domains are merged).
    pub fn place(&self, node: Node) -> super::model::Place {
        let p = node.document().text_pos_at(node.range().start);
        super::model::Place {
            file: self.file.to_string(),
            line: p.row,
            col: p.col,
            element: describe(node),
        }
    }

    /// A refusal made from a place kept earlier.
    pub fn refuse_at(&mut self, place: &super::model::Place, message: String) {
        self.errors.push(place.refuse(message));
    }

    /// A note about a place kept earlier.
    pub fn note_at(&mut self, place: &super::model::Place, message: &str) {
        self.notes.push(format!(
            "{}:{}:{}: {}: {message}",
            place.file, place.line, place.col, place.element
        ));
    }

    /// How many errors so far (to tell whether a part of the input was refused).
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Refuses every attribute of `node` not in `known`, with the reason `why` gives for it.
    pub fn only_attrs(&mut self, node: Node, known: &[&str], why: fn(&str) -> &'static str) {
        for a in node.attributes() {
            if !known.contains(&a.name()) || a.namespace().is_some() {
                let reason = why(a.name());
                self.refuse(
                    node,
                    format!(
                        "attribute {}='{}' has no faithful mapping in kvmnet ({reason})",
                        a.name(),
                        a.value()
                    ),
                );
            }
        }
    }
}

/// The element's children that are elements.
pub fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(Node::is_element)
}

/// The element's children named `name`.
pub fn named<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    elements(node)
        .filter(move |c| c.tag_name().name() == name && c.tag_name().namespace().is_none())
}

/// An element as messages name it: `<forward mode='hostdev' managed='yes'>`, its prefix
/// kept for elements in another namespace (`<dnsmasq:options>`).
pub fn describe(node: Node) -> String {
    let name = node.tag_name();
    let prefix = name
        .namespace()
        .and_then(|ns| node.lookup_prefix(ns))
        .map_or(String::new(), |p| format!("{p}:"));
    let mut s = format!("<{prefix}{}", name.name());
    for a in node.attributes() {
        s.push_str(&format!(" {}='{}'", a.name(), a.value()));
    }
    s.push('>');
    s
}

/// Whether the element is in no namespace and named `name`.
pub fn is(node: Node, name: &str) -> bool {
    node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_element_and_its_place() {
        let (mut errors, mut notes) = (Vec::new(), Vec::new());
        let mut r = Report::new("n.xml", &mut errors, &mut notes);
        let d = r
            .parse("<network>\n  <forward mode='hostdev'/>\n</network>")
            .unwrap();
        let fwd = elements(d.root_element()).next().unwrap();
        r.unmapped(fwd, "PCI passthrough");
        assert_eq!(
            errors[0].to_string(),
            "n.xml:2:3: <forward mode='hostdev'>: no faithful mapping in kvmnet (PCI passthrough)"
        );
    }

    #[test]
    fn malformed_xml_is_an_error_with_its_place() {
        let (mut errors, mut notes) = (Vec::new(), Vec::new());
        let mut r = Report::new("n.xml", &mut errors, &mut notes);
        assert!(r.parse("<network>\n<name>x</network>").is_none());
        assert!(
            errors[0].to_string().starts_with("n.xml:2:"),
            "{}",
            errors[0]
        );
    }
}
