//! Re-parsing a spec that changed in a few VMs without re-reading the others.
//!
//! A long-running process sees the same spec again and again, usually with one VM added,
//! removed or edited. `SpecCache` splits the text into its head (everything but the VM
//! entries) and one chunk per VM entry, and keeps what the first pass made of each chunk,
//! keyed by the chunk's exact text. Only new or edited chunks are parsed, and their ports
//! built; the rules across the whole spec run over everything each time. Where a text
//! differs from the last one only inside its VM entries, its layout is worked out from the
//! last one's (see `patch`): the text is not split again, nor its entries hashed. The ports built
//! are shared with the specs made (`Arc`), so that what compares successive specs (the OVN
//! rows' memo) finds an unchanged VM's ports to be the same copies.
//!
//! The result is always what [`super::parse_bytes`] returns for the same bytes. The fast path
//! is taken only when the layout is plainly splittable (a block mapping at the top, `vms:` on
//! a line of its own, every VM entry starting with a plain `name:` at one indentation, no
//! tabs or carriage returns); any doubt and any error, anywhere, falls back to the full parse,
//! so error lists never depend on what was cached.

mod patch;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use foldhash::{HashSet, HashSetExt};

use super::model::{Loc, Port};
use super::validate::{self, Ctx, Head, Locs, PortBuilder, PortDraft, VmContext};
use super::yaml::{self, Kind};
use super::{HostIdentity, Spec, SpecError};

/// Parses specs, remembering the parts of the last text it was given.
#[derive(Default)]
pub struct SpecCache {
    /// The head's text (with the VM lines blanked) and what it read as.
    head: Option<(String, Head, Locs)>,
    /// Counts the heads read: the ports a chunk built under another head are built again
    /// (a trunk's VLAN networks are the head's).
    head_read: u64,
    /// What the cached chunks were read under; chunks read under another are not reused.
    context: VmContext,
    /// Shared with the call that uses them, which looks each up once.
    chunks: HashMap<String, Arc<Chunk>, BuildHasherDefault<TextHasher>>,
    /// Counts calls, to drop chunks the latest text no longer has.
    generation: u64,
    /// The last call that got as far as looking its VM entries up: only such a call knows
    /// which chunks are stale. (One that stopped earlier, say at a typo in the head, keeps
    /// them all for the text that fixes it.)
    looked_up: u64,
    /// VM entries read from scratch by the last call; `None` when it took the full parse.
    last_read: Option<usize>,
    /// One copy of each distinct firewall the cached ports have, shared by them all.
    firewalls: HashSet<Arc<super::model::Firewall>>,
    /// The last text split, from which the next one's layout is worked out when only some
    /// VM entries changed (see `patch`).
    last: Option<patch::Last>,
    /// Counts the times the chunks were dropped for a new context: a layout's chunks are
    /// reused only in the epoch they were read in.
    epoch: u64,
    /// The OVN stamp every entry of the last call was marked clean under (0: none).
    marked: u64,
}

/// Hashes whole VM entries (hundreds of bytes each, the whole spec every call) eight bytes at
/// a step. The texts come from the operator's own file, so flooding is no concern.
#[derive(Default)]
struct TextHasher(u64);

impl Hasher for TextHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        for &b in words.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One VM entry read on its own; locations count from the chunk's first line.
struct Chunk {
    name: String,
    ports: Vec<PortDraft>,
    /// Shared with the specs made from it (see [`super::LocMap`]).
    locs: Arc<Locs>,
    /// The last call whose text has this entry.
    used: AtomicU64,
    /// The ports built from `ports`, with the head they were built under (`head_read`):
    /// shared with the specs made from them, so that an unchanged entry's ports are the
    /// same copies from one spec to the next.
    built: Mutex<Option<(u64, Vec<Arc<Port>>)>>,
}

impl Chunk {
    /// Appends to `out` the entry's ports built under head `head` (by `builder`), built now
    /// if they were not; `None` when one does not build.
    fn built_into(&self, head: u64, builder: &PortBuilder, out: &mut Vec<Arc<Port>>) -> Option<()> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built.as_ref().is_none_or(|(h, _)| *h != head) {
            *built = Some((head, builder.ports(&self.ports)?));
        }
        out.extend(built.as_ref()?.1.iter().cloned());
        Some(())
    }
}

/// Where the VM entries sit in a text.
struct Layout<'a> {
    /// The text the head is read from: the VM lines blanked, so what follows the vms block
    /// keeps its line numbers.
    skeleton: String,
    /// 0-based line of the `vms:` key.
    vms_line: usize,
    /// Indentation of the VM keys.
    indent: usize,
    /// Each VM entry: its name, its text, its first line (0-based).
    entries: Vec<(&'a str, &'a str, usize)>,
    /// Byte offsets: where the first entry starts, where the vms block ends.
    first: usize,
    block_end: usize,
    /// Lines from the first entry's to the block's end.
    block_lines: usize,
    /// Worked out from the last layout (see `patch`): each entry's chunk, when the last
    /// text had the entry, read in epoch `reuse_epoch`. Empty from [`split`].
    reuse: Vec<Option<Arc<Chunk>>>,
    reuse_epoch: u64,
    /// The entries' names, when the last layout had them.
    names: Option<foldhash::HashSet<Box<str>>>,
    /// The texts of the last layout's entries this one no longer has.
    gone: Vec<String>,
    /// The last layout's copy of its text, to hold this one's.
    buffer: Option<String>,
}

impl SpecCache {
    /// Same as [`super::parse_bytes`], reusing what earlier calls read of unchanged VMs. (What
    /// is kept of a VM entry does not depend on `identity`: MACs are derived afterwards.)
    pub fn parse_bytes(
        &mut self,
        bytes: &[u8],
        identity: &HostIdentity,
    ) -> Result<Spec, Vec<SpecError>> {
        self.generation += 1;
        self.last_read = Some(0);
        let fast = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| !t.starts_with('\u{feff}') && !t.trim().is_empty())
            .and_then(|t| {
                let layout = patch::patch(&mut self.last, t).or_else(|| split(t))?;
                self.assemble(layout, t, identity)
            });
        let generation = self.generation;
        if self.looked_up == generation {
            // Those the last layout holds stay too (held there as well: more than one
            // count). A call that failed after its lookup keeps the layout before, and the
            // next text is worked out from that one: an entry of it the cache had dropped
            // would be read again, once taken over from the layout and then looked up.
            self.chunks
                .retain(|_, c| c.used.load(Relaxed) == generation || Arc::strong_count(c) > 1);
        }
        self.firewalls.retain(|f| Arc::strong_count(f) > 1);
        match fast {
            Some(spec) => Ok(spec),
            None => {
                self.last_read = None;
                super::parse_bytes(bytes, identity)
            }
        }
    }

    /// How many VM entries the last call read from scratch; `None` when it did not use the
    /// cache at all (a layout it does not split, or an error somewhere).
    pub fn last_read(&self) -> Option<usize> {
        self.last_read
    }

    /// Reads the head again when its text changed; the cached chunks go when what a VM entry
    /// reads of the head changed with it. `None` when the head does not read cleanly.
    fn refresh_head(&mut self, layout: &Layout) -> Option<()> {
        if self
            .head
            .as_ref()
            .is_some_and(|(text, _, _)| *text == layout.skeleton)
        {
            return Some(());
        }
        self.head = None;
        self.head_read += 1;
        let (head, locs) = read_head(layout)?;
        let context = head.vm_context();
        if context != self.context {
            self.chunks.clear();
            self.epoch += 1;
            self.context = context;
        }
        self.head = Some((layout.skeleton.clone(), head, locs));
        Some(())
    }

    /// The spec from the head and the chunks, or `None` when anything at all is wrong or
    /// unusual (the full parse then says what). `text` is the layout's: the next call's
    /// layout is worked out from it.
    fn assemble(
        &mut self,
        mut layout: Layout,
        text: &str,
        identity: &HostIdentity,
    ) -> Option<Spec> {
        self.refresh_head(&layout)?;
        let reuse = std::mem::take(&mut layout.reuse);
        let (chunks, fresh) = self.look_up(&layout, reuse)?;
        let (_, head, head_locs) = self.head.as_ref()?;
        let nets = head.nets.as_deref();

        let mut order: Vec<usize> = (0..layout.entries.len()).collect();
        order.sort_by_key(|&i| layout.entries[i].0);
        let (locs, parts) = vm_locs(head_locs, &layout, &order, &chunks);
        // The drafts are checked where they are: their locations count from their entry's
        // first line, but any error at all sends the text to the full parse, which says
        // where. The ports are built once per entry (and head), and shared.
        let builder = PortBuilder::new(nets.unwrap_or(&[]));
        let mut drafts: Vec<&PortDraft> = Vec::with_capacity(layout.entries.len());
        let mut built: Vec<Arc<Port>> = Vec::with_capacity(layout.entries.len());
        let mut names = Vec::with_capacity(layout.entries.len());
        // In VM name order, as the spec lists its VMs and their OVN ports.
        for c in order.iter().map(|&i| &chunks[i]) {
            drafts.extend(&c.ports);
            c.built_into(self.head_read, &builder, &mut built)?;
            names.push(c.name.clone());
        }
        let mut cx = Ctx {
            errors: Vec::new(),
            locs,
            parts,
        };
        let spec = validate::finish(&mut cx, head.clone(), &drafts, Some(built), names, identity);
        drop(drafts);
        let stamp = head.ovn_stamp();
        let clean = cx.errors.is_empty() && spec.is_some();
        // Every port passed: its entry's ports need no OVN port checks under this stamp.
        match stamp {
            Some(stamp) if clean => self.mark_ovn_clean(&chunks, &fresh, stamp),
            _ => self.marked = 0,
        }
        self.last = Some(patch::Last::new(text, layout, chunks, self.epoch));
        if !cx.errors.is_empty() {
            return None;
        }
        spec
    }

    /// Each VM entry of `layout`, from the cache or read now (and cached); `None` when one
    /// does not read cleanly. Every new entry is read before giving up on a bad one, so an
    /// error in one VM does not cost the others their cache entries.
    /// `reuse`: the entries' chunks the last layout had (see [`Layout::reuse`]), taken as
    /// they are. Also which entries were looked up (not reused).
    fn look_up(
        &mut self,
        layout: &Layout,
        mut reuse: Vec<Option<Arc<Chunk>>>,
    ) -> Option<(Vec<Arc<Chunk>>, Vec<bool>)> {
        let nets = self.head.as_ref()?.1.nets.as_deref();
        let mut ok = true;
        let reusing = !reuse.is_empty() && layout.reuse_epoch == self.epoch;
        if !reusing {
            // Only a call that looks every entry up knows which cached ones are stale.
            reuse.clear();
            self.looked_up = self.generation;
        }
        let mut chunks: Vec<Arc<Chunk>> = Vec::with_capacity(layout.entries.len());
        let mut fresh = Vec::with_capacity(layout.entries.len());
        for (i, &(name, text, _)) in layout.entries.iter().enumerate() {
            if let Some(c) = reuse.get_mut(i).and_then(Option::take) {
                chunks.push(c);
                fresh.push(false);
                continue;
            }
            fresh.push(true);
            if let Some(c) = self.chunks.get(text) {
                c.used.store(self.generation, Relaxed);
                chunks.push(Arc::clone(c));
                continue;
            }
            let Some((mut ports, locs)) = read_chunk(name, text, layout.indent, nets) else {
                ok = false;
                continue;
            };
            for p in &mut ports {
                p.share_firewall(&mut self.firewalls);
            }
            self.last_read = self.last_read.map(|n| n + 1);
            let c = Arc::new(Chunk {
                name: name.to_string(),
                ports,
                locs: Arc::new(locs),
                used: AtomicU64::new(self.generation),
                built: Mutex::new(None),
            });
            chunks.push(Arc::clone(&c));
            self.chunks.insert(text.to_string(), c);
        }
        if reusing {
            // The entries the change replaced go, unless the new text has them again.
            let again: foldhash::HashSet<&str> = layout
                .entries
                .iter()
                .zip(&fresh)
                .filter(|(_, f)| **f)
                .map(|(e, _)| e.1)
                .collect();
            for t in layout.gone.iter().filter(|t| !again.contains(t.as_str())) {
                self.chunks.remove(t.as_str());
            }
        }
        ok.then_some((chunks, fresh))
    }

    /// Marks the ports of this call's entries as having passed the OVN port checks under
    /// `stamp`: those looked up, and the others too when the last call's were marked under
    /// another stamp (or not at all).
    fn mark_ovn_clean(&mut self, chunks: &[Arc<Chunk>], fresh: &[bool], stamp: u64) {
        let all = self.marked != stamp;
        for (c, f) in chunks.iter().zip(fresh) {
            if all || *f {
                for p in &c.ports {
                    p.ovn_clean.set(stamp);
                }
            }
        }
        self.marked = stamp;
    }
}

/// The spec's locations: the head's, then each VM entry's as a part of its own (`order`:
/// the entries by name). In about the order of the map they become, which makes building
/// it cheap: the head's paths come before `vms`, and the entries' paths are sorted within
/// each entry and follow their VM names.
fn vm_locs(
    head_locs: &Locs,
    layout: &Layout,
    order: &[usize],
    chunks: &[Arc<Chunk>],
) -> (Locs, Vec<super::model::LocPart>) {
    let mut locs: Locs = Vec::with_capacity(head_locs.len() + 1);
    locs.extend(
        head_locs
            .iter()
            .filter(|(k, _)| k.as_str() != "vms")
            .map(|(k, l)| (k.clone(), *l)),
    );
    // A block mapping sits where its first key does.
    let first_line = layout.entries[0].2;
    locs.push((
        "vms".to_string(),
        Loc {
            line: first_line + 1,
            col: layout.indent + 1,
        },
    ));
    let parts = order
        .iter()
        .map(|&i| (Arc::clone(&chunks[i].locs), layout.entries[i].2))
        .collect();
    (locs, parts)
}

/// The head read from the skeleton, if it reads without a single complaint and its `vms`
/// is the empty value on the line the split found.
fn read_head(layout: &Layout) -> Option<(Head, Locs)> {
    let (root, errors) = yaml::load(&layout.skeleton);
    if !errors.is_empty() {
        return None;
    }
    let root = root?;
    let mut cx = Ctx::default();
    let (head, vms) = validate::read_head(&mut cx, &root)?;
    let vms_here = cx.loc_at("vms")
        == Some(Loc {
            line: layout.vms_line + 1,
            col: 1,
        });
    if !cx.errors.is_empty() || !vms_here || vms.is_none_or(|o| !o.is_empty()) {
        return None;
    }
    // Stable: of two entries for one path, the later still wins.
    cx.locs.sort_by(|a, b| a.0.cmp(&b.0));
    Some((head, cx.locs))
}

/// One VM entry's ports and locations, if it reads without a single complaint.
fn read_chunk(
    name: &str,
    text: &str,
    indent: usize,
    nets: Option<&[validate::NetDraft]>,
) -> Option<(Vec<PortDraft>, Locs)> {
    let (root, errors) = yaml::load(text);
    if !errors.is_empty() {
        return None;
    }
    let root = root?;
    let Kind::Map(entries) = &root.kind else {
        return None;
    };
    let [(key, node)] = entries.as_slice() else {
        return None;
    };
    if key.text != name
        || key.loc
            != (Loc {
                line: 1,
                col: indent + 1,
            })
    {
        return None;
    }
    let mut cx = Ctx::default();
    let mut ports = Vec::new();
    validate::read_vm_entry(&mut cx, key, node, nets, &mut ports);
    if !cx.errors.is_empty() {
        return None;
    }
    cx.locs.sort_by(|a, b| a.0.cmp(&b.0));
    Some((ports, cx.locs))
}

/// `name:` followed by a blank, a comment or the line's end, where name is a plain scalar
/// that needs no quoting; the name.
fn plain_key(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let (name, rest) = (&line[..colon], &line[colon + 1..]);
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with(['-', '.']);
    (plain && (rest.is_empty() || rest.starts_with(' '))).then_some(name)
}

/// Lines holding nothing but spaces, or a comment.
fn is_filler(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    t.is_empty() || t.starts_with('#')
}

/// Where the VM entries are, when the layout is plainly a block mapping with a block `vms`
/// mapping of plain-named entries; `None` for anything else.
fn split(text: &str) -> Option<Layout<'_>> {
    if text.bytes().any(|b| matches!(b, b'\r' | b'\t' | 0)) {
        return None;
    }
    // (byte offset, line) for every line, without its '\n'.
    let mut lines: Vec<(usize, &str)> = Vec::with_capacity(text.len() / 64 + 1);
    let mut at = 0;
    for l in text.split('\n') {
        lines.push((at, l));
        at += l.len() + 1;
    }
    // The top level: a block mapping of plain keys, exactly one of them `vms:` alone.
    let mut vms_line = None;
    for (i, (_, l)) in lines.iter().enumerate() {
        if l.starts_with(' ') || is_filler(l) {
            continue;
        }
        let key = plain_key(l)?;
        if key == "vms" {
            let rest = l[4..].trim_start_matches(' ');
            if vms_line.is_some() || !(rest.is_empty() || rest.starts_with('#')) {
                return None;
            }
            vms_line = Some(i);
        }
    }
    let vms_line = vms_line?;
    // The vms block: indented lines and fillers up to the next top-level key.
    let end = lines[vms_line + 1..]
        .iter()
        .position(|(_, l)| !l.starts_with(' ') && !is_filler(l))
        .map_or(lines.len(), |p| vms_line + 1 + p);
    let mut indent = None;
    let mut starts: Vec<(usize, &str)> = Vec::new();
    for (i, (_, l)) in lines.iter().enumerate().take(end).skip(vms_line + 1) {
        if is_filler(l) {
            continue;
        }
        let n = l.len() - l.trim_start_matches(' ').len();
        let k = *indent.get_or_insert(n);
        if n < k {
            return None;
        }
        if n == k {
            starts.push((i, plain_key(&l[n..])?));
        }
    }
    let indent = indent?;
    let mut seen = HashSet::with_capacity(starts.len());
    if !starts.iter().all(|(_, name)| seen.insert(*name)) {
        return None;
    }
    let offset = |i: usize| lines.get(i).map_or(text.len(), |(o, _)| *o);
    let entries: Vec<(&str, &str, usize)> = starts
        .iter()
        .enumerate()
        .map(|(j, &(i, name))| {
            let next = starts.get(j + 1).map_or(end, |s| s.0);
            (name, &text[offset(i)..offset(next)], i)
        })
        .collect();
    let first = starts.first()?.0;
    let mut skeleton = text[..offset(first)].to_string();
    if end < lines.len() {
        skeleton.extend(std::iter::repeat_n('\n', end - first));
        skeleton.push_str(&text[offset(end)..]);
    }
    Some(Layout {
        skeleton,
        vms_line,
        indent,
        entries,
        first: offset(first),
        block_end: offset(end),
        block_lines: end - first,
        reuse: Vec::new(),
        reuse_epoch: 0,
        names: None,
        gone: Vec::new(),
        buffer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_block_layouts_only() {
        let t = "version: 1\nvms:\n  # c\n  a: { ports: [] }\n\n  b:\n    ports: []\n# x\nnetworks: {}\n";
        let l = split(t).unwrap();
        assert_eq!(l.vms_line, 1);
        assert_eq!(l.indent, 2);
        let names: Vec<&str> = l.entries.iter().map(|e| e.0).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(l.entries[0].1, "  a: { ports: [] }\n\n");
        assert_eq!(l.entries[1].1, "  b:\n    ports: []\n# x\n");
        assert_eq!(l.entries[1].2, 5);
        assert_eq!(
            l.skeleton,
            "version: 1\nvms:\n  # c\n\n\n\n\n\nnetworks: {}\n"
        );
        for bad in [
            "vms: { a: {} }\n",
            "vms:\n  a: {}\n  a: {}\n",
            "vms:\n    a: {}\n  b: {}\n",
            "vms:\n  \"a\": {}\n",
            "vms:\n\ta: {}\n",
            "---\nvms:\n  a: {}\n",
            "vms:\n  a: {}\nvms:\n  b: {}\n",
            "vms:\n",
            "{ vms: 1 }\n",
        ] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
    }
}
