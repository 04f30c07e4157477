//! Phase one and two of loading: walk the spanned TOML tree, rejecting
//! unknown keys and checking every value, then build the [`RuleSet`].
//! Every problem is recorded; nothing stops at the first.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;

use arbiter::flow::{Protocol, SidBuf};
use arbiter::policy::{Action, Cidr, Glob, LoopPolicy, PermitOrBlock, PortRange, ProxyListeners, Rule, RuleSet};
use arbiter::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::Sink;

mod boot;

/// The listeners used when `[proxy]` leaves them out (formats.md).
pub(crate) const DEFAULT_V4: &str = "127.0.0.1:34010";
/// See [`DEFAULT_V4`].
pub(crate) const DEFAULT_V6: &str = "[::1]:34010";

const ROOT_KEYS: &[&str] = &["version", "proxy", "coexistence", "rule", "boot"];
const PROXY_KEYS: &[&str] = &["v4", "v6"];
const COEXISTENCE_KEYS: &[&str] = &["revisit", "trust", "known_proxies", "max_hops", "hop_window_ms", "on_loop"];
const RULE_KEYS: &[&str] = &["name", "action", "protocol", "remote", "remote_ports", "app", "original_app", "package"];

type Value<'i> = Spanned<DeValue<'i>>;

/// A parsed rule with the spans the later checks point at.
pub(crate) struct Parsed {
    pub(crate) rule: Rule,
    /// The rule's `name` value, or its first key when unnamed.
    pub(crate) anchor: Range<usize>,
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `choices` to `word`, if close enough to be a typo.
fn closest<'c>(word: &str, choices: &[&'c str]) -> Option<&'c str> {
    choices
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|&(d, c)| d <= 2.max(c.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub(crate) struct Walker<'s> {
    pub(crate) sink: Sink<'s>,
}

impl<'s> Walker<'s> {
    /// The byte range of a string value's contents, when it has no escapes
    /// (so offsets inside the value map onto the source); else the whole value.
    fn inner(&self, span: &Range<usize>, value: &str) -> Range<usize> {
        let raw = self.sink.source.get(span.clone()).unwrap_or("");
        for q in ["\"\"\"", "'''", "\"", "'"] {
            if let Some(body) = raw.strip_prefix(q).and_then(|r| r.strip_suffix(q))
                && body == value
            {
                return span.start + q.len()..span.end - q.len();
            }
        }
        span.clone()
    }

    fn sub(&self, span: &Range<usize>, value: &str, part: Range<usize>) -> Range<usize> {
        let inner = self.inner(span, value);
        if inner.len() == value.len() { inner.start + part.start..inner.start + part.end } else { span.clone() }
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        self.sink.error(
            "wrong-type",
            v.span(),
            format!("`{key}` must be {expected}, not {}", kind(v.get_ref())),
            format!("expected {expected}"),
        );
    }

    fn check_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], section: &str) {
        for (k, _) in table.iter() {
            let key: &str = k.get_ref();
            if allowed.contains(&key) {
                continue;
            }
            let d = self.sink.error(
                "unknown-key",
                k.span(),
                format!("unknown key `{key}` in {section}"),
                "not a key of this section",
            );
            match closest(key, allowed) {
                Some(c) => d.help(format!("did you mean `{c}`? (a typo in a security policy must not pass silently)")),
                None => d.help(format!("expected one of: {}", allowed.join(", "))),
            };
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(v, key, "a string");
                None
            }
        }
    }

    fn array<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> &'v [Value<'i>] {
        match v.get_ref() {
            DeValue::Array(a) => a,
            _ => {
                self.wrong_type(v, key, "an array");
                &[]
            }
        }
    }

    /// Strings of an array, with their spans; other items are reported.
    fn strings<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Vec<(&'v str, Range<usize>)> {
        let mut out = Vec::new();
        for item in self.array(v, key) {
            if let Some(s) = self.string(item, &format!("{key}[]")) {
                out.push((s, item.span()));
            }
        }
        out
    }

    fn integer(&mut self, v: &Value<'_>, key: &str) -> Option<i128> {
        match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok().or_else(|| {
                self.sink.error("out-of-range", v.span(), format!("`{key}` is too large"), "out of range");
                None
            }),
            _ => {
                self.wrong_type(v, key, "an integer");
                None
            }
        }
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table");
                None
            }
        }
    }

    fn permit_or_block(&mut self, v: &Value<'_>, key: &str, code: &'static str) -> Option<PermitOrBlock> {
        let s = self.string(v, key)?;
        let parsed = PermitOrBlock::from_name(s);
        if parsed.is_none() {
            self.sink
                .error(code, v.span(), format!("`{key}` must be \"permit\" or \"block\", not {s:?}"), "unknown value")
                .help(closest(s, &["permit", "block"]).map_or_else(
                    || "\"permit\" soft-permits, \"block\" hard-blocks".to_owned(),
                    |c| format!("did you mean \"{c}\"?"),
                ));
        }
        parsed
    }

    fn glob(&mut self, pattern: &str, span: &Range<usize>, key: &str) -> Option<Glob> {
        if pattern.is_empty() {
            self.sink
                .error("bad-glob", span.clone(), format!("empty pattern in `{key}`"), "empty pattern")
                .help("an empty pattern only matches a missing app id; write `*` to match any app");
            return None;
        }
        if let Some((at, c)) = pattern.char_indices().find(|(_, c)| c.is_control()) {
            let s = self.sub(span, pattern, at..at + c.len_utf8());
            self.sink.error(
                "bad-glob",
                s,
                format!("pattern in `{key}` holds control character U+{:04X}", u32::from(c)),
                "not allowed in an app id",
            );
            return None;
        }
        if let Some(at) = pattern.find('/') {
            let s = self.sub(span, pattern, at..at + 1);
            self.sink
                .warning(
                    "glob-forward-slash",
                    s,
                    format!("pattern {pattern:?} holds `/`, but app ids are NT paths with `\\`"),
                    "never matches an app id",
                )
                .help("write backslashes: '*\\vendor\\proxy.exe'");
        } else if !pattern.starts_with(['\\', '*', '?']) {
            self.sink
                .warning(
                    "glob-not-anchored",
                    span.clone(),
                    format!("pattern {pattern:?} cannot match: app ids start with `\\device\\`"),
                    "no leading `*` or `\\`",
                )
                .help(format!("to match the file name anywhere, write '*\\{}'", pattern.trim_start_matches('*')));
        }
        Glob::new(pattern).ok()
    }

    fn globs(&mut self, v: &Value<'_>, key: &str) -> Vec<Glob> {
        let items = self.strings(v, key);
        items.iter().filter_map(|(p, span)| self.glob(p, span, key)).collect()
    }

    fn socket<T: std::str::FromStr>(&mut self, v: &Value<'_>, key: &str, family: &str) -> Option<T> {
        let s = self.string(v, key)?;
        let parsed = s.parse::<T>().ok();
        if parsed.is_none() {
            let example = if family == "IPv4" { DEFAULT_V4 } else { DEFAULT_V6 };
            self.sink
                .error(
                    "bad-socket-addr",
                    v.span(),
                    format!("`proxy.{key}` must be an {family} address and port, not {s:?}"),
                    format!("not an {family} socket address"),
                )
                .help(format!("for example \"{example}\""));
        }
        parsed
    }

    fn listener_is_local(&mut self, v: &Value<'_>, key: &str, ip: IpAddr, port: u16) -> bool {
        if port == 0 {
            self.sink.error(
                "bad-socket-addr",
                v.span(),
                format!("`proxy.{key}` has port 0, which nothing listens on"),
                "port 0",
            );
            return false;
        }
        if !ip.is_loopback() {
            self.sink
                .error(
                    "proxy-not-local",
                    v.span(),
                    format!("`proxy.{key}` ({ip}) is not a loopback address"),
                    "flows would be redirected off this machine",
                )
                .help("the proxy must listen on this machine: use 127.0.0.1 or [::1]");
            return false;
        }
        true
    }

    fn proxy(&mut self, v: &Value<'_>) -> ProxyListeners {
        let mut out = ProxyListeners::default();
        let Some(t) = self.table(v, "proxy") else { return out };
        self.check_keys(t, PROXY_KEYS, "[proxy]");
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "v4" => {
                    if let Some(a) = self.socket::<SocketAddrV4>(v, "v4", "IPv4")
                        && self.listener_is_local(v, "v4", IpAddr::V4(*a.ip()), a.port())
                    {
                        out.v4 = Some(a);
                    }
                }
                "v6" => {
                    if let Some(a) = self.socket::<SocketAddrV6>(v, "v6", "IPv6")
                        && self.listener_is_local(v, "v6", IpAddr::V6(*a.ip()), a.port())
                    {
                        out.v6 = Some(a);
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn coexistence(&mut self, v: &Value<'_>, rs: &mut RuleSet) {
        let Some(t) = self.table(v, "coexistence") else { return };
        self.check_keys(t, COEXISTENCE_KEYS, "[coexistence]");
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "revisit" => {
                    if let Some(p) = self.permit_or_block(v, "revisit", "unknown-revisit") {
                        rs.loop_policy.revisit = p;
                    }
                }
                "on_loop" => {
                    if let Some(p) = self.permit_or_block(v, "on_loop", "unknown-on-loop") {
                        rs.loop_policy.on_loop = p;
                    }
                }
                "trust" => rs.trust = self.globs(v, "trust"),
                "known_proxies" => rs.known_proxies = self.globs(v, "known_proxies"),
                "max_hops" => match self.integer(v, "max_hops") {
                    Some(0) => {
                        self.sink
                            .error(
                                "zero-max-hops",
                                v.span(),
                                "`max_hops` is 0: every proxied flow would count as a loop",
                                "must be at least 1",
                            )
                            .help("allow at least one proxied hop per destination; the default is 3");
                    }
                    Some(n) => match u16::try_from(n) {
                        Ok(n) => rs.loop_policy.max_hops = n,
                        Err(_) => {
                            self.sink.error(
                                "out-of-range",
                                v.span(),
                                format!("`max_hops` must be 1..=65535, not {n}"),
                                "out of range",
                            );
                        }
                    },
                    None => {}
                },
                "hop_window_ms" => match self.integer(v, "hop_window_ms") {
                    Some(0) => {
                        self.sink.error(
                            "zero-hop-window",
                            v.span(),
                            "`hop_window_ms` is 0: no hop would ever be counted",
                            "must be at least 1",
                        );
                    }
                    Some(n) => match u64::try_from(n) {
                        Ok(n) => rs.loop_policy.hop_window = Duration::from_millis(n),
                        Err(_) => {
                            self.sink.error(
                                "out-of-range",
                                v.span(),
                                format!("`hop_window_ms` must be positive, not {n}"),
                                "out of range",
                            );
                        }
                    },
                    None => {}
                },
                _ => {}
            }
        }
    }

    fn cidr(&mut self, s: &str, span: &Range<usize>) -> Option<Cidr> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let Ok(addr) = addr_s.parse::<IpAddr>() else {
            let at = self.sub(span, s, 0..addr_s.len());
            self.sink
                .error(
                    "bad-cidr",
                    at,
                    format!("{s:?} is not a CIDR: {addr_s:?} is not an IP address"),
                    "not an IP address",
                )
                .help("write an address and an optional prefix length: \"10.0.0.0/8\", \"fe80::/10\", \"192.0.2.7\"");
            return None;
        };
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => {
                let at = self.sub(span, s, addr_s.len() + 1..s.len());
                match p.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    Ok(_) | Err(_) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
                        self.sink.error(
                            "bad-cidr",
                            at,
                            format!(
                                "{s:?}: prefix /{p} is longer than an {} address ({max} bits)",
                                if max == 32 { "IPv4" } else { "IPv6" }
                            ),
                            format!("at most {max}"),
                        );
                        return None;
                    }
                    _ => {
                        self.sink.error("bad-cidr", at, format!("{s:?}: {p:?} is not a prefix length"), "not a number");
                        return None;
                    }
                }
            }
        };
        let cidr = Cidr { addr, prefix };
        let network = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        if network != addr {
            self.sink
                .warning(
                    "cidr-host-bits",
                    span.clone(),
                    format!("{s:?} has host bits set; it means {network}/{prefix}"),
                    "host bits are ignored",
                )
                .help(format!("write \"{network}/{prefix}\""));
        }
        Some(cidr)
    }

    fn port(&mut self, text: &str, whole: &str, span: &Range<usize>, offset: usize) -> Option<u16> {
        let t = text.trim();
        match t.parse::<u32>() {
            Ok(n) if n <= 65535 => u16::try_from(n).ok(),
            Ok(n) => {
                let at = self.sub(span, whole, offset..offset + text.len());
                self.sink.error("bad-port-range", at, format!("port {n} in {whole:?} is above 65535"), "not a port");
                None
            }
            Err(_) => {
                let at = self.sub(span, whole, offset..offset + text.len());
                self.sink
                    .error("bad-port-range", at, format!("{whole:?} is not a port or a port range"), "not a port")
                    .help("write a port (\"443\") or an inclusive range (\"8000-8999\")");
                None
            }
        }
    }

    fn port_range(&mut self, v: &Value<'_>) -> Option<PortRange> {
        let span = v.span();
        let s: Cow<'_, str> = match v.get_ref() {
            DeValue::String(s) => Cow::Borrowed(s.as_ref()),
            DeValue::Integer(_) => {
                let n = self.integer(v, "remote_ports[]")?;
                return match u16::try_from(n) {
                    Ok(p) => Some(PortRange { lo: p, hi: p }),
                    Err(_) => {
                        self.sink.error("bad-port-range", span, format!("port {n} is not in 0..=65535"), "not a port");
                        None
                    }
                };
            }
            _ => {
                self.wrong_type(v, "remote_ports[]", "a string or an integer");
                return None;
            }
        };
        if s.trim().is_empty() {
            self.sink
                .error("empty-range", span, "empty port range", "no port here")
                .help("leave `remote_ports` out (or `[]`) to match any port");
            return None;
        }
        let (lo, hi) = match s.split_once('-') {
            None => {
                let p = self.port(&s, &s, &span, 0)?;
                (p, p)
            }
            Some((a, b)) => {
                let lo = self.port(a, &s, &span, 0);
                let hi = self.port(b, &s, &span, a.len() + 1);
                (lo?, hi?)
            }
        };
        if lo > hi {
            self.sink
                .error("inverted-range", span, format!("port range {s:?} is inverted: {lo} > {hi}"), "holds no port")
                .help(format!("write \"{hi}-{lo}\""));
            return None;
        }
        Some(PortRange { lo, hi })
    }

    fn rule(&mut self, v: &Value<'_>, index: usize) -> Option<Parsed> {
        let t = self.table(v, "rule")?;
        self.check_keys(t, RULE_KEYS, "[[rule]]");
        let errors_before = self.sink.items.len();
        let mut name = None;
        let mut action = None;
        let mut anchor = None;
        let mut rule = Rule::any("", Action::Block);
        for (k, v) in t.iter() {
            anchor.get_or_insert_with(|| k.span());
            match k.get_ref().as_ref() {
                "name" => {
                    if let Some(s) = self.string(v, "name") {
                        name = Some(s.to_owned());
                        anchor = Some(v.span());
                    }
                }
                "action" => {
                    if let Some(s) = self.string(v, "action") {
                        action = Action::from_name(s);
                        if action.is_none() {
                            let d = self.sink.error(
                                "unknown-action",
                                v.span(),
                                format!("unknown action {s:?}"),
                                "not proxy, block or bypass",
                            );
                            match closest(s, &["proxy", "block", "bypass"]) {
                                Some(c) => d.help(format!("did you mean \"{c}\"?")),
                                None => d.help("an action is \"proxy\", \"block\" or \"bypass\""),
                            };
                        }
                    }
                }
                "protocol" => {
                    if let Some(s) = self.string(v, "protocol") {
                        match s {
                            "any" => rule.protocol = None,
                            "tcp" => rule.protocol = Some(Protocol::TCP),
                            "udp" => rule.protocol = Some(Protocol::UDP),
                            _ => {
                                self.sink
                                    .error(
                                        "unknown-protocol",
                                        v.span(),
                                        format!("unknown protocol {s:?}"),
                                        "not tcp, udp or any",
                                    )
                                    .help(
                                        "only TCP and UDP flows are ever redirected; write \"tcp\", \"udp\" or \"any\"",
                                    );
                            }
                        }
                    }
                }
                "remote" => {
                    let items = self.strings(v, "remote");
                    rule.remote = items.iter().filter_map(|(s, span)| self.cidr(s, span)).collect();
                }
                "remote_ports" => {
                    let items = self.array(v, "remote_ports");
                    rule.remote_ports = items.iter().filter_map(|i| self.port_range(i)).collect();
                }
                "app" => rule.app = self.globs(v, "app"),
                "original_app" => rule.original_app = self.globs(v, "original_app"),
                "package" => {
                    for (s, span) in self.strings(v, "package") {
                        match SidBuf::parse(s) {
                            Some(sid) => {
                                if !s.to_ascii_uppercase().starts_with("S-1-15-2-") {
                                    self.sink
                                        .warning(
                                            "not-package-sid",
                                            span.clone(),
                                            format!("{s:?} is not an AppContainer package SID"),
                                            "no process has it as a package id",
                                        )
                                        .help("package SIDs start with S-1-15-2-");
                                }
                                rule.package.push(sid);
                            }
                            None => {
                                self.sink
                                    .error("bad-sid", span, format!("{s:?} is not a SID"), "not S-1-<authority>-<sub>...")
                                    .help("write the string form, for example \"S-1-15-2-1430448594-2639229838-973813799-439329657-1197984847-4069523365-4100528453\"");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let header = anchor.clone().unwrap_or(v.span());
        if !t.iter().any(|(k, _)| k.get_ref() == "action") {
            self.sink
                .error("missing-action", header.clone(), format!("rule #{} has no `action`", index + 1), "this rule")
                .help("add action = \"proxy\", \"block\" or \"bypass\"");
        }
        let failed = self.sink.items[errors_before..].iter().any(|d| d.severity == crate::Severity::Error);
        rule.name = name.unwrap_or_else(|| format!("rule #{}", index + 1));
        rule.action = action?;
        if failed {
            return None;
        }
        Some(Parsed { rule, anchor: header })
    }

    /// Walks the whole document.
    pub(crate) fn document(&mut self, root: &Spanned<DeTable<'_>>) -> (RuleSet, Vec<Parsed>) {
        let t = root.get_ref();
        self.check_keys(t, ROOT_KEYS, "the top level");
        let mut rs = RuleSet {
            proxy: ProxyListeners { v4: DEFAULT_V4.parse().ok(), v6: DEFAULT_V6.parse().ok() },
            loop_policy: LoopPolicy::default(),
            ..RuleSet::default()
        };
        let mut parsed = Vec::new();
        let mut saw_version = false;
        let mut saw_proxy = false;
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "version" => {
                    saw_version = true;
                    match self.integer(v, "version") {
                        Some(1) | None => {}
                        Some(n) => {
                            self.sink
                                .error(
                                    "unsupported-version",
                                    v.span(),
                                    format!("rules format version {n} is not supported"),
                                    "this build reads version 1",
                                )
                                .help("write version = 1");
                        }
                    }
                }
                "proxy" => {
                    saw_proxy = true;
                    rs.proxy = self.proxy(v);
                }
                "coexistence" => self.coexistence(v, &mut rs),
                "boot" => rs.boot = self.boot(v),
                "rule" => match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            parsed.extend(self.rule(item, i));
                        }
                    }
                    _ => {
                        self.sink
                            .error("wrong-type", k.span(), "`rule` must be an array of tables", "a single table")
                            .help("write each rule under its own [[rule]] header");
                    }
                },
                _ => {}
            }
        }
        if !saw_version {
            self.sink
                .error("missing-version", 0..0, "the rules file has no `version`", "expected `version = 1` first")
                .help("start the file with: version = 1");
        }
        if !saw_proxy && let Some(p) = parsed.iter().find(|p| p.rule.action == Action::Proxy) {
            self.sink
                .warning(
                    "proxy-section-missing",
                    p.anchor.clone(),
                    format!(
                        "rule {:?} proxies flows, but the file has no [proxy] section: the listeners default to \
                         {DEFAULT_V4} and {DEFAULT_V6}",
                        p.rule.name
                    ),
                    "proxies flows",
                )
                .help(
                    "say where the proxy listens in a [proxy] section; where no proxy is registered for a flow's \
                     address family, the flow is left alone (`proxy-unavailable`)",
                );
        }
        (rs, parsed)
    }
}
