//! `kvmnet import libvirt`: libvirt network XML (and, optionally, domain XML for the VMs'
//! interfaces) as a kvmnet spec on stdout.
//!
//! The import is all or nothing: every element and attribute either has a faithful mapping
//! or is refused with its file, line and column, and one refusal means no spec is printed.
//! A few things carry no networking meaning (a UUID, a title, metadata) and are passed
//! over; a few libvirt behaviours that kvmnet does not reproduce but that change no address
//! (libvirt's own DNS server, the bridge's MAC) are accepted with a note on stderr. README's
//! "Import from libvirt" lists every decision.
//!
//! The readers are pure functions from XML text to [`model`] values, and [`emit`] turns
//! those into YAML, so all of it is unit-tested without files or a host.

use std::path::{Path, PathBuf};

use crate::engine::EngineError;
use crate::spec::HostIdentity;

mod emit;
mod libvirt_domain;
mod libvirt_network;
mod model;
mod nwfilter;
mod xml;

pub use crate::cli::LibvirtImportArgs;

/// Why an input cannot become a spec. Every variant names the file; the located ones the
/// line and column too.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {file}: {}", crate::error::io_message(.error))]
    Read {
        file: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{file}:{line}:{col}: not well-formed XML: {message}")]
    Xml {
        file: String,
        line: u32,
        col: u32,
        message: String,
    },
    /// An element or attribute without a faithful mapping, or a value kvmnet cannot take.
    #[error("{file}:{line}:{col}: {element}: {message}")]
    Unmapped {
        file: String,
        line: u32,
        col: u32,
        element: String,
        message: String,
    },
}

/// Reads one file, or says why not.
fn read(path: &Path) -> Result<String, ImportError> {
    std::fs::read_to_string(path).map_err(|error| ImportError::Read {
        file: path.display().to_string(),
        error,
    })
}

/// The inputs of one import, read.
pub struct Inputs {
    pub networks: Vec<(String, String)>,
    pub domains: Vec<(String, String)>,
    /// The `--nwfilter` directory.
    pub nwfilter: Option<PathBuf>,
}

/// What an import made: the spec's text, and notes for stderr.
#[derive(Debug)]
pub struct Imported {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// The whole import: XML texts in, a spec (or every refusal) out.
pub fn import(inputs: &Inputs) -> Result<Imported, Vec<ImportError>> {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let mut networks = Vec::new();
    for (file, text) in &inputs.networks {
        let mut cx = xml::Report::new(file, &mut errors, &mut notes);
        if let Some(n) = libvirt_network::read(&mut cx, text) {
            networks.push(n);
        }
    }
    let mut vms = Vec::new();
    for (file, text) in &inputs.domains {
        let mut cx = xml::Report::new(file, &mut errors, &mut notes);
        if let Some(vm) = libvirt_domain::read(&mut cx, text, &networks, inputs.nwfilter.as_deref())
        {
            vms.push(vm);
        }
    }
    let spec = model::assemble(networks, vms, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let yaml = emit::spec(&spec);
    // The output must be a spec kvmnet takes; a refusal here is a mapping this module got
    // wrong, reported rather than printed.
    if let Err(e) = crate::engine::parse("(import)", yaml.as_bytes(), &HostIdentity::default()) {
        let first = inputs.networks.first().map_or("", |(f, _)| f.as_str());
        return Err(vec![ImportError::Unmapped {
            file: first.to_string(),
            line: 1,
            col: 1,
            element: "<network>".into(),
            message: format!("the imported spec is not valid: {}", e.to_string().trim()),
        }]);
    }
    Ok(Imported { yaml, notes })
}

/// `kvmnet import libvirt`: prints the spec, or every refusal (exit 2, nothing on stdout).
pub fn run(a: &LibvirtImportArgs) -> Result<(), EngineError> {
    let mut errors = Vec::new();
    let mut load = |paths: &[PathBuf]| -> Vec<(String, String)> {
        paths
            .iter()
            .filter_map(|p| match read(p) {
                Ok(t) => Some((p.display().to_string(), t)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            })
            .collect()
    };
    let networks = load(&a.networks);
    let domains = load(&a.domain);
    let outcome = if errors.is_empty() {
        import(&Inputs {
            networks,
            domains,
            nwfilter: a.nwfilter.clone(),
        })
    } else {
        Err(errors)
    };
    match outcome {
        Ok(done) => {
            for n in &done.notes {
                eprintln!("# {n}");
            }
            print!("{}", done.yaml);
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                crate::log::line(crate::log::Level::Error, &e.to_string());
            }
            Err(EngineError::Usage(format!(
                "import libvirt: {} {} (above); no spec was printed",
                errors.len(),
                if errors.len() == 1 { "error" } else { "errors" }
            )))
        }
    }
}
