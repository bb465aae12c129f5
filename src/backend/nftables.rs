//! kvmnet's two nftables tables, and only those. Changes go through `nft -f -`, one script per
//! change so every change is a single transaction. Observation reads the tables through our
//! own nfnetlink socket (table comment and object count, rule comments, sets and their
//! elements, base chain hooks): binary dumps of exactly kvmnet's tables, cheap even with
//! thousands of rules. Rules are read back as text (`nft list`) only where a change has to be
//! undoable: the chains that change or go away, or everything when the tables get replaced.

pub use super::nfnetlink::{foreign_firewalls, foreign_forward_drops};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::process::{Command, Stdio};

use super::events::NftObject;
use super::nfnetlink::{
    FamilyRaw, NFPROTO_INET, NFT_SET_INTERVAL, NFT_SET_TIMEOUT, Nfnl, element_keys, elements,
    family_number, open_socket, read_chain, read_family, read_rules, read_set, read_table_head,
};
use crate::nft::{self, NftChain, NftChange, NftSet, NftTable};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Missing(std::io::Error),
    #[error("nft rejected kvmnet's tables: {0}")]
    Rejected(String),
    #[error("nft list: {0}")]
    List(String),
    #[error("nftables netlink: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("nftables netlink: {op}: {message}")]
    Kernel { op: String, message: String },
}

fn nft() -> Command {
    let mut c = Command::new("nft");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::statedir::share_locks_with(&mut c);
    c
}

pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `nft list ARGS`: `None` when the object does not exist.
fn list(args: &[&str]) -> Result<Option<String>, NftError> {
    let out = match nft().arg("list").args(args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => return Err(NftError::Missing(e)),
    };
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::List(err.trim().to_string()))
    }
}

fn run_script(script: &str) -> Result<(), NftError> {
    let mut child = nft().args(["-f", "-"]).spawn().map_err(NftError::Missing)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(NftError::Missing)?;
    let out = child.wait_with_output().map_err(NftError::Missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Replace kvmnet's tables with `to` (or remove them) in one transaction.
pub fn replace(to: Option<&NftTable>) -> Result<(), NftError> {
    run_script(&nft::replace_script(to))
}

/// Make the changes, all in one transaction: all of them happen or none.
pub fn change(changes: &[&NftChange]) -> Result<(), NftError> {
    let mut script = String::new();
    for c in changes {
        c.script(&mut script);
    }
    run_script(&script)
}

/// kvmnet's tables as last read, kept current by [`NftCache::update`] from the kernel's
/// notifications: one changed chain or set is read again, not the whole tables.
#[derive(Debug, PartialEq, Eq)]
pub struct NftCache {
    /// By family name; `None` when the kernel has no nftables at all.
    families: Option<BTreeMap<&'static str, Option<FamilyRaw>>>,
}

/// What [`NftCache::update`] changed: the chains and sets named (by family), elements of
/// sets (in order), or anything.
#[derive(Debug, Default)]
pub struct Touched {
    pub all: bool,
    pub chains: BTreeSet<(&'static str, String)>,
    pub sets: BTreeSet<(&'static str, String)>,
    pub elements: Vec<(&'static str, String, ElementOp)>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        !self.all && self.chains.is_empty() && self.sets.is_empty() && self.elements.is_empty()
    }
}

/// Elements added to a set (as nft writes them), or removed (by key; a map's entry goes with
/// its key).
#[derive(Debug)]
pub enum ElementOp {
    Add(Vec<String>),
    Remove(Vec<String>),
}

impl ElementOp {
    fn apply(&self, elements: &mut BTreeSet<String>) {
        match self {
            ElementOp::Add(new) => elements.extend(new.iter().cloned()),
            ElementOp::Remove(keys) => {
                for k in keys {
                    let with_data = format!("{k} : ");
                    elements.retain(|x| x != k && !x.starts_with(&with_data));
                }
            }
        }
    }
}

impl NftCache {
    /// Reads both of kvmnet's tables.
    pub fn read() -> Result<NftCache, NftError> {
        let Some(mut sock) = open_socket()? else {
            return Ok(NftCache { families: None });
        };
        let mut families = BTreeMap::new();
        for family in [nft::FAMILY, nft::BRIDGE_FAMILY] {
            families.insert(family, read_family(&mut sock, family)?);
        }
        Ok(NftCache {
            families: Some(families),
        })
    }

    /// Reads again what `changes` (notifications: family number, table, object) touched.
    pub fn update(
        &mut self,
        changes: &BTreeSet<(u8, String, NftObject)>,
        element_changes: &[crate::backend::events::ElementChange],
    ) -> Result<Touched, NftError> {
        let mut touched = Touched::default();
        let Some(families) = self.families.as_mut() else {
            return Ok(touched);
        };
        // Element changes of a set that cannot be followed count as a change of the set.
        let mut changes = changes.clone();
        let followed = followable(families, &mut changes, element_changes);
        let ours: Vec<&(u8, String, NftObject)> =
            changes.iter().filter(|(_, t, _)| t == nft::TABLE).collect();
        let reread: BTreeSet<(u8, &str)> = ours
            .iter()
            .filter_map(|(f, _, o)| match o {
                NftObject::Set(s) => Some((*f, s.as_str())),
                _ => None,
            })
            .collect();
        follow_elements(families, followed, &ours, &reread, &mut touched);
        if ours.is_empty() {
            return Ok(touched);
        }
        let Some(mut sock) = open_socket()? else {
            return Ok(touched);
        };
        for family in [nft::FAMILY, nft::BRIDGE_FAMILY] {
            let fam = family_number(family);
            let objs: Vec<&NftObject> = ours
                .iter()
                .filter(|(f, _, _)| *f == fam)
                .map(|(_, _, o)| o)
                .collect();
            if objs.is_empty() {
                continue;
            }
            let slot = families.entry(family).or_insert(None);
            let whole = objs
                .iter()
                .any(|o| matches!(o, NftObject::Table | NftObject::Other));
            let Some(raw) = slot.as_mut().filter(|_| !whole) else {
                *slot = read_family(&mut sock, family)?;
                touched.all = true;
                continue;
            };
            let Some((mark, uses)) = read_table_head(&mut sock, family)? else {
                *slot = None;
                touched.all = true;
                continue;
            };
            raw.mark = mark;
            raw.uses = uses;
            reread_objects(&mut sock, family, raw, &objs, &mut touched)?;
        }
        Ok(touched)
    }

    /// The tables in kvmnet's terms (rule texts not read), or `None` when there are none.
    pub fn table(&self) -> Option<NftTable> {
        let mut t = self.table_head()?;
        for (family, raw) in self.families.as_ref()? {
            let Some(raw) = raw else {
                continue;
            };
            for name in raw.chains.keys() {
                if let Some(c) = chain_of(family, raw, name) {
                    t.chains.insert(format!("{family} {name}"), c);
                }
            }
            for name in raw.sets.keys() {
                if let Some(set) = set_of(family, raw, name) {
                    t.sets.insert(format!("{family} {name}"), set);
                }
            }
        }
        Some(t)
    }

    /// Brings `t` (made by [`NftCache::table`] and patched since) in line with what an update
    /// `touched`: only those chains and sets are made again.
    pub fn patch(&self, t: &mut Option<NftTable>, touched: &Touched) {
        let Some(table) = t.as_mut().filter(|_| !touched.all) else {
            *t = self.table();
            return;
        };
        let Some(head) = self.table_head() else {
            *t = None;
            return;
        };
        table.families = head.families;
        table.intact = head.intact;
        table.listing = None;
        let raw_of = |family: &str| {
            self.families
                .as_ref()
                .and_then(|f| f.get(family))
                .and_then(|r| r.as_ref())
        };
        for (family, name) in &touched.chains {
            let key = format!("{family} {name}");
            match raw_of(family).and_then(|raw| chain_of(family, raw, name)) {
                Some(c) => table.chains.insert(key, c),
                None => table.chains.remove(&key),
            };
        }
        for (family, name) in &touched.sets {
            let key = format!("{family} {name}");
            match raw_of(family).and_then(|raw| set_of(family, raw, name)) {
                Some(set) => table.sets.insert(key, set),
                None => table.sets.remove(&key),
            };
        }
        // Sets made again above already hold these.
        for (family, name, op) in &touched.elements {
            if touched.sets.contains(&(*family, name.clone())) {
                continue;
            }
            match table.sets.get_mut(&format!("{family} {name}")) {
                Some(set) => op.apply(&mut set.elements),
                None => {
                    *t = self.table();
                    return;
                }
            }
        }
    }

    /// Makes `t` (tables this cache made, then read further for a plan) what [`NftCache::table`]
    /// would make now: rule texts dropped, any chain whose rules differ made again. `false`
    /// when `t` does not hold the same chains and sets (then it is of no use).
    pub fn settle(&self, t: &mut NftTable) -> bool {
        let Some(families) = self.families.as_ref() else {
            return false;
        };
        let raws: Vec<(&str, &FamilyRaw)> = families
            .iter()
            .filter_map(|(f, r)| Some((*f, r.as_ref()?)))
            .collect();
        let (chains, sets) = raws.iter().fold((0, 0), |(c, s), (_, r)| {
            (c + r.chains.len(), s + r.sets.len())
        });
        if t.listing.is_some() || t.chains.len() != chains || t.sets.len() != sets {
            return false;
        }
        for c in t.chains.values_mut() {
            let Some((family, raw)) = raws.iter().find(|(f, _)| *f == c.family) else {
                return false;
            };
            let Some(want) = raw
                .rules
                .get(&c.name)
                .map(Vec::as_slice)
                .or_else(|| raw.chains.contains_key(&c.name).then_some(&[][..]))
            else {
                return false;
            };
            let same = c.rules.len() == want.len()
                && c.rules.iter().zip(want).all(|(a, b)| a.hash == b.hash);
            if same {
                for r in c.rules.iter_mut() {
                    r.text.clear();
                }
            } else if let Some(fresh) = chain_of(family, raw, &c.name) {
                *c = fresh;
            }
        }
        true
    }

    /// The tables without their chains and sets: which exist, and whether they are intact.
    fn table_head(&self) -> Option<NftTable> {
        let mut t = NftTable::empty();
        for (family, raw) in self.families.as_ref()? {
            let Some(raw) = raw else {
                continue;
            };
            t.families.insert(family.to_string());
            if raw.mark.as_deref() != Some(nft::OWNER_COMMENT) {
                t.intact = false;
            }
            // Everything the table holds is a chain or a set we have seen; anything else (a
            // stateful object, a flowtable) makes it unrecognised.
            if raw.uses as usize != raw.chains.len() + raw.sets.len() {
                t.intact = false;
            }
            // Rules in a chain the chain dump did not show: the tables changed mid-read.
            if raw.rules.keys().any(|c| !raw.chains.contains_key(c)) {
                t.intact = false;
            }
        }
        (!t.families.is_empty()).then_some(t)
    }
}

/// Element notifications of kvmnet's tables that can be followed one by one: those of plain
/// sets. A set with intervals or timeouts cannot be: its change joins `changes` instead, and
/// the set is read again.
fn followable<'e>(
    families: &BTreeMap<&'static str, Option<FamilyRaw>>,
    changes: &mut BTreeSet<(u8, String, NftObject)>,
    element_changes: &'e [crate::backend::events::ElementChange],
) -> Vec<(&'static str, &'e crate::backend::events::ElementChange)> {
    let mut followed = Vec::new();
    for e in element_changes.iter().filter(|e| e.table == nft::TABLE) {
        let family = if e.family == NFPROTO_INET {
            nft::FAMILY
        } else {
            nft::BRIDGE_FAMILY
        };
        let plain = families
            .get(family)
            .and_then(|f| f.as_ref())
            .and_then(|f| f.sets.get(&e.set))
            .is_some_and(|s| s.flags & (NFT_SET_INTERVAL | NFT_SET_TIMEOUT) == 0);
        if plain {
            followed.push((family, e));
        } else {
            changes.insert((e.family, e.table.clone(), NftObject::Set(e.set.clone())));
        }
    }
    followed
}

/// Applies `followed` element by element to the cached sets, unless the set (`reread`) or
/// its whole table (in `ours`) is read again anyway.
fn follow_elements(
    families: &mut BTreeMap<&'static str, Option<FamilyRaw>>,
    followed: Vec<(&'static str, &crate::backend::events::ElementChange)>,
    ours: &[&(u8, String, NftObject)],
    reread: &BTreeSet<(u8, &str)>,
    touched: &mut Touched,
) {
    for (family, e) in followed {
        let fam = family_number(family);
        let whole = ours
            .iter()
            .any(|(f, _, o)| *f == fam && matches!(o, NftObject::Table | NftObject::Other));
        if whole || reread.contains(&(fam, e.set.as_str())) {
            continue;
        }
        let Some(set) = families
            .get_mut(family)
            .and_then(|f| f.as_mut())
            .and_then(|f| f.sets.get_mut(&e.set))
        else {
            continue;
        };
        let op = if e.added {
            ElementOp::Add(
                elements(&set.ty, std::slice::from_ref(&e.body))
                    .into_iter()
                    .collect(),
            )
        } else {
            ElementOp::Remove(element_keys(&set.ty, &e.body))
        };
        op.apply(&mut set.elements);
        touched.elements.push((family, e.set.clone(), op));
    }
}

/// Reads again the chains, sets and rules of `family` that `objs` say changed, into `raw`,
/// noting them in `touched`.
fn reread_objects(
    sock: &mut Nfnl,
    family: &'static str,
    raw: &mut FamilyRaw,
    objs: &[&NftObject],
    touched: &mut Touched,
) -> Result<(), NftError> {
    for o in objs {
        match o {
            NftObject::Chain(n) | NftObject::Rules(n) => {
                touched.chains.insert((family, n.clone()));
            }
            NftObject::Set(n) => {
                touched.sets.insert((family, n.clone()));
            }
            _ => {}
        }
    }
    for o in objs {
        match o {
            NftObject::Chain(name) => match read_chain(sock, family, name)? {
                Some(hook) => {
                    raw.chains.insert(name.clone(), hook);
                }
                None => {
                    raw.chains.remove(name);
                    raw.rules.remove(name);
                }
            },
            NftObject::Set(name) => match read_set(sock, family, name)? {
                Some(s) => {
                    raw.sets.insert(name.clone(), s);
                }
                None => {
                    raw.sets.remove(name);
                }
            },
            _ => {}
        }
    }
    for o in objs {
        if let NftObject::Rules(chain) = o {
            match read_rules(sock, family, Some(chain))?.remove(chain.as_str()) {
                Some(r) => {
                    raw.rules.insert(chain.clone(), r);
                }
                None => {
                    raw.rules.remove(chain.as_str());
                }
            }
        }
    }
    Ok(())
}

fn chain_of(family: &str, raw: &FamilyRaw, name: &str) -> Option<NftChain> {
    let hook = raw.chains.get(name)?;
    Some(NftChain {
        family: family.to_string(),
        name: name.to_string(),
        hook: hook.clone(),
        rules: raw.rules.get(name).cloned().unwrap_or_default(),
    })
}

fn set_of(family: &str, raw: &FamilyRaw, name: &str) -> Option<NftSet> {
    let s = raw.sets.get(name)?;
    Some(NftSet {
        family: family.to_string(),
        name: name.to_string(),
        ty: s.ty.clone(),
        elements: s.elements.clone(),
    })
}

/// Puts nft's own text of the rules into `t`: for the chains named, or for all of them
/// (keeping the whole listing) when `None`.
fn read_texts(t: &mut NftTable, which: Option<Vec<String>>) -> Result<(), NftError> {
    let families: Vec<String> = t.families.iter().cloned().collect();
    let whole = |t: &mut NftTable, keep: bool| -> Result<(), NftError> {
        let mut all = String::new();
        for fam in &families {
            let Some(text) = list(&["table", fam, nft::TABLE])? else {
                continue;
            };
            for (name, rules) in nft::parse_listing(&text) {
                if let Some(c) = t.chains.get_mut(&format!("{fam} {name}")) {
                    c.rules = rules;
                }
            }
            all.push_str(&text);
        }
        if keep {
            t.listing = Some(all);
        }
        Ok(())
    };
    match which {
        None => whole(t, true),
        // Past a handful, one listing per table is cheaper than one per chain.
        Some(keys) if keys.len() > 8 => whole(t, false),
        Some(keys) => {
            for k in keys {
                let Some((fam, name)) = k.split_once(' ') else {
                    continue;
                };
                if let Some(text) = list(&["chain", fam, nft::TABLE, name])?
                    && let Some(rules) = nft::parse_listing(&text).remove(name)
                    && let Some(c) = t.chains.get_mut(&k)
                {
                    c.rules = rules;
                }
            }
            Ok(())
        }
    }
}

/// kvmnet's tables as they are now, or `None` when there are none. `want` (what the spec
/// asks for) decides which rules are worth reading back as text.
pub fn observe(want: Option<&NftTable>) -> Result<Option<NftTable>, NftError> {
    observe_from(NftCache::read()?.table(), want, None)
}

/// [`observe`], from tables read before (and kept current since: [`NftCache::table`]). A chain whose rules carry
/// the same hashes, in the same order, as in `known` (tables kvmnet made before) takes its
/// rule texts from there: no need to ask `nft` for what kvmnet itself wrote.
pub fn observe_from(
    table: Option<NftTable>,
    want: Option<&NftTable>,
    known: Option<&NftTable>,
) -> Result<Option<NftTable>, NftError> {
    let Some(mut t) = table else {
        return Ok(None);
    };
    let mut which = nft::chains_to_read(want, &t);
    if let (Some(keys), Some(known)) = (which.as_mut(), known) {
        keys.retain(|k| {
            let (Some(have), Some(old)) = (t.chains.get_mut(k), known.chains.get(k)) else {
                return true;
            };
            let same = have.rules.len() == old.rules.len()
                && have
                    .rules
                    .iter()
                    .zip(&old.rules)
                    .all(|(h, o)| h.hash == o.hash);
            if same {
                have.rules.clone_from(&old.rules);
            }
            !same
        });
    }
    if which.as_ref().is_none_or(|w| !w.is_empty()) {
        if !available() {
            return Err(NftError::Missing(io::Error::new(
                io::ErrorKind::NotFound,
                "nft",
            )));
        }
        read_texts(&mut t, which)?;
    }
    Ok(Some(t))
}
