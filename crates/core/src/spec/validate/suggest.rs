//! "did you mean 'X'?" for a misspelt field name or value: the known word one edit away.

/// The optimal-string-alignment distance between `a` and `b` (insertions, deletions,
/// substitutions and swaps of neighbours each count one), or `None` past `max`.
fn distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    // Three rows of the table: two back (for swaps), the last, the current.
    let mut two_back: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (last[j] + 1).min(cur[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two_back[j - 2] + 1);
            }
        }
        two_back = std::mem::replace(&mut last, cur);
    }
    Some(last[b.len()]).filter(|&d| d <= max)
}

/// The first of `known` one edit from `word` (or equal to it but for case).
pub(crate) fn one_edit_from<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().copied().find(|k| {
        *k != word && (k.eq_ignore_ascii_case(word) || distance_within(word, k, 1).is_some())
    })
}

/// `"; did you mean 'X'?"` when [`one_edit_from`] finds one, else nothing.
pub(crate) fn did_you_mean(word: &str, known: &[&str]) -> String {
    one_edit_from(word, known).map_or(String::new(), |k| format!("; did you mean '{k}'?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_edit() {
        let known = ["mode", "bridge", "ipv4", "mtu", "uplink", "nat", "dhcp"];
        for (word, want) in [
            ("mtuu", Some("mtu")),      // insertion
            ("mt", Some("mtu")),        // deletion
            ("mdoe", Some("mode")),     // swap of neighbours
            ("bridgr", Some("bridge")), // substitution
            ("MTU", Some("mtu")),       // case only
            ("Bridge", Some("bridge")),
            ("ipv6", Some("ipv4")),
            ("dhcpv6", None), // two edits
            ("xyz", None),
            ("", None),
        ] {
            assert_eq!(one_edit_from(word, &known), want, "{word}");
        }
        assert_eq!(
            did_you_mean("vmss", &["version", "vms"]),
            "; did you mean 'vms'?"
        );
        assert_eq!(did_you_mean("vms", &["vms"]), "");
    }

    #[test]
    fn distances() {
        assert_eq!(distance_within("ab", "ba", 1), Some(1));
        assert_eq!(distance_within("abc", "abc", 1), Some(0));
        assert_eq!(distance_within("kitten", "sitting", 3), Some(3));
        assert_eq!(distance_within("kitten", "sitting", 2), None);
        assert_eq!(distance_within("é", "e", 1), Some(1));
    }
}
