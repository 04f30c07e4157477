//! # arbiter-wfpdiag: reading a machine's WFP state from netsh's XML
//!
//! `netsh wfp show filters` (filters.xml), `netsh wfp show state`
//! (wfpstate.xml), `netsh wfp show netevents` and the wfpdiag.xml inside the
//! .cab of `netsh wfp capture start/stop` describe the providers, sublayers,
//! callouts, filters and classify events of a real machine. This crate reads
//! them ([`Machine::read`]), streaming (see [`xml`]), and answers the interop
//! engineer's two questions:
//!
//! - [`inventory`]: who is installed at ALE_CONNECT_REDIRECT, ALE_BIND_REDIRECT
//!   and ALE_AUTH_CONNECT, in which order their callouts classify a
//!   connection, which vendors act before us and can take our write right,
//!   and which lab profile models each one;
//! - [`events`]: who decided each classify drop or allow, and, joined with our
//!   driver's audit log, whether it was us or another vendor.
//!
//! Several files of one machine can be read together (filters.xml has no
//! sublayers; wfpstate.xml has their weights). Every limit is an error that
//! names the file, line and column: memory stays bounded whatever the input.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

pub mod events;
pub mod inventory;
pub mod model;
pub mod setup;
pub mod vendors;
pub mod xml;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::Path;

use model::{Callout, Filter, NetEvent, Provider, Sublayer};
use xml::{FileKind, ObjectKind, XmlError};

/// At most this many filters are indexed for netEvent attribution.
pub const MAX_FILTERS: usize = 500_000;
/// At most this many drops and allows are kept (the rest are counted).
pub const MAX_EVENTS: usize = 50_000;

/// A filter at any layer, as much as attribution needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterBrief {
    /// displayData.name.
    pub name: String,
    /// providerKey.
    pub provider: Option<String>,
    /// subLayerKey.
    pub sublayer: String,
    /// layerKey.
    pub layer: String,
    /// action.type.
    pub action: String,
}

/// One file read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Its name as given.
    pub name: String,
    /// What netsh command wrote it.
    pub kind: FileKind,
    /// Bytes read.
    pub bytes: u64,
}

/// Everything read about one machine.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// The files, in order.
    pub files: Vec<SourceFile>,
    /// Providers by lower-case key.
    pub providers: BTreeMap<String, Provider>,
    /// Sublayers by lower-case key.
    pub sublayers: BTreeMap<String, Sublayer>,
    /// Callouts by lower-case key.
    pub callouts: BTreeMap<String, Callout>,
    /// Filters at the inventoried layers (first seen wins for a filter id).
    pub filters: Vec<Filter>,
    /// Every filter by id.
    pub index: HashMap<u64, FilterBrief>,
    /// Classify drops and allows, in file order (at most [`MAX_EVENTS`]).
    pub events: Vec<NetEvent>,
    /// Drops and allows beyond [`MAX_EVENTS`], counted only.
    pub events_not_kept: u64,
    /// netEvents of other types, counted only.
    pub other_events: u64,
}

/// A read failure: which file, and the parser's error.
#[derive(Debug)]
pub struct ReadError {
    /// The file.
    pub file: String,
    /// What went wrong where.
    pub error: XmlError,
}

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.file, self.error)
    }
}

impl std::error::Error for ReadError {}

/// Lower-case key for lookups (GUIDs appear in either case).
pub fn key(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

impl Machine {
    /// Reads one more file of this machine: netsh's XML, or the .cab of
    /// `netsh wfp capture`, whose wfpdiag.xml is decompressed as it is read.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ReadError> {
        let name = path.display().to_string();
        let fail = |message: String| ReadError { file: name.clone(), error: XmlError { pos: None, message } };
        let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let mut magic = [0u8; 4];
        let is_cab = file.read_exact(&mut magic).is_ok() && &magic == b"MSCF";
        file.seek(SeekFrom::Start(0)).map_err(|e| fail(format!("cannot read: {e}")))?;
        if !is_cab {
            return self.read(BufReader::with_capacity(64 * 1024, file), &name);
        }
        let mut cabinet = cab::Cabinet::new(file).map_err(|e| fail(format!("not a readable .cab: {e}")))?;
        let inner = cab_xml_name(&cabinet)
            .ok_or_else(|| fail("the .cab holds no .xml file (netsh wfp capture puts wfpdiag.xml in it)".to_owned()))?;
        let reader = cabinet.read_file(&inner).map_err(|e| fail(format!("cannot read {inner} in the .cab: {e}")))?;
        self.read(BufReader::with_capacity(64 * 1024, reader), &format!("{name}:{inner}"))
    }

    /// Reads one more file from `input`, called `name` in messages.
    pub fn read<R: BufRead>(&mut self, input: R, name: &str) -> Result<(), ReadError> {
        let result = xml::stream(input, &mut |kind, node| self.take(kind, &node, name));
        match result {
            Ok((kind, bytes)) => {
                self.files.push(SourceFile { name: name.to_owned(), kind, bytes });
                Ok(())
            }
            Err(error) => Err(ReadError { file: name.to_owned(), error }),
        }
    }

    fn take(&mut self, kind: ObjectKind, node: &xml::Node, file: &str) -> Result<(), XmlError> {
        match kind {
            ObjectKind::Provider => {
                let p = model::provider(node)?;
                self.providers.entry(key(&p.key)).or_insert(p);
            }
            ObjectKind::Sublayer => {
                let s = model::sublayer(node)?;
                self.sublayers.entry(key(&s.key)).or_insert(s);
            }
            ObjectKind::Callout => {
                let c = model::callout(node)?;
                self.callouts.entry(key(&c.key)).or_insert(c);
            }
            ObjectKind::Filter => {
                let f = model::filter(node, file)?;
                if self.index.contains_key(&f.id) {
                    return Ok(());
                }
                if self.index.len() >= MAX_FILTERS {
                    return Err(XmlError::at(
                        node.pos,
                        format!("more than {MAX_FILTERS} filters: more than any machine netsh describes"),
                    ));
                }
                self.index.insert(
                    f.id,
                    FilterBrief {
                        name: f.name.clone(),
                        provider: f.provider.clone(),
                        sublayer: f.sublayer.clone(),
                        layer: f.layer.clone(),
                        action: f.action.clone(),
                    },
                );
                if f.layer().is_some() {
                    self.filters.push(f);
                }
            }
            ObjectKind::NetEvent => match model::net_event(node, file)? {
                Some(e) if self.events.len() < MAX_EVENTS => self.events.push(e),
                Some(_) => self.events_not_kept += 1,
                None => self.other_events += 1,
            },
            ObjectKind::Layer => {}
        }
        Ok(())
    }

    /// The provider of a key.
    pub fn provider(&self, k: Option<&str>) -> Option<&Provider> {
        self.providers.get(&key(k?))
    }

    /// The sublayer's weight: from the files, else the built-in sublayers'
    /// weights as a real `netsh wfp show state` lists them.
    pub fn sublayer_weight(&self, k: &str) -> Option<u16> {
        self.sublayers.get(&key(k)).map(|s| s.weight).or_else(|| builtin_sublayer_weight(k))
    }

    /// The sublayer's name, else its key.
    pub fn sublayer_name(&self, k: &str) -> String {
        self.sublayers.get(&key(k)).map_or_else(|| k.to_owned(), |s| s.name.clone())
    }
}

/// The XML file in a capture's .cab: wfpdiag.xml, else the first .xml.
fn cab_xml_name<R: std::io::Read + std::io::Seek>(cabinet: &cab::Cabinet<R>) -> Option<String> {
    let names: Vec<String> = cabinet
        .folder_entries()
        .flat_map(|f| f.file_entries().map(|e| e.name().to_owned()).collect::<Vec<_>>())
        .collect();
    let lower = |n: &String| n.to_ascii_lowercase();
    names
        .iter()
        .find(|n| lower(n).ends_with("wfpdiag.xml"))
        .or_else(|| names.iter().find(|n| lower(n).ends_with(".xml")))
        .cloned()
}

/// Built-in sublayers' weights, as `netsh wfp show state` printed them on
/// Windows 10/11 machines (wfpdiag/tests/data/sophos-wfpstate.xml).
pub fn builtin_sublayer_weight(k: &str) -> Option<u16> {
    Some(match k.trim() {
        "FWPM_SUBLAYER_INSPECTION" => 0,
        "FWPM_SUBLAYER_TEREDO" => 1,
        "FWPM_SUBLAYER_MPSSVC_WF" => 2,
        "FWPM_SUBLAYER_MPSSVC_WSH" => 3,
        "FWPM_SUBLAYER_MPSSVC_QUARANTINE" => 4,
        "FWPM_SUBLAYER_MPSSVC_EDP" => 5,
        "FWPM_SUBLAYER_MPSSVC_TENANT_RESTRICTIONS" => 6,
        "FWPM_SUBLAYER_MPSSVC_APP_ISOLATION" => 7,
        "FWPM_SUBLAYER_TCP_CHIMNEY_OFFLOAD" => 8192,
        "FWPM_SUBLAYER_TCP_TEMPLATES" => 8704,
        "FWPM_SUBLAYER_IPSEC_SECURITY_REALM" => 12288,
        "FWPM_SUBLAYER_SECURE_SOCKET" => 16384,
        "FWPM_SUBLAYER_LIPS" => 32767,
        "FWPM_SUBLAYER_UNIVERSAL" => 32768,
        "FWPM_SUBLAYER_IPSEC_DOSP" => 34816,
        "FWPM_SUBLAYER_IPSEC_FORWARD_OUTBOUND_TUNNEL" => 36864,
        "FWPM_SUBLAYER_IPSEC_TUNNEL" => 40960,
        "FWPM_SUBLAYER_RPC_AUDIT" => 49152,
        _ => return None,
    })
}
