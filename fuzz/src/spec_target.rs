//! The spec parser, alone and through the cache.

use kvmnet::snapshot::Snapshot;
use kvmnet::spec::{self, HostIdentity, Spec, SpecCache, SpecError};
use kvmnet::state::HostState;

/// A fixed host identity (derived MACs depend on it; any one will do).
fn id() -> HostIdentity {
    HostIdentity::new([7; 16], "host")
}

/// `spec::parse_bytes` on any bytes: no panic; an error list that is well formed; and a spec
/// it accepts goes through the pure layers that follow without a panic.
pub fn spec(data: &[u8]) {
    match spec::parse_bytes(data, &id()) {
        Ok(s) => downstream(&s),
        Err(errors) => check_errors(data, &errors),
    }
}

/// The texts of `data` (separated by NUL bytes, which no spec may contain), parsed in turn
/// by one `SpecCache`: each answer must equal the full parse of that text, whatever came
/// before. The cache re-reads only the VM entries that changed, so a wrong reuse shows here.
pub fn spec_cache(data: &[u8]) {
    let mut cache = SpecCache::default();
    let mut last: &[u8] = &[];
    for text in data.split(|&b| b == 0).take(6) {
        let got = cache.parse_bytes(text, &id());
        let want = spec::parse_bytes(text, &id());
        assert!(
            got == want,
            "cache and full parse differ for:\n{}\n-- cache\n{got:?}\n-- full\n{want:?}",
            String::from_utf8_lossy(text)
        );
        last = text;
    }
    // The same text again is read from the cache alone, when it was cached at all.
    if cache.last_read().is_some() {
        let again = cache.parse_bytes(last, &id());
        assert_eq!(
            cache.last_read(),
            Some(0),
            "an unchanged text was read again"
        );
        assert!(again == spec::parse_bytes(last, &id()));
    }
}

/// Errors are sorted, distinct, name a path and point inside the text (1-based; one past
/// the last line or column at most, where a value is missing at the end).
fn check_errors(data: &[u8], errors: &[SpecError]) {
    assert!(!errors.is_empty(), "an error result without an error");
    let text = String::from_utf8_lossy(data);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    // YAML's line breaks: CR LF, CR or LF (YAML 1.2 section 5.4). yaml-rust2 does not
    // always count a lone CR as one (an empty block scalar after it is placed on the line
    // before, past its end), so columns are checked only where lines end in LF.
    let lone_cr = text.replace("\r\n", "\n").contains('\r');
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.split('\n').collect();
    for e in errors {
        assert!(
            !e.path.is_empty() && !e.message.is_empty(),
            "error without path or message: {e:?}"
        );
        assert!(e.loc.line >= 1 && e.loc.col >= 1, "loc not 1-based: {e:?}");
        assert!(e.loc.line <= lines.len() + 1, "line past the end: {e:?}");
        if let Some(l) = lines.get(e.loc.line - 1).filter(|_| !lone_cr) {
            assert!(
                e.loc.col <= l.chars().count() + 1,
                "column past the end of line {:?}: {e:?}",
                l
            );
        }
    }
    for w in errors.windows(2) {
        let key = |e: &SpecError| (e.loc, e.path.clone(), e.message.clone());
        assert!(
            key(&w[0]) < key(&w[1]),
            "errors unsorted or repeated: {w:?}"
        );
    }
}

/// What a daemon or `plan` does next with a valid spec, short of touching a host: none of it
/// may panic, and the plan from the desired state to itself is empty.
fn downstream(s: &Spec) {
    for (path, loc) in s.locs.to_map() {
        assert_eq!(s.loc(&path), loc, "Spec::loc({path:?})");
    }
    let _ = kvmnet::dhcp::scopes(s);
    let table = kvmnet::nft::table_for(s);
    let _ = kvmnet::nft::replace_script(table.as_ref());
    let snap = Snapshot::default();
    if let Ok(want) = kvmnet::desired::desired(s, &snap) {
        let plan = kvmnet::plan::diff(&want, &HostState::default());
        let _ = plan.render();
        let _ = plan.to_json();
        let same = kvmnet::plan::diff(&want, &want);
        assert!(
            same.is_empty(),
            "a plan from a state to itself: {}",
            same.render()
        );
    }
}
