//! The `[boot]` section: what happens to outbound connections before arbiter
//! is ready.
//!
//! ```toml
//! [boot]
//! mode = "block"                 # "open" (default) or "block"
//! allow = ["dhcp", "dns", "udp/123"]
//! ```
//!
//! - `mode`: `"open"` lets every flow out until the driver, the BFE, our
//!   filters and our proxy are all ready (and again while the proxy is gone);
//!   `"block"` blocks outbound connections that are not loopback and not on
//!   `allow` in those windows.
//! - `allow`: what `block` mode still lets out. `"dhcp"` is UDP 67 and
//!   UDP 547, `"dns"` is UDP 53 and TCP 53, `"tcp/PORT"` and `"udp/PORT"`
//!   name one remote port. Left out, it is `["dhcp", "dns"]`; `[]` allows
//!   nothing but loopback. At most 16 entries after expansion.
//!
//! Diagnostics: `unknown-boot-mode`, `bad-boot-allow`, `boot-allow-too-long`
//! (errors), `boot-allow-unused` (warning: an allow-list in `open` mode has
//! nothing to allow), plus the shared `unknown-key` and `wrong-type`.

use arbiter::boot::{BootAllow, BootConfig, BootMode, MAX_ALLOW};

use super::{Value, Walker};

/// The keys of `[boot]`.
pub(super) const BOOT_KEYS: &[&str] = &["mode", "allow"];

impl Walker<'_> {
    pub(super) fn boot(&mut self, v: &Value<'_>) -> BootConfig {
        let mut out = BootConfig::default();
        let Some(t) = self.table(v, "boot") else { return out };
        self.check_keys(t, BOOT_KEYS, "[boot]");
        let mut allow_span = None;
        let mut mode_ok = true;
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "mode" => {
                    mode_ok = false;
                    if let Some(s) = self.string(v, "mode") {
                        mode_ok = true;
                        match BootMode::from_name(s) {
                            Some(m) => out.mode = m,
                            None => {
                                mode_ok = false;
                                self.sink
                                    .error(
                                        "unknown-boot-mode",
                                        v.span(),
                                        format!("unknown boot mode {s:?}"),
                                        "not a boot mode",
                                    )
                                    .help("write mode = \"open\" or mode = \"block\"");
                            }
                        }
                    }
                }
                "allow" => {
                    allow_span = Some(v.span());
                    out.allow.clear();
                    for (s, span) in self.strings(v, "allow") {
                        match parse_allow(s) {
                            Some(entries) => out.allow.extend_from_slice(entries.as_slice()),
                            None => {
                                self.sink
                                    .error(
                                        "bad-boot-allow",
                                        span,
                                        format!("{s:?} is not a boot allow-list entry"),
                                        "not dhcp, dns, tcp/PORT or udp/PORT",
                                    )
                                    .help("write \"dhcp\", \"dns\", \"tcp/443\" or \"udp/123\"");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.canonicalize();
        if let Some(span) = allow_span {
            if out.allow.len() > MAX_ALLOW {
                self.sink
                    .error(
                        "boot-allow-too-long",
                        span.clone(),
                        format!("{} allow-list entries; at most {MAX_ALLOW}", out.allow.len()),
                        "too many entries",
                    )
                    .help("each entry becomes boot-time and persistent WFP filters; keep the list short");
            }
            if out.mode == BootMode::Open && mode_ok {
                self.sink
                    .warning(
                        "boot-allow-unused",
                        span,
                        "`allow` has no effect in open mode",
                        "nothing is blocked in open mode",
                    )
                    .help("set mode = \"block\" or remove `allow`");
            }
        }
        out
    }
}

/// Up to two entries (`dhcp` and `dns` are two each).
struct Entries {
    items: [BootAllow; 2],
    len: usize,
}

impl Entries {
    fn as_slice(&self) -> &[BootAllow] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

fn parse_allow(s: &str) -> Option<Entries> {
    let lower = s.trim().to_ascii_lowercase();
    match lower.as_str() {
        "dhcp" => return Some(Entries { items: BootAllow::DHCP, len: 2 }),
        "dns" => return Some(Entries { items: BootAllow::DNS, len: 2 }),
        _ => {}
    }
    let (proto, port) = lower.split_once('/')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let entry = match proto {
        "tcp" => BootAllow::tcp(port),
        "udp" => BootAllow::udp(port),
        _ => return None,
    };
    Some(Entries { items: [entry, entry], len: 1 })
}
