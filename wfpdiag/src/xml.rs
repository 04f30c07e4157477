//! Streaming over netsh's XML: the file is read event by event, and only the
//! objects we use (a filter, callout, provider, sublayer, layer or netEvent:
//! each one `<item>` of a few kilobytes) are built as a small tree, handed to
//! the caller and dropped. Memory therefore follows the largest object, not
//! the file, and every limit below turns a hostile or broken file into an
//! error that names the line and column.
//!
//! Positions: a [`Counted`] reader wraps the input and counts lines as quick-xml
//! consumes bytes, so the position of the event being read is known without
//! keeping any of the file.

use core::fmt;
use std::io::{self, BufRead, Read};

use quick_xml::events::Event;

/// Longest text of one element, in bytes (netsh's longest are app ids and
/// security descriptors, well under this).
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest single markup or text token quick-xml may buffer, in bytes.
pub const MAX_TOKEN: usize = 1024 * 1024;
/// Deepest element nesting accepted (netsh's is under 12).
pub const MAX_DEPTH: usize = 64;
/// Most elements in one object (a filter with many conditions has a few hundred).
pub const MAX_NODES: usize = 16 * 1024;

/// A line and column (both from 1; the column counts bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line.
    pub line: u64,
    /// Column.
    pub col: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// Why a file could not be read.
#[derive(Debug)]
pub struct XmlError {
    /// Where (None: before any byte, e.g. the file could not be opened).
    pub pos: Option<Pos>,
    /// What.
    pub message: String,
}

impl XmlError {
    pub(crate) fn at(pos: Pos, message: impl Into<String>) -> Self {
        Self { pos: Some(pos), message: message.into() }
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for XmlError {}

/// A reader that counts lines and refuses to let one token grow past
/// [`MAX_TOKEN`] bytes.
#[derive(Debug)]
pub struct Counted<R> {
    inner: R,
    /// Bytes consumed so far.
    offset: u64,
    /// Lines seen so far (the current line's number).
    line: u64,
    /// Offset of the current line's first byte.
    line_start: u64,
    /// Offset where the token being read started.
    token_start: u64,
}

impl<R: BufRead> Counted<R> {
    /// Wraps a buffered reader.
    pub const fn new(inner: R) -> Self {
        Self { inner, offset: 0, line: 1, line_start: 0, token_start: 0 }
    }

    /// The position of the next byte to be consumed.
    pub const fn pos(&self) -> Pos {
        Pos { line: self.line, col: self.offset - self.line_start + 1 }
    }

    /// Bytes consumed so far.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    fn mark_token(&mut self) {
        self.token_start = self.offset;
    }
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), available.get(..n)) {
                dst.copy_from_slice(src);
            }
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.offset - self.token_start > MAX_TOKEN as u64 {
            return Err(io::Error::other(format!(
                "one token is longer than {} KiB: not netsh output",
                MAX_TOKEN / 1024
            )));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let taken = buf.get(..amt).unwrap_or(buf);
            for (i, &b) in taken.iter().enumerate() {
                if b == b'\n' {
                    self.line += 1;
                    self.line_start = self.offset + i as u64 + 1;
                }
            }
        }
        self.offset += amt as u64;
        self.inner.consume(amt);
    }
}

/// One element of an object, with its children and text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Local name.
    pub name: String,
    /// Text content (entities resolved, whitespace trimmed at the ends).
    pub text: String,
    /// Child elements in order.
    pub children: Vec<Self>,
    /// Where the element starts.
    pub pos: Pos,
}

impl Node {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Self> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text at a `/`-separated path of child names, trimmed; `None` when
    /// the path is absent or the text empty.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        let mut n = self;
        for part in path.split('/') {
            n = n.child(part)?;
        }
        let t = n.text.trim();
        if t.is_empty() { None } else { Some(t) }
    }

    /// The node at a `/`-separated path.
    pub fn at(&self, path: &str) -> Option<&Self> {
        let mut n = self;
        for part in path.split('/') {
            n = n.child(part)?;
        }
        Some(n)
    }

    /// The texts of the `item` children of the child `name` (netsh lists flags so).
    pub fn items_text(&self, name: &str) -> Vec<String> {
        self.child(name)
            .map(|c| c.children.iter().filter(|i| i.name == "item").map(|i| i.text.trim().to_owned()).collect())
            .unwrap_or_default()
    }
}

/// Which object an element starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// `filters/item`.
    Filter,
    /// `callouts/item`.
    Callout,
    /// `providers/item`.
    Provider,
    /// `subLayers/item`.
    Sublayer,
    /// `layers/item/layer`.
    Layer,
    /// `netEvent`, or `netEvents/item`.
    NetEvent,
}

/// What the root element says the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `<wfpdiag>`: `netsh wfp show filters`, or a capture's wfpdiag.xml.
    Wfpdiag,
    /// `<wfpstate>`: `netsh wfp show state`.
    Wfpstate,
    /// `<netEvents>`: `netsh wfp show netevents`.
    NetEvents,
}

impl FileKind {
    fn from_root(name: &str) -> Option<Self> {
        match name {
            "wfpdiag" => Some(Self::Wfpdiag),
            "wfpstate" => Some(Self::Wfpstate),
            "netEvents" => Some(Self::NetEvents),
            _ => None,
        }
    }

    /// The root element's name.
    pub const fn root(self) -> &'static str {
        match self {
            Self::Wfpdiag => "wfpdiag",
            Self::Wfpstate => "wfpstate",
            Self::NetEvents => "netEvents",
        }
    }
}

fn object_kind(stack: &[(String, Pos)], name: &str) -> Option<ObjectKind> {
    let parent = stack.last().map(|(n, _)| n.as_str());
    let grandparent = stack.len().checked_sub(2).and_then(|i| stack.get(i)).map(|(n, _)| n.as_str());
    let great = stack.len().checked_sub(3).and_then(|i| stack.get(i)).map(|(n, _)| n.as_str());
    match (name, parent) {
        ("netEvent", _) => Some(ObjectKind::NetEvent),
        ("item", Some("filters")) => Some(ObjectKind::Filter),
        ("item", Some("callouts")) => Some(ObjectKind::Callout),
        ("item", Some("providers")) => Some(ObjectKind::Provider),
        ("item", Some("subLayers")) => Some(ObjectKind::Sublayer),
        ("item", Some("netEvents")) => Some(ObjectKind::NetEvent),
        // A netsh netevents file's root is <netEvents> itself.
        ("layer", Some("item")) if grandparent == Some("layers") && great.is_some() => Some(ObjectKind::Layer),
        _ => None,
    }
}

fn resolve_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Streams `input`, calling `sink` with every object. The root must be one of
/// netsh's; later roots (netsh appends `<firewallState>` to wfpstate.xml) are
/// read for well-formedness and skipped.
pub fn stream<R: BufRead>(
    mut input: R,
    sink: &mut dyn FnMut(ObjectKind, Node) -> Result<(), XmlError>,
) -> Result<(FileKind, u64), XmlError> {
    sniff(&mut input)?;
    let mut reader = quick_xml::Reader::from_reader(Counted::new(input));
    reader.config_mut().trim_text(false);
    let mut buf = Vec::with_capacity(4096);
    let mut stack: Vec<(String, Pos)> = Vec::new();
    // The object being built: its open elements, innermost last.
    let mut building: Vec<Node> = Vec::new();
    let mut building_kind = ObjectKind::Filter;
    let mut nodes = 0usize;
    let mut kind: Option<FileKind> = None;
    loop {
        buf.clear();
        reader.get_mut().mark_token();
        let pos = reader.get_ref().pos();
        let event = match reader.read_event_into(&mut buf) {
            Ok(e) => e,
            Err(e) => {
                // Report where the offending markup starts; say where it was detected when later.
                let seen = reader.get_ref().pos();
                let detected = if seen == pos { String::new() } else { format!(" (detected at {seen})") };
                return Err(XmlError::at(pos, format!("not well-formed XML: {e}{detected}")));
            }
        };
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_owned();
                open(&mut stack, &mut building, &mut building_kind, &mut nodes, &mut kind, name, pos)?;
            }
            Event::Empty(e) => {
                let name = e.local_name().as_ref().to_owned();
                open(&mut stack, &mut building, &mut building_kind, &mut nodes, &mut kind, name, pos)?;
                close(&mut stack, &mut building, building_kind, sink)?;
            }
            Event::End(_) => close(&mut stack, &mut building, building_kind, sink)?,
            Event::Text(t) => {
                let text = t.xml10_content();
                if stack.is_empty() {
                    let stray = text.trim_start_matches('\u{feff}').trim();
                    if !stray.is_empty() {
                        return Err(XmlError::at(pos, "text outside any element: not netsh's XML"));
                    }
                } else {
                    append(&mut building, &text, pos)?;
                }
            }
            Event::CData(t) => {
                let text = t.xml10_content().into_owned();
                append(&mut building, &text, pos)?;
            }
            Event::GeneralRef(r) => {
                let Some(c) = resolve_entity(&r) else {
                    return Err(XmlError::at(pos, format!("unknown entity &{};", &*r)));
                };
                append(&mut building, c.encode_utf8(&mut [0; 4]), pos)?;
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(XmlError::at(pos, "a DOCTYPE: netsh writes none")),
            Event::Eof => break,
        }
    }
    let end = reader.get_ref().pos();
    if let Some((name, at)) = stack.last() {
        let name = building.last().map_or(name.as_str(), |n| n.name.as_str());
        return Err(XmlError::at(end, format!("the file ends inside <{name}> opened at {at}: truncated?")));
    }
    match kind {
        Some(k) => Ok((k, reader.get_ref().offset())),
        None => Err(XmlError::at(end, "no XML element: not netsh output")),
    }
}

/// Recognises the inputs people hand us instead of netsh's UTF-8 XML.
fn sniff<R: BufRead>(input: &mut R) -> Result<(), XmlError> {
    let start = Pos { line: 1, col: 1 };
    let head = input.fill_buf().map_err(|e| XmlError::at(start, format!("cannot read: {e}")))?;
    if head.starts_with(b"MSCF") {
        return Err(XmlError::at(
            start,
            "this is a .cab archive (netsh wfp capture): extract wfpdiag.xml from it first \
             (Windows: `expand wfpdiag.cab -F:wfpdiag.xml .`; Linux: `cabextract -F wfpdiag.xml wfpdiag.cab`)",
        ));
    }
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        return Err(XmlError::at(
            start,
            "UTF-16 text (PowerShell's `>` writes it): write the file with netsh's file= option, \
             or convert it (`iconv -f UTF-16 -t UTF-8`)",
        ));
    }
    Ok(())
}

fn open(
    stack: &mut Vec<(String, Pos)>,
    building: &mut Vec<Node>,
    building_kind: &mut ObjectKind,
    nodes: &mut usize,
    kind: &mut Option<FileKind>,
    name: String,
    pos: Pos,
) -> Result<(), XmlError> {
    if stack.is_empty() && kind.is_none() {
        *kind = Some(FileKind::from_root(&name).ok_or_else(|| {
            XmlError::at(
                pos,
                format!("root element <{name}> is not netsh's (expected <wfpdiag>, <wfpstate> or <netEvents>)"),
            )
        })?);
    }
    if stack.len() >= MAX_DEPTH {
        return Err(XmlError::at(pos, format!("elements nested deeper than {MAX_DEPTH}: not netsh output")));
    }
    if building.is_empty() {
        // Objects are only looked for inside netsh's own root.
        if let Some(k) = object_kind(stack, &name).filter(|_| stack.len() > 1 || *kind == Some(FileKind::NetEvents)) {
            *building_kind = k;
            *nodes = 0;
            building.push(Node { name, pos, ..Node::default() });
            stack.push((String::new(), pos));
            return Ok(());
        }
    } else {
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(XmlError::at(pos, format!("one object has more than {MAX_NODES} elements: not netsh output")));
        }
        building.push(Node { name, pos, ..Node::default() });
        // Inside an object the node keeps the name; the stack needs none.
        stack.push((String::new(), pos));
        return Ok(());
    }
    stack.push((name, pos));
    Ok(())
}

fn close(
    stack: &mut Vec<(String, Pos)>,
    building: &mut Vec<Node>,
    kind: ObjectKind,
    sink: &mut dyn FnMut(ObjectKind, Node) -> Result<(), XmlError>,
) -> Result<(), XmlError> {
    stack.pop();
    if let Some(mut done) = building.pop() {
        let trimmed = done.text.trim_end().len();
        done.text.truncate(trimmed);
        match building.last_mut() {
            Some(parent) => parent.children.push(done),
            None => sink(kind, done)?,
        }
    }
    Ok(())
}

fn append(building: &mut [Node], text: &str, pos: Pos) -> Result<(), XmlError> {
    if let Some(n) = building.last_mut() {
        // Leading whitespace is dropped as it comes (containers then never allocate text).
        let text = if n.text.is_empty() { text.trim_start() } else { text };
        if text.is_empty() {
            return Ok(());
        }
        if n.text.len() + text.len() > MAX_TEXT {
            return Err(XmlError::at(
                pos,
                format!("<{}> holds more than {} KiB of text: not netsh output", n.name, MAX_TEXT / 1024),
            ));
        }
        n.text.push_str(text);
    }
    Ok(())
}
