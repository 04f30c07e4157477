//! Diagnostics: one per problem, each with a stable kebab-case code, the
//! file, line and column, and a labelled snippet rendered by miette.

use std::fmt;
use std::ops::Range;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan,
    SpanContents,
};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The rule set still loads; printed by `arbiter rules check`.
    Warning,
    /// The rule set is refused (nothing is half-loaded).
    Error,
}

impl Severity {
    /// `"warning"` or `"error"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One problem found in a rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable kebab-case code (`bad-cidr`, `unknown-key`, ...).
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The file (or other origin) it is in.
    pub origin: String,
    /// 1-based line of the primary span (0: the problem has no position,
    /// such as a file that cannot be read).
    pub line: usize,
    /// 1-based column (in characters) of the primary span (0 with line 0).
    pub col: usize,
    /// Byte range of the primary span.
    pub span: Range<usize>,
    /// Label under the primary span.
    pub label: String,
    /// Secondary spans (an earlier definition, a shadowing rule).
    pub related: Vec<(Range<usize>, String)>,
    /// How to fix it, when there is something to say.
    pub help: Option<String>,
}

/// Where each line of a source starts, so that finding the line and column
/// of an offset costs a binary search instead of a scan from the top (one
/// scan per diagnostic made many diagnostics quadratic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineIndex {
    /// Byte offset of each line's first byte; the first is 0.
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `source` in one pass.
    pub fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// 0-based line holding byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).saturating_sub(1)
    }

    /// Byte offset where 0-based `line` starts (the end of `source` past the last line).
    fn start_of(&self, line: usize, source: &str) -> usize {
        self.starts.get(line).copied().unwrap_or(source.len()).min(source.len())
    }

    /// 1-based line and column (in characters) of byte `offset` in `source`.
    pub fn line_col(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(source.len());
        let line = self.line_of(offset);
        let start = self.start_of(line, source);
        let col = source.get(start..offset).map_or(0, |s| s.chars().count()) + 1;
        (line + 1, col)
    }
}

/// Collects diagnostics for one source.
pub(crate) struct Sink<'s> {
    pub(crate) source: &'s str,
    pub(crate) origin: &'s str,
    pub(crate) items: Vec<Diagnostic>,
    lines: LineIndex,
}

impl<'s> Sink<'s> {
    pub(crate) fn new(source: &'s str, origin: &'s str) -> Self {
        Self { source, origin, items: Vec::new(), lines: LineIndex::new(source) }
    }

    /// Records a diagnostic and returns it for optional decoration.
    pub(crate) fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        let (line, col) = self.lines.line_col(self.source, span.start);
        self.items.push(Diagnostic {
            code,
            severity,
            message: message.into(),
            origin: self.origin.to_owned(),
            line,
            col,
            span,
            label: label.into(),
            related: Vec::new(),
            help: None,
        });
        let last = self.items.len() - 1;
        &mut self.items[last]
    }

    pub(crate) fn error(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Error, code, span, message, label)
    }

    pub(crate) fn warning(
        &mut self,
        code: &'static str,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(Severity::Warning, code, span, message, label)
    }

    /// An error about the whole file, with no position (line and column 0).
    pub(crate) fn error_without_position(&mut self, code: &'static str, message: impl Into<String>) {
        self.items.push(Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            origin: self.origin.to_owned(),
            line: 0,
            col: 0,
            span: 0..0,
            label: String::new(),
            related: Vec::new(),
            help: None,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

impl Diagnostic {
    /// Adds a help line.
    pub(crate) fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary label.
    pub(crate) fn related(&mut self, span: Range<usize>, label: impl Into<String>) -> &mut Self {
        self.related.push((span, label.into()));
        self
    }

    /// Renders this diagnostic with its snippet from `source`.
    pub fn render(&self, source: &str) -> String {
        self.render_indexed(source, &LineIndex::new(source))
    }

    /// Renders with `source`'s line index made once by the caller: each
    /// snippet is cut from the lines around its span, so rendering costs what
    /// the snippets hold, not the whole file.
    pub fn render_indexed(&self, source: &str, lines: &LineIndex) -> String {
        if self.line == 0 {
            // No position (the file could not be read): no snippet either.
            let mut out = format!("{}: {}[{}]: {}\n", self.origin, self.severity.name(), self.code, self.message);
            if let Some(h) = &self.help {
                out.push_str(&format!("  help: {h}\n"));
            }
            return out;
        }
        let window = Indexed { name: self.origin.clone(), source, lines };
        let view = View { d: self, source: window };
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
        let mut out = String::new();
        if handler.render_report(&mut out, &view).is_err() {
            out = format!(
                "{}:{}:{}: {}[{}]: {}\n",
                self.origin,
                self.line,
                self.col,
                self.severity.name(),
                self.code,
                self.message
            );
        }
        out
    }

    /// The one-line form: `file:line:col: error[code]: message` (`file: ...`
    /// when the problem has no position).
    pub fn short(&self) -> String {
        if self.line == 0 {
            return format!("{}: {}[{}]: {}", self.origin, self.severity.name(), self.code, self.message);
        }
        format!("{}:{}:{}: {}[{}]: {}", self.origin, self.line, self.col, self.severity.name(), self.code, self.message)
    }

    /// The JSON form.
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code,
            "severity": self.severity.name(),
            "message": self.message,
            "origin": self.origin,
            "line": self.line,
            "col": self.col,
            "span": [self.span.start, self.span.end],
            "label": self.label,
            "help": self.help,
        })
    }
}

/// A source with its line index: miette asks for the lines around each
/// label, and they are cut out with two binary searches instead of a scan
/// from the top of the file (which made many diagnostics quadratic).
struct Indexed<'a> {
    name: String,
    source: &'a str,
    lines: &'a LineIndex,
}

impl SourceCode for Indexed<'_> {
    fn read_span<'b>(
        &'b self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'b> + 'b>, MietteError> {
        let start = span.offset();
        let end = start.checked_add(span.len()).ok_or(MietteError::OutOfBounds)?;
        if end > self.source.len() {
            return Err(MietteError::OutOfBounds);
        }
        let first = self.lines.line_of(start);
        let last = self.lines.line_of(end.saturating_sub(1).max(start));
        let from = first.saturating_sub(before);
        let to = last.saturating_add(after);
        // As miette's own reader: without lines before, the contents start at the span.
        let (data_start, line, column) = if before == 0 {
            let line_start = self.lines.start_of(first, self.source);
            (start, first, self.source.get(line_start..start).map_or(0, |s| s.chars().count()))
        } else {
            (self.lines.start_of(from, self.source), from, 0)
        };
        let data_end = self.lines.start_of(to.saturating_add(1), self.source).max(end);
        let data = self.source.as_bytes().get(data_start..data_end).ok_or(MietteError::OutOfBounds)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            data,
            SourceSpan::new(data_start.into(), data_end - data_start),
            line,
            column,
            // As miette's own reader counts: lines from the top of the file to
            // the end of these contents (it decides which snippets to merge).
            to.saturating_add(1),
        )))
    }
}

/// A diagnostic and its source, as miette wants them.
struct View<'a> {
    d: &'a Diagnostic,
    source: Indexed<'a>,
}

impl fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.d, f)
    }
}

impl fmt::Display for View<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.d.origin, self.d.line, self.d.col, self.d.message)
    }
}

impl std::error::Error for View<'_> {}

impl miette::Diagnostic for View<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.d.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.d.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary = LabeledSpan::new_primary_with_span(Some(self.d.label.clone()), self.d.span.clone());
        let related =
            self.d.related.iter().map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), span.clone()));
        Some(Box::new(std::iter::once(primary).chain(related)))
    }
}

/// Every diagnostic of one or more rules files, with their sources for
/// rendering. `Display` is the human rendering; [`Report::to_json`] the
/// machine one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The diagnostics, errors and warnings, in file then source order.
    pub diagnostics: Vec<Diagnostic>,
    sources: Vec<(String, String)>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one source's diagnostics.
    pub fn extend(&mut self, origin: &str, source: &str, diagnostics: impl IntoIterator<Item = Diagnostic>) {
        let before = self.diagnostics.len();
        self.diagnostics.extend(diagnostics);
        if self.diagnostics.len() > before && !self.sources.iter().any(|(o, _)| o == origin) {
            self.sources.push((origin.to_owned(), source.to_owned()));
        }
    }

    /// Merges another report.
    pub fn append(&mut self, other: Self) {
        for (o, s) in other.sources {
            if !self.sources.iter().any(|(o2, _)| *o2 == o) {
                self.sources.push((o, s));
            }
        }
        self.diagnostics.extend(other.diagnostics);
    }

    /// How many errors.
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    /// How many warnings.
    pub fn warnings(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count()
    }

    /// True when there is at least one error.
    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    /// The diagnostics' codes, in order (handy in tests).
    pub fn codes(&self) -> Vec<&'static str> {
        self.diagnostics.iter().map(|d| d.code).collect()
    }

    /// All diagnostics as a JSON document:
    /// `{"errors": N, "warnings": M, "diagnostics": [...]}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "errors": self.errors(),
            "warnings": self.warnings(),
            "diagnostics": self.diagnostics.iter().map(Diagnostic::to_json_value).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

impl Report {
    /// Every diagnostic rendered with its snippet, each followed by a blank line.
    pub fn render_diagnostics(&self) -> String {
        let indexes: Vec<LineIndex> = self.sources.iter().map(|(_, s)| LineIndex::new(s)).collect();
        let empty = LineIndex::default();
        let mut out = String::new();
        for d in &self.diagnostics {
            let at = self.sources.iter().position(|(o, _)| *o == d.origin);
            let (source, lines) = at
                .and_then(|i| self.sources.get(i).map(|(_, s)| s.as_str()).zip(indexes.get(i)))
                .unwrap_or(("", &empty));
            out.push_str(&d.render_indexed(source, lines));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_diagnostics())?;
        writeln!(f, "{}", counts(self.errors(), self.warnings()))
    }
}

impl std::error::Error for Report {}

/// `n` and `word`, plural unless `n` is 1: `1 error`, `2 errors`, `0 files`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}

/// `N error(s), M warning(s)`: the one wording every command uses.
pub fn counts(errors: usize, warnings: usize) -> String {
    format!("{}, {}", plural(errors, "error"), plural(warnings, "warning"))
}
