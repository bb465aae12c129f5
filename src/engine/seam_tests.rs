//! The engine through the backend seam, against an in-memory host (no root): a plan made
//! from what the backend observes, executed through its executor, rolled back when a step
//! is refused, and what it borrowed given back on destroy.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::apply::{ApplyError, Executor, Stopped};
use crate::backend::sysctl::SysctlError;
use crate::nft::NftTable;
use crate::observe::ObserveError;
use crate::plan::Set;
use crate::snapshot::Snapshot;

/// A host that has only sysctls, and a kernel that may refuse to change one of them.
struct Fake {
    state_dir: StateDir,
    sysctls: BTreeMap<String, String>,
    refuse: Option<String>,
    /// What the engine had the host do, in order.
    log: Vec<String>,
}

impl Backend for Fake {
    fn state_dir(&self) -> &StateDir {
        &self.state_dir
    }

    fn observe(
        &mut self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError> {
        // As the contract asks: the sysctls the spec manages or the state directory
        // records, and the borrowed settings recorded.
        let state = self.state_dir.load()?;
        let mut keys: BTreeSet<String> = state.borrowed.sysctls.keys().cloned().collect();
        keys.extend(extra_sysctls.iter().cloned());
        keys.extend(spec.map(managed_sysctls).unwrap_or_default().into_keys());
        let mut snap = Snapshot {
            scope: "fake".into(),
            sysctls: keys
                .into_iter()
                .map(|k| {
                    let v = self.sysctls.get(&k).cloned();
                    (k, v)
                })
                .collect(),
            ..Snapshot::default()
        };
        state.borrowed.fill(&mut snap);
        Ok(snap)
    }

    fn observe_nft(&mut self, _: Option<&NftTable>) -> Result<Option<NftTable>, ObserveError> {
        Ok(None)
    }

    fn remove_half_made(&mut self, _: &BTreeSet<String>) -> Result<(), ApplyError> {
        self.log.push("remove half made".into());
        Ok(())
    }

    fn executor(&mut self) -> Result<Box<dyn Executor + '_>, ApplyError> {
        Ok(Box::new(FakeKernel(self)))
    }
}

struct FakeKernel<'a>(&'a mut Fake);

impl Executor for FakeKernel<'_> {
    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
        for (i, s) in steps.iter().enumerate() {
            let Step::Sysctl(Set { name: key, to, .. }) = s else {
                unreachable!("a host of sysctls only plans sysctls: {s}");
            };
            self.0.log.push(s.to_string());
            if self.0.refuse.as_ref() == Some(key) {
                return Err(Box::new(Stopped {
                    done: (0..i).collect(),
                    failed: vec![i],
                    error: ApplyError::Sysctl(SysctlError::Write {
                        key: key.clone(),
                        value: to.clone(),
                        source: std::io::Error::from_raw_os_error(libc::EPERM),
                    }),
                }));
            }
            self.0.sysctls.insert(key.clone(), to.clone());
        }
        Ok(())
    }
}

const SPEC: &str = "version: 1
host:
  sysctl:
    net.core.somaxconn: 1024
    net.ipv4.tcp_syncookies: 1
";

fn strings(steps: &[Step]) -> Vec<String> {
    steps.iter().map(ToString::to_string).collect()
}

#[test]
fn plan_execute_rollback_and_give_back_through_the_seam() {
    let dir = std::env::temp_dir().join(format!("kvmnet-seam-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let original: BTreeMap<String, String> = [
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_syncookies", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let mut host = Fake {
        state_dir: StateDir { dir: dir.clone() },
        sysctls: original.clone(),
        refuse: Some("net.ipv4.tcp_syncookies".into()),
        log: Vec::new(),
    };
    let spec = parse("spec.yaml", SPEC.as_bytes(), &Default::default()).unwrap();

    // The second step is refused: the first is undone, and nothing is recorded as borrowed.
    let p = plan_on(&mut host, Some(&spec), "spec.yaml").unwrap();
    let steps = p.plan.steps.clone();
    assert_eq!(steps.len(), 2, "{:?}", strings(&steps));
    let e = execute_on(&mut host, &p, "apply", "h1", None, 0).unwrap_err();
    drop(p);
    assert_eq!(e.kind(), ErrorKind::KernelRefused);
    assert!(e.to_string().contains("step 2"), "{e}");
    let mut want = vec!["remove half made".to_string()];
    want.extend(strings(&steps));
    want.extend(strings(&[steps[1].inverse(), steps[0].inverse()]));
    assert_eq!(host.log, want);
    assert_eq!(host.sysctls, original);
    assert!(host.state_dir.load().unwrap().borrowed.sysctls.is_empty());

    // Applied: the originals were recorded before the change.
    host.refuse = None;
    let p = plan_on(&mut host, Some(&spec), "spec.yaml").unwrap();
    execute_on(&mut host, &p, "apply", "h1", None, 0).unwrap();
    drop(p);
    assert_eq!(host.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(host.sysctls["net.ipv4.tcp_syncookies"], "1");
    let borrowed = host.state_dir.load().unwrap().borrowed.sysctls;
    assert_eq!(*borrowed, original);

    // Converged: the in-memory host is what the spec asks for.
    let p = plan_on(&mut host, Some(&spec), "spec.yaml").unwrap();
    assert!(p.plan.is_empty(), "{:?}", strings(&p.plan.steps));
    drop(p);

    // Destroy gives back what was borrowed, and forgets it.
    let p = plan_on(&mut host, None, "(destroy)").unwrap();
    execute_on(&mut host, &p, "destroy", "", None, 0).unwrap();
    drop(p);
    assert_eq!(host.sysctls, original);
    assert!(host.state_dir.load().unwrap().borrowed.sysctls.is_empty());
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 3, "{audit}");
    std::fs::remove_dir_all(&dir).unwrap();
}
