//! Every reason the core can give, from one table.
//!
//! The names are an interface (fixtures, audit tools and other teams' checks
//! use them), taken verbatim from `decision-table.md`. Audit records carry the
//! numeric code, never text; a code this build does not know survives a
//! decode/encode round trip as [`Reason::Unknown`] (as rustls's `enum_builder!`
//! keeps unknown wire values).

use core::fmt;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $desc:literal; )*) => {
        /// Why the core gave its verdict. Codes are stable; never renumber.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
            /// A code this build does not know (from a newer audit log).
            Unknown(u16),
        }

        impl Reason {
            /// Every known reason, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The stable numeric code.
            pub const fn code(self) -> u16 {
                match self {
                    $( Self::$variant => $code, )*
                    Self::Unknown(c) => c,
                }
            }

            /// The reason for a numeric code; unknown codes are kept as they are.
            pub const fn from_code(code: u16) -> Self {
                match code {
                    $( $code => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }

            /// The kebab-case name used in fixtures, reports and the spec.
            /// Unknown codes are named `unknown`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )*
                    Self::Unknown(_) => "unknown",
                }
            }

            /// A one-line description for reports.
            pub const fn description(self) -> &'static str {
                match self {
                    $( Self::$variant => $desc, )*
                    Self::Unknown(_) => "a reason code this build does not know",
                }
            }

            /// The reason with the given kebab-case name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(Self::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// C1.
    UnsupportedProtocol = 1, "unsupported-protocol", "the protocol is neither TCP nor UDP";
    /// C2.
    RedirectedBySelf = 2, "redirected-by-self", "the latest redirection of this chain was ours (our proxy's propagated outbound)";
    /// C3, `revisit = "permit"`.
    RevisitPermitted = 3, "revisit-permitted", "we redirected this chain before and another redirector sent it back: permitted";
    /// C3, `revisit = "block"`.
    RevisitBlocked = 4, "revisit-blocked", "we redirected this chain before and another redirector sent it back: blocked";
    /// C4.
    NoWriteRight = 5, "no-write-right", "a higher-weight filter took the write right; we may only veto";
    /// C5.
    LocalProxyOfOther = 6, "local-proxy-of-other", "another vendor is redirecting this flow to its local proxy right now";
    /// C6.
    ModifiedBySelf = 7, "modified-by-self", "we already modified this flow in this classification (reauthorization)";
    /// C7.
    OwnProxyOutbound = 8, "own-proxy-outbound", "the connecting process is our own proxy";
    /// C8.
    LoopSuspected = 9, "loop-suspected", "a known local proxy reached this destination through us too often within the hop window";
    /// C9.
    TrustedOther = 10, "trusted-other", "redirected by another vendor whose proxy we trust";
    /// C10.
    UntrustedOtherProxied = 11, "untrusted-other-proxied", "redirected by an untrusted vendor; our rules proxy it";
    /// C11.
    RuleProxy = 12, "rule-proxy", "the first matching rule proxies the flow";
    /// C12.
    RuleBlock = 13, "rule-block", "the first matching rule blocks the flow";
    /// C13.
    RuleBypass = 14, "rule-bypass", "the first matching rule bypasses the proxy";
    /// C14.
    NoRule = 15, "no-rule", "no rule matches the flow";
    /// A3.
    RedirectTargetMismatch = 16, "redirect-target-mismatch", "the flow we proxied was delivered to a process other than our proxy";
    /// A4.
    OriginalDestinationMismatch = 17, "original-destination-mismatch", "the original destination WFP reports differs from the one we recorded";
    /// A5.
    ProxyVerified = 18, "proxy-verified", "the flow we proxied reached our proxy with the destination we recorded";
    /// A6.
    RedirectedByOtherObserved = 19, "redirected-by-other-observed", "another redirector sent this flow to a local proxy; its PID is now a known local proxy";
    /// A7.
    NotRedirected = 20, "not-redirected", "nothing to enforce at auth-connect";
    /// Extension, after C7: a rule says proxy but no proxy is registered for the
    /// flow's address family, so the flow is left alone (fail open).
    ProxyUnavailable = 100, "proxy-unavailable", "a rule proxies the flow but no proxy listener is registered for its address family";
    /// Extension, after C4: the previousVersion chain held more distinct
    /// modifiers than the input can carry, so C5/C6 cannot be ruled out.
    ChainTooLong = 101, "chain-too-long", "the previousVersion chain has more distinct modifiers than the core can inspect; left alone";
    /// Extension: a classification held while no proxy was registered timed
    /// out and got the configured fallback verdict (driver pend queue).
    PendTimeout = 102, "pend-timeout", "held for a proxy that did not register in time: the configured fallback verdict applies";
    /// Extension: the adapter could not get the classify handle or the
    /// writable layer data (FwpsAcquireClassifyHandle0 or
    /// FwpsAcquireWritableLayerDataPointer0 failed), so the previousVersion
    /// chain is unknown and the flow cannot be changed: left alone (fail open).
    LayerDataUnavailable = 103, "layer-data-unavailable", "WFP did not grant the classify handle or the writable layer data: left alone";
    /// Extension: the previousVersion chain or the redirect state WFP
    /// reported could not be read: left alone (fail open).
    UnreadableIndication = 104, "unreadable-indication", "the redirect state or the previousVersion chain could not be read: left alone";
    /// Audit only: a table was full and its oldest entry was evicted.
    Evicted = 200, "evicted", "a full table evicted its oldest entry";
    /// Audit only: a cached block expired before auth-connect saw the endpoint.
    Expired = 201, "expired", "a cached block expired before its auth-connect indication";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(c) => write!(f, "unknown({c})"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), *r);
            assert_eq!(Reason::from_name(r.name()), Some(*r));
            assert!(!r.description().is_empty());
        }
    }

    #[test]
    fn unknown_codes_survive() {
        let r = Reason::from_code(9999);
        assert_eq!(r, Reason::Unknown(9999));
        assert_eq!(r.code(), 9999);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert_ne!(a.code(), b.code());
            }
        }
    }
}
