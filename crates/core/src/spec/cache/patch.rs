//! The layout of a text worked out from the last text's, when they differ only inside the
//! VM entries: the entries before the first changed byte and after the last one are the
//! last text's (moved by as many bytes and lines as the change added), and only the
//! entries the change touched are split again.
//!
//! Why: splitting 1.7 MB of spec into its 10,000 VM entries and looking each entry's text
//! up among the cached ones (hashing all of it) took 4-5 ms of a daemon's 30 for one VM
//! added; finding the change is two comparisons of the texts.
//!
//! What comes out is what [`super::split`] makes of the same text (a test compares them
//! through thousands of random edits); anything it is not sure of, it leaves to `split`.

use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};

use super::{Chunk, Layout, is_filler, plain_key};

/// The last text a cache split, with where its entries are and what was read of each.
pub(super) struct Last {
    text: String,
    /// The cache's epoch its chunks were read in (see `SpecCache::epoch`).
    epoch: u64,
    vms_line: usize,
    indent: usize,
    /// Byte offsets: where the first entry starts, where the vms block ends.
    first: usize,
    block_end: usize,
    /// Lines from the first entry's to the block's end.
    block_lines: usize,
    /// In text order.
    entries: Vec<Placed>,
    names: HashSet<Box<str>>,
}

/// One VM entry of the last text.
struct Placed {
    start: usize,
    end: usize,
    /// 0-based line of its first line.
    line: usize,
    /// Its name's length: the name itself is read from the text (the chunk's copy is
    /// elsewhere in memory, and 10,000 entries each looked at cost more than the rest).
    name_len: usize,
    chunk: Arc<Chunk>,
}

impl Last {
    /// `layout` (of `text`) with its entries' `chunks`, as the next call starts from.
    pub(super) fn new(text: &str, layout: Layout<'_>, chunks: Vec<Arc<Chunk>>, epoch: u64) -> Last {
        let base = text.as_ptr() as usize;
        let entries: Vec<Placed> = layout
            .entries
            .iter()
            .zip(chunks)
            .map(|(&(name, t, line), chunk)| {
                let start = t.as_ptr() as usize - base;
                Placed {
                    start,
                    end: start + t.len(),
                    line,
                    name_len: name.len(),
                    chunk,
                }
            })
            .collect();
        let names = layout.names.unwrap_or_else(|| {
            layout
                .entries
                .iter()
                .map(|(name, _, _)| Box::from(*name))
                .collect()
        });
        let mut kept = layout.buffer.unwrap_or_default();
        kept.clear();
        kept.push_str(text);
        Last {
            text: kept,
            epoch,
            vms_line: layout.vms_line,
            indent: layout.indent,
            first: layout.first,
            block_end: layout.block_end,
            block_lines: layout.block_lines,
            entries,
            names,
        }
    }
}

/// What changed between the last text and a new one: the last text's entries `a..=b` are
/// replaced by `starts` (each new entry's byte offset, name and line), which fill the new
/// text's bytes `start..stop`.
struct Region<'t> {
    a: usize,
    b: usize,
    stop: usize,
    starts: Vec<(usize, &'t str, usize)>,
    /// Bytes and lines the change added (negative: removed).
    bytes: isize,
    lines: isize,
}

/// The layout of `text` from the last one in `slot` (taken from it), its unchanged
/// entries' chunks in `reuse`; `None` (`slot` left as it was) when the texts differ
/// anywhere but inside the VM entries, or the new entries do not split plainly.
pub(super) fn patch<'t>(slot: &mut Option<Last>, text: &'t str) -> Option<Layout<'t>> {
    let region = find(slot.as_ref()?, text)?;
    let last = slot.take()?;
    Some(apply(last, text, region))
}

/// Length of the longest common prefix, compared a block at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Length of the longest common suffix, compared a block at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let (la, lb) = (a.len(), b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[la - i - BLOCK..la - i] == b[lb - i - BLOCK..lb - i] {
        i += BLOCK;
    }
    while i < n && a[la - i - 1] == b[lb - i - 1] {
        i += 1;
    }
    i
}

/// The region of `text` that replaces some of `last`'s entries (see [`Region`]).
fn find<'t>(last: &Last, text: &'t str) -> Option<Region<'t>> {
    let (old, new) = (last.text.as_bytes(), text.as_bytes());
    let mut p = common_prefix(old, new);
    let s = common_suffix(&old[p..], &new[p..]);
    let mut old_end = old.len() - s;
    if p == old.len() && p == new.len() {
        // Nothing changed: the first entry is split again, a lookup of one entry.
        (p, old_end) = (last.first, last.first);
    }
    // The change must start in an entry and end before the block does.
    if p < last.first || old_end > last.block_end {
        return None;
    }
    let a = last
        .entries
        .partition_point(|e| e.start <= p)
        .checked_sub(1)?;
    let mut b = last
        .entries
        .partition_point(|e| e.start < old_end)
        .saturating_sub(1)
        .max(a);
    // The line break before the region's end must be one the texts share: a change ending
    // right at the next entry takes that entry in too (at the block's end, gives up).
    if old_end == last.entries[b].end && old_end < old.len() {
        b += 1;
        if b == last.entries.len() {
            return None;
        }
    }
    let start = last.entries[a].start;
    let bytes = new.len() as isize - old.len() as isize;
    let old_stop = last.entries[b].end;
    let stop = usize::try_from(old_stop as isize + bytes).ok()?;
    // Whole lines: `start` is where entry a starts in both texts (before the change), and
    // `stop` where the entry after b (or the block's end) starts (after it).
    let chunk = text.get(start..stop)?;
    if chunk.bytes().any(|b| matches!(b, b'\r' | b'\t' | 0)) {
        return None;
    }
    let mut starts = Vec::new();
    let (mut at, mut line) = (start, last.entries[a].line);
    for l in chunk.split_inclusive('\n') {
        let body = l.strip_suffix('\n').unwrap_or(l);
        // Every line belongs to an entry that starts in the region: a filler or a deeper
        // line first would belong to the entry before.
        if !is_filler(body) {
            let n = body.len() - body.trim_start_matches(' ').len();
            if n < last.indent {
                return None;
            }
            if n == last.indent {
                starts.push((at, plain_key(&body[n..])?, line));
            }
        }
        if starts.is_empty() {
            return None;
        }
        at += l.len();
        line += usize::from(l.ends_with('\n'));
    }
    if starts.is_empty() && last.entries.len() == b + 1 - a {
        return None;
    }
    // Names stay unique.
    let removed: HashSet<&str> = last.entries[a..=b]
        .iter()
        .map(|e| &last.text[e.start + last.indent..e.start + last.indent + e.name_len])
        .collect();
    let mut seen = HashSet::with_capacity(starts.len());
    for (_, name, _) in &starts {
        if !seen.insert(*name) || (last.names.contains(*name) && !removed.contains(name)) {
            return None;
        }
    }
    let newlines = |t: &[u8]| t.iter().filter(|&&c| c == b'\n').count() as isize;
    let lines = newlines(chunk.as_bytes()) - newlines(&old[start..old_stop]);
    Some(Region {
        a,
        b,
        stop,
        starts,
        bytes,
        lines,
    })
}

/// The layout of `text`: `last`'s entries around `r`, moved, and `r`'s.
fn apply<'t>(mut last: Last, text: &'t str, r: Region<'t>) -> Layout<'t> {
    let indent = last.indent;
    let shift = |x: usize, by: isize| (x as isize + by) as usize;
    let count = last.entries.len() - (r.b + 1 - r.a) + r.starts.len();
    let mut entries = Vec::with_capacity(count);
    let mut reuse = Vec::with_capacity(count);
    let mut gone = Vec::new();
    let mut old = std::mem::take(&mut last.entries).into_iter();
    for e in old.by_ref().take(r.a) {
        let name = &text[e.start + indent..e.start + indent + e.name_len];
        entries.push((name, &text[e.start..e.end], e.line));
        reuse.push(Some(e.chunk));
    }
    for e in old.by_ref().take(r.b + 1 - r.a) {
        let t = &last.text[e.start..e.end];
        last.names.remove(&t[indent..indent + e.name_len]);
        gone.push(t.to_string());
    }
    for (i, &(at, name, line)) in r.starts.iter().enumerate() {
        let end = r.starts.get(i + 1).map_or(r.stop, |n| n.0);
        entries.push((name, &text[at..end], line));
        reuse.push(None);
        last.names.insert(name.into());
    }
    for e in old {
        let (start, end) = (shift(e.start, r.bytes), shift(e.end, r.bytes));
        let name = &text[start + indent..start + indent + e.name_len];
        entries.push((name, &text[start..end], shift(e.line, r.lines)));
        reuse.push(Some(e.chunk));
    }
    let block_end = shift(last.block_end, r.bytes);
    let block_lines = shift(last.block_lines, r.lines);
    let mut skeleton = text[..last.first].to_string();
    if block_end < text.len() {
        skeleton.extend(std::iter::repeat_n('\n', block_lines));
        skeleton.push_str(&text[block_end..]);
    }
    Layout {
        skeleton,
        vms_line: last.vms_line,
        indent,
        entries,
        first: last.first,
        block_end,
        block_lines,
        reuse,
        reuse_epoch: last.epoch,
        names: Some(last.names),
        gone,
        buffer: Some(last.text),
    }
}

#[cfg(test)]
mod tests {
    use super::super::split;
    use super::*;

    /// The last layout of `text`, each entry's chunk named by the entry's text (so that a
    /// chunk reused can be told to be the one of the same text).
    fn last_of(text: &str) -> Option<Last> {
        let layout = split(text)?;
        let chunks = layout
            .entries
            .iter()
            .map(|(_, t, _)| {
                Arc::new(Chunk {
                    name: t.to_string(),
                    ports: Vec::new(),
                    locs: Arc::new(Vec::new()),
                    used: Default::default(),
                    built: Default::default(),
                })
            })
            .collect();
        Some(Last::new(text, layout, chunks, 0))
    }

    fn vm(i: usize) -> String {
        if i.is_multiple_of(3) {
            format!("  v{i}:\n    # a comment\n    ports:\n      - {{ network: n }}\n\n")
        } else {
            format!("  v{i}: {{ ports: [ {{ network: n }} ] }}\n")
        }
    }

    /// Random edits of texts with and without a tail after the vms block: whenever the
    /// layout is worked out from the last one, it is exactly what `split` makes of the
    /// text, and each entry reused has the text it had.
    #[test]
    fn patched_layouts_are_split_layouts() {
        let vms: String = (0..30).map(vm).collect();
        let bases = [
            format!("version: 1\nnetworks: {{}}\nvms:\n  # the guests\n{vms}"),
            format!("version: 1\nvms:\n{vms}# end\nnetworks: {{}}\nhost: {{}}\n"),
            format!("version: 1\nvms:\n{}", vms.trim_end()),
        ];
        let pieces = [
            "",
            " ",
            "  ",
            "\n",
            "#",
            ":",
            "x",
            "  v99: {}\n",
            "  v1: {}\n",
            "    y: 1\n",
            "\t",
            "top: 1\n",
            "  - a\n",
            "\n\n",
        ];
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % m as u64) as usize
        };
        let (mut patched, mut rounds) = (0, 0);
        for round in 0..4000 {
            let base = &bases[round % bases.len()];
            let mut text = base.clone();
            for _ in 0..1 + next(2) {
                let at = next(text.len() + 1);
                let end = (at + next(6) * next(2)).min(text.len());
                text.replace_range(at..end, pieces[next(pieces.len())]);
            }
            // From the base to the edit, and back.
            for (from, to) in [
                (base.as_str(), text.as_str()),
                (text.as_str(), base.as_str()),
            ] {
                let Some(last) = last_of(from) else { continue };
                rounds += 1;
                let mut slot = Some(last);
                let Some(got) = patch(&mut slot, to) else {
                    assert!(slot.is_some(), "round {round}: kept when not patched");
                    continue;
                };
                patched += 1;
                let want =
                    split(to).unwrap_or_else(|| panic!("round {round}: split refuses {to:?}"));
                assert_eq!(
                    got.skeleton, want.skeleton,
                    "round {round}: {from:?} -> {to:?}"
                );
                assert_eq!(got.entries, want.entries, "round {round}: {to:?}");
                assert_eq!(
                    (
                        got.vms_line,
                        got.indent,
                        got.first,
                        got.block_end,
                        got.block_lines
                    ),
                    (
                        want.vms_line,
                        want.indent,
                        want.first,
                        want.block_end,
                        want.block_lines
                    ),
                    "round {round}"
                );
                for (e, c) in got.entries.iter().zip(&got.reuse) {
                    if let Some(c) = c {
                        assert_eq!(c.name, e.1, "round {round}: a reused entry's text");
                    }
                }
                let names: HashSet<Box<str>> =
                    want.entries.iter().map(|e| Box::from(e.0)).collect();
                assert_eq!(got.names.as_ref(), Some(&names), "round {round}");
            }
        }
        assert!(patched > rounds / 4, "only {patched} of {rounds} patched");
    }
}
