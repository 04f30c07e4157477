//! Diagnostics: one per problem, each with a stable kebab-case code, the
//! file, line and column, and a labelled snippet rendered by miette.

use std::fmt;
use std::ops::Range;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};

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
    /// 1-based line of the primary span.
    pub line: usize,
    /// 1-based column (in characters) of the primary span.
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

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// Collects diagnostics for one source.
pub(crate) struct Sink<'s> {
    pub(crate) source: &'s str,
    pub(crate) origin: &'s str,
    pub(crate) items: Vec<Diagnostic>,
}

impl<'s> Sink<'s> {
    pub(crate) const fn new(source: &'s str, origin: &'s str) -> Self {
        Self { source, origin, items: Vec::new() }
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
        let (line, col) = line_col(self.source, span.start);
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
        let view = View { d: self, source: NamedSource::new(self.origin.clone(), source.to_owned()) };
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

    /// The one-line form: `file:line:col: error[code]: message`.
    pub fn short(&self) -> String {
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

/// A diagnostic and its source, as miette wants them.
struct View<'a> {
    d: &'a Diagnostic,
    source: NamedSource<String>,
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

    fn source_of(&self, origin: &str) -> &str {
        self.sources.iter().find(|(o, _)| o == origin).map_or("", |(_, s)| s.as_str())
    }
}

impl Report {
    /// Every diagnostic rendered with its snippet, each followed by a blank line.
    pub fn render_diagnostics(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.render(self.source_of(&d.origin)));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_diagnostics())?;
        let (e, w) = (self.errors(), self.warnings());
        writeln!(f, "{e} error{}, {w} warning{}", if e == 1 { "" } else { "s" }, if w == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Report {}
