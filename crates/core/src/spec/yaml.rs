//! A small YAML tree where every node and every mapping key remembers where it sits in the
//! file. yaml-rust2's own `Yaml` type drops positions, so the tree is built from the parser's
//! marked events.
//!
//! Deliberately strict: one document, no anchors/aliases (they make "where is this value"
//! ambiguous and allow exponential blow-up), no tags (quote a value to make it a string),
//! no duplicate keys, scalar keys only. Every such problem is reported with a path and a
//! location and the load goes on, so the validator still reports the rest of the file.

use std::collections::HashMap;
use std::fmt::Write as _;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::SpecError;
use super::model::Loc;

/// Deeper nesting than this is never a valid spec; stopping early also keeps recursive
/// walking and dropping of the tree cheap.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub loc: Loc,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
    /// A node that already produced an error (an alias, a value under a rejected key);
    /// the validator skips it silently.
    Bad,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scalar {
    pub text: String,
    /// Plain scalars are resolved by the YAML 1.2 core schema (`1500` is a number, `true` a
    /// boolean, empty or `~` is null); quoted and block scalars are always strings.
    pub plain: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub text: String,
    pub loc: Loc,
}

pub(crate) fn loc_of(m: &Marker) -> Loc {
    // yaml-rust2's line is 1-based, its column 0-based (counted in characters).
    Loc {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

impl Scalar {
    pub fn is_null(&self) -> bool {
        self.plain && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
    pub fn as_bool(&self) -> Option<bool> {
        if !self.plain {
            return None;
        }
        match self.text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        }
    }
    /// A plain decimal integer (`-5`, `+7`, `1500`), as the core schema reads it.
    pub fn as_int(&self) -> Option<i128> {
        if !self.plain {
            return None;
        }
        let t = self.text.as_str();
        let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
        if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    }
    pub fn looks_like_float(&self) -> bool {
        if !self.plain {
            return false;
        }
        let t = self.text.as_str();
        let lower = t.to_ascii_lowercase();
        if matches!(lower.trim_start_matches(['+', '-']), ".inf" | ".nan") {
            return true;
        }
        t.bytes().any(|b| b.is_ascii_digit())
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
            && t.parse::<f64>().is_ok()
    }
}

impl Node {
    /// "a list", "the number 7": for messages like "expected a mapping, found a list".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Map(_) => "a mapping".into(),
            Kind::Seq(_) => "a list".into(),
            Kind::Bad => "an invalid value".into(),
            Kind::Scalar(s) if s.is_null() => "an empty value".into(),
            Kind::Scalar(s) if s.as_bool().is_some() => format!("the boolean {}", s.text),
            Kind::Scalar(s) if s.as_int().is_some() || s.looks_like_float() => {
                format!("the number {}", s.text)
            }
            Kind::Scalar(s) if s.text.contains('\n') => "a multi-line string".into(),
            Kind::Scalar(s) => format!("the string '{}'", show(&s.text)),
        }
    }
}

/// User text made safe and short for a message.
pub(crate) fn show(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// One path segment: bare when it is a plain identifier, otherwise quoted
/// (`host.sysctl."net.core.somaxconn"`, `networks."lan.2".mode`).
fn push_seg(out: &mut String, s: &str) {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        out.push_str(s);
    } else {
        let _ = write!(out, "{s:?}");
    }
}

// Paths are made for every field of a spec (each one's location is recorded), so they are
// put together by hand rather than through `format!`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let mut out = String::with_capacity(parent.len() + key.len() + 1);
    if !parent.is_empty() {
        out.push_str(parent);
        out.push('.');
    }
    push_seg(&mut out, key);
    out
}

pub(crate) fn index(parent: &str, i: usize) -> String {
    let mut out = String::with_capacity(parent.len() + 4);
    out.push_str(parent);
    out.push('[');
    if i < 10 {
        out.push(char::from(b'0' + i as u8));
    } else {
        let _ = write!(out, "{i}");
    }
    out.push(']');
    out
}

/// Open collections. Their paths are not kept: they are worked out from the stack (see
/// `Builder::path_at`) only when an error needs one.
enum Frame {
    Seq {
        loc: Loc,
        items: Vec<Node>,
        /// Anchor/tag complaints, reported when the collection closes and its location
        /// (a block mapping's first key) is known.
        props: Vec<String>,
    },
    Map {
        loc: Loc,
        entries: Vec<(Key, Node)>,
        /// The key waiting for its value; `None` inside means the key was rejected
        /// (duplicate or not a scalar) and its value is dropped.
        pending: Option<Option<Key>>,
        /// Keys seen so far and where, to report duplicates without a quadratic scan; made
        /// only once the mapping is big enough for a scan of `entries` to cost more.
        seen: Option<HashMap<String, Loc>>,
        props: Vec<String>,
    },
}

/// Mappings with fewer entries than this look for duplicate keys by scanning them.
const SCAN_KEYS: usize = 16;

impl Frame {
    /// The path of the node that arrives next in this frame, given the frame's own path.
    fn child_path(&self, path: String) -> String {
        match self {
            Frame::Seq { items, .. } => index(&path, items.len()),
            Frame::Map {
                pending: Some(Some(k)),
                ..
            } => join(&path, &k.text),
            Frame::Map { .. } => path,
        }
    }
}

struct Builder<'a> {
    /// The source, split at '\n', to find block scalar indicators.
    lines: Vec<&'a str>,
    stack: Vec<Frame>,
    root: Option<Node>,
    docs: usize,
    errors: Vec<SpecError>,
    /// Set when loading must stop (second document, nesting too deep).
    stop: bool,
}

impl Builder<'_> {
    fn err(&mut self, path: String, loc: Loc, message: String) {
        self.errors.push(SpecError { path, loc, message });
    }

    /// The path of the collection at `depth` on the stack (`stack.len()`: of the node that
    /// arrives next).
    fn path_at(&self, depth: usize) -> String {
        self.stack[..depth]
            .iter()
            .fold(String::new(), |path, f| f.child_path(path))
    }

    fn next_path(&self) -> String {
        self.path_at(self.stack.len())
    }

    /// Complaints about anchors and tags on the node that starts here.
    fn props(anchor: usize, tag: bool) -> Vec<String> {
        let mut out = Vec::new();
        if anchor != 0 {
            out.push(
                "YAML anchors (&name) are not supported in a kvmnet spec; write the value out"
                    .to_string(),
            );
        }
        if tag {
            out.push(
                "YAML tags (!tag) are not supported in a kvmnet spec; quote a value to make it a string"
                    .to_string(),
            );
        }
        out
    }

    fn push(&mut self, frame: Frame) {
        if self.stack.len() >= MAX_DEPTH {
            let loc = match &frame {
                Frame::Seq { loc, .. } | Frame::Map { loc, .. } => *loc,
            };
            let p = self.next_path();
            self.err(
                p,
                loc,
                format!("nesting deeper than {MAX_DEPTH} levels; a kvmnet spec is never this deep"),
            );
            self.stop = true;
            return;
        }
        self.stack.push(frame);
    }

    /// Hand a finished node to its parent (or make it the document root).
    fn attach(&mut self, mut node: Node) {
        let mut dup: Option<KeyError> = None;
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => {
                if let Kind::Scalar(sc) = &node.kind
                    && sc.plain
                    && sc.text.is_empty()
                    && let Some(l) = dash_before(&self.lines, node.loc)
                {
                    // `-` with nothing after it: point at the dash, not at what follows.
                    node.loc = l;
                }
                items.push(node)
            }
            Some(Frame::Map {
                loc,
                entries,
                pending,
                seen,
                ..
            }) => match pending.take() {
                Some(Some(key)) => {
                    // An empty value's marker points at whatever comes next (often the next
                    // line); the key is the better place to point at.
                    if let Kind::Scalar(s) = &node.kind
                        && s.plain
                        && s.text.is_empty()
                    {
                        node.loc = key.loc;
                    }
                    entries.push((key, node));
                }
                Some(None) => {}
                None => dup = take_key(node, loc, entries, pending, seen),
            },
        }
        if let Some((key, l, m)) = dup {
            let path = self.path_at(self.stack.len() - 1);
            let p = match key {
                Some(k) => join(&path, &k),
                None => path,
            };
            self.err(p, l, m);
        }
    }
}

/// An error about a key: the key's text to join to the mapping's path (none: the mapping's
/// own path), where, what.
type KeyError = (Option<String>, Loc, String);

/// A mapping's next key, `node`, made its pending key unless it repeats one (or is no plain
/// scalar): then its value is to be dropped, and the error is returned.
fn take_key(
    node: Node,
    loc: &mut Loc,
    entries: &[(Key, Node)],
    pending: &mut Option<Option<Key>>,
    seen: &mut Option<HashMap<String, Loc>>,
) -> Option<KeyError> {
    if entries.is_empty() && node.loc < *loc {
        // A block mapping's start marker sits after its first key.
        *loc = node.loc;
    }
    let s = match node.kind {
        Kind::Scalar(s) => s,
        Kind::Bad => {
            *pending = Some(None);
            return None;
        }
        _ => {
            *pending = Some(None);
            return Some((
                None,
                node.loc,
                format!(
                    "a mapping key must be a plain name, found {}",
                    node.describe()
                ),
            ));
        }
    };
    if seen.is_none() && entries.len() >= SCAN_KEYS {
        *seen = Some(
            entries
                .iter()
                .map(|(k, _)| (k.text.clone(), k.loc))
                .collect(),
        );
    }
    let first = match seen {
        Some(seen) => seen.get(&s.text).copied(),
        None => entries
            .iter()
            .find(|(k, _)| k.text == s.text)
            .map(|(k, _)| k.loc),
    };
    if let Some(first) = first {
        *pending = Some(None);
        return Some((
            Some(s.text.clone()),
            node.loc,
            format!(
                "duplicate key '{}' (first given at {}); each key may appear only once",
                show(&s.text),
                first
            ),
        ));
    }
    if let Some(seen) = seen {
        seen.insert(s.text.clone(), node.loc);
    }
    *pending = Some(Some(Key {
        text: s.text,
        loc: node.loc,
    }));
    None
}

/// The dash of an empty block sequence item whose marker sits at the next token `at`: the
/// last `-` (followed by a blank or the line end) on the nearest line above.
fn dash_before(lines: &[&str], at: Loc) -> Option<Loc> {
    let before = at.line.checked_sub(1)?;
    for i in (before.saturating_sub(50)..before).rev() {
        let chars: Vec<char> = lines.get(i)?.trim_end_matches('\r').chars().collect();
        let found = (0..chars.len()).rev().find(|&j| {
            chars[j] == '-'
                && (j == 0 || chars[j - 1].is_whitespace())
                && chars.get(j + 1).is_none_or(|c| c.is_whitespace())
        });
        if let Some(j) = found {
            return Some(Loc {
                line: i + 1,
                col: j + 1,
            });
        }
    }
    None
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.stop {
            return;
        }
        let loc = loc_of(&mark);
        match ev {
            Event::DocumentStart => {
                self.docs += 1;
                if self.docs > 1 {
                    self.err(
                        String::new(),
                        loc,
                        "a second YAML document (after ---) was found; a spec is one document"
                            .into(),
                    );
                    self.stop = true;
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.scalar(text, style, anchor, tag.is_some(), loc);
            }
            Event::Alias(_) => {
                let p = self.next_path();
                self.err(
                    p,
                    loc,
                    "YAML aliases (*name) are not supported in a kvmnet spec; write the value out"
                        .into(),
                );
                self.attach(Node {
                    loc,
                    kind: Kind::Bad,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                self.push(Frame::Seq {
                    loc,
                    items: Vec::new(),
                    props: Self::props(anchor, tag.is_some()),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.push(Frame::Map {
                    loc,
                    entries: Vec::new(),
                    pending: None,
                    seen: None,
                    props: Self::props(anchor, tag.is_some()),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.end_collection(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl Builder<'_> {
    /// A scalar, refused when it carries an anchor or a tag (kept as a key where one is
    /// due, so that the mapping's other keys still read).
    fn scalar(&mut self, text: String, style: TScalarStyle, anchor: usize, tagged: bool, loc: Loc) {
        let loc = if matches!(style, TScalarStyle::Literal | TScalarStyle::Folded) {
            self.block_indicator(loc).unwrap_or(loc)
        } else {
            loc
        };
        let props = Self::props(anchor, tagged);
        let ok = props.is_empty();
        if !ok {
            let p = self.next_path();
            for m in props {
                self.err(p.clone(), loc, m);
            }
        }
        let plain = matches!(style, TScalarStyle::Plain);
        let kind = if ok || self.in_key_position() {
            Kind::Scalar(Scalar { text, plain })
        } else {
            Kind::Bad
        };
        self.attach(Node { loc, kind });
    }

    /// The collection ending, handed to its parent, with what was wrong with its anchor or
    /// tag reported now that its place is known.
    fn end_collection(&mut self) {
        let (node, props) = match self.stack.pop() {
            Some(Frame::Seq { loc, items, props }) => (
                Node {
                    loc,
                    kind: Kind::Seq(items),
                },
                props,
            ),
            Some(Frame::Map {
                loc,
                entries,
                props,
                ..
            }) => (
                Node {
                    loc,
                    kind: Kind::Map(entries),
                },
                props,
            ),
            None => return,
        };
        if !props.is_empty() {
            // The popped collection's path: what its parent expects next.
            let path = self.next_path();
            for m in props {
                self.err(path.clone(), node.loc, m);
            }
        }
        self.attach(node);
    }

    /// A block scalar's marker points at its first content line; the operator looks for
    /// the `|` or `>` that starts it, at the end of the nearest non-blank line above.
    fn block_indicator(&self, content: Loc) -> Option<Loc> {
        let mut i = content.line.checked_sub(1)?;
        while i > 0 {
            i -= 1;
            let line = self.lines.get(i)?.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let chars: Vec<char> = line.chars().collect();
            let col = (0..chars.len()).find(|&j| {
                matches!(chars[j], '|' | '>')
                    && (j == 0 || matches!(chars[j - 1], ' ' | '\t'))
                    && chars
                        .get(j + 1)
                        .is_none_or(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '\t'))
            })?;
            return Some(Loc {
                line: i + 1,
                col: col + 1,
            });
        }
        None
    }

    /// `loc`, moved back onto the text where the YAML library placed it past the end of its
    /// line: it counts a byte order mark inside a line as two columns.
    fn within_text(&self, loc: Loc) -> Loc {
        let width = self
            .lines
            .get(loc.line.wrapping_sub(1))
            .map(|l| l.trim_end_matches('\r').chars().count());
        match width {
            Some(w) if loc.col > w + 1 => Loc { col: w + 1, ..loc },
            _ => loc,
        }
    }

    /// A rejected key would otherwise leave its value without a key.
    fn in_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { pending: None, .. }))
    }
}

/// Load one YAML document. `Ok(None)` means the stream holds no document at all (empty or
/// only comments). Problems that do not stop loading come back in the error list alongside
/// the tree; a syntax error stops loading and returns only errors.
pub(crate) fn load(text: &str) -> (Option<Node>, Vec<SpecError>) {
    let mut b = Builder {
        lines: text.split('\n').collect(),
        stack: Vec::new(),
        root: None,
        docs: 0,
        errors: Vec::new(),
        stop: false,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => {
                b.on_event(ev, mark);
                if b.stop {
                    break;
                }
            }
            Err(e) => {
                let loc = b.within_text(loc_of(e.marker()));
                b.err(
                    String::new(),
                    loc,
                    format!("YAML syntax error: {}", e.info()),
                );
                return (None, b.errors);
            }
        }
    }
    if b.stop {
        return (None, b.errors);
    }
    (b.root, b.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(line: usize, col: usize) -> Loc {
        Loc { line, col }
    }

    #[test]
    fn a_syntax_error_after_byte_order_marks_inside_a_line_stays_on_the_line() {
        // Found by fuzzing: the YAML library counts U+FEFF inside a line as two columns.
        let (_, errors) = load("i: |\n|\n  \u{feff},s   \u{feff},s ");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].loc, l(3, 13), "{errors:?}");
    }

    #[test]
    fn locations_are_one_based() {
        let (root, errs) = load("a: 1\nbb:\n  - x\n  - {k: 'v'}\nc:\n");
        assert!(errs.is_empty(), "{errs:?}");
        let root = root.unwrap();
        assert_eq!(root.loc, l(1, 1));
        let Kind::Map(m) = &root.kind else { panic!() };
        assert_eq!(m[0].0.loc, l(1, 1));
        assert_eq!(m[0].1.loc, l(1, 4));
        assert_eq!(m[1].0.loc, l(2, 1));
        assert_eq!(m[1].1.loc, l(3, 3));
        let Kind::Seq(items) = &m[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].loc, l(3, 5));
        assert_eq!(items[1].loc, l(4, 5));
        let Kind::Map(inner) = &items[1].kind else {
            panic!()
        };
        assert_eq!(inner[0].0.loc, l(4, 6));
        assert_eq!(inner[0].1.loc, l(4, 9));
        // An empty value points at its key.
        assert_eq!(m[2].1.loc, l(5, 1));
        // An empty list item points at its dash.
        let (root, _) = load("a:\n  -\n  - x\n  - \n");
        let Kind::Map(m) = &root.unwrap().kind else {
            panic!()
        };
        let Kind::Seq(items) = &m[0].1.kind else {
            panic!()
        };
        assert_eq!(items[0].loc, l(2, 3));
        assert_eq!(items[2].loc, l(4, 3));
    }

    #[test]
    fn block_mapping_in_sequence_starts_at_first_key() {
        let (root, _) = load("- a: 1\n  b: 2\n");
        let Kind::Seq(items) = &root.unwrap().kind else {
            panic!()
        };
        assert_eq!(items[0].loc, l(1, 3));
    }

    #[test]
    fn duplicate_keys_anchors_tags() {
        let (_, errs) = load("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "b.c");
        assert_eq!(errs[0].loc, l(4, 3));
        let (_, errs) = load("a: &x 1\nb: *x\nc: !!str 3\n");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[1].path, "b");
        assert_eq!(errs[1].loc, l(2, 4));
        assert_eq!(errs[2].path, "c");
    }

    #[test]
    fn duplicate_keys_in_big_mappings() {
        // Past SCAN_KEYS entries, duplicates are found through a map: same answers.
        let mut text = String::from("m:\n");
        for i in 0..40 {
            text.push_str(&format!("  k{i}: {i}\n"));
        }
        text.push_str("  k3: x\n  k39: y\n  k40: z\n  k40: w\n");
        let (root, errs) = load(&text);
        let got: Vec<(String, Loc, String)> = errs
            .into_iter()
            .map(|e| (e.path, e.loc, e.message))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "m.k3");
        assert_eq!(got[0].1, l(42, 3));
        assert!(got[0].2.contains("first given at 5:3"), "{got:?}");
        assert_eq!(got[1].0, "m.k39");
        assert_eq!(got[2].0, "m.k40");
        assert!(got[2].2.contains("first given at 44:3"), "{got:?}");
        let Kind::Map(m) = &root.unwrap().kind else {
            panic!()
        };
        let Kind::Map(inner) = &m[0].1.kind else {
            panic!()
        };
        assert_eq!(inner.len(), 41);
        // Anchors on nested collections name the collection's own path.
        let (_, errs) = load("a:\n  - x\n  - &n [1]\n  - b: &m {c: 1}\n");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a[1]", "a[2].b"]);
    }

    #[test]
    fn syntax_errors_and_documents() {
        let (root, errs) = load("a: [1, 2\n");
        assert!(root.is_none());
        assert_eq!(errs[0].loc, l(2, 1));
        let (root, errs) = load("# nothing\n");
        assert!(root.is_none() && errs.is_empty());
        let (_, errs) = load("a: 1\n---\nb: 2\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].loc, l(2, 1));
    }

    #[test]
    fn deep_nesting_stops() {
        let text = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        let (root, errs) = load(&text);
        assert!(root.is_none());
        assert!(errs[0].message.contains("nesting"), "{errs:?}");
        // Far deeper input trips yaml-rust2's own limit first: still an error, no overflow.
        let (root, errs) = load(&"[".repeat(100_000));
        assert!(root.is_none() && !errs.is_empty());
    }

    #[test]
    fn scalar_resolution() {
        let s = |t: &str, plain| Scalar {
            text: t.into(),
            plain,
        };
        assert_eq!(s("1500", true).as_int(), Some(1500));
        assert_eq!(s("-3", true).as_int(), Some(-3));
        assert_eq!(s("1500", false).as_int(), None);
        assert_eq!(s("0x10", true).as_int(), None);
        assert!(s("", true).is_null() && s("~", true).is_null());
        assert!(!s("", false).is_null());
        assert_eq!(s("True", true).as_bool(), Some(true));
        assert_eq!(s("yes", true).as_bool(), None);
        assert_eq!(join("", "net.core.x"), "\"net.core.x\"");
        assert_eq!(join("a", ""), "a.\"\"");
        assert_eq!(index("a", 7), "a[7]");
        assert_eq!(index("a", 1234), "a[1234]");
        assert_eq!(join("a", "b-c_1"), "a.b-c_1");
    }
}
