//! The endpoint table's compact storage.
//!
//! [`EndpointEntry`] is the public form (a full `SocketAddr` and a 64-bit
//! PID: 48 bytes). The table keeps the 24-byte [`PackedEntry`] instead, so a
//! slot (key, entry, deadline, age links) is 48 bytes: with the index, an
//! endpoint costs under 64 bytes. What packing drops, and why that is safe:
//! - the PID is 32 bits: localRedirectTargetPID is a DWORD, and
//!   [`crate::Arbiter::set_proxy`] refuses larger PIDs;
//! - an IPv6 destination's flow info and scope id: A4 ignores flow info, and
//!   an unknown scope (0) matches any (see `decide::same_endpoint`);
//! - nothing else: reasons keep their code, addresses and ports are whole.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::decide::EndpointEntry;
use crate::policy::PermitOrBlock;
use crate::reason::Reason;

const CACHED_PERMIT: u8 = 0;
const CACHED_BLOCK: u8 = 1;
const PROXIED_V4: u8 = 2;
const PROXIED_V6: u8 = 3;

/// An [`EndpointEntry`] in 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackedEntry {
    ip: [u8; 16],
    pid: u32,
    /// The port of a proxied destination, or a cached verdict's reason code.
    port_or_reason: u16,
    kind: u8,
}

const _: () = assert!(size_of::<PackedEntry>() == 24);

impl PackedEntry {
    pub(crate) fn pack(e: &EndpointEntry) -> Self {
        match *e {
            EndpointEntry::Cached { verdict, reason } => Self {
                ip: [0; 16],
                pid: 0,
                port_or_reason: reason.code(),
                kind: match verdict {
                    PermitOrBlock::Permit => CACHED_PERMIT,
                    PermitOrBlock::Block => CACHED_BLOCK,
                },
            },
            EndpointEntry::Proxied { target_pid, destination } => {
                let (ip, kind) = match destination.ip() {
                    IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), PROXIED_V4),
                    IpAddr::V6(v6) => (v6.octets(), PROXIED_V6),
                };
                // Never truncates in practice (set_proxy refuses larger PIDs);
                // saturating keeps an impossible one from matching anything real.
                let pid = u32::try_from(target_pid).unwrap_or(u32::MAX);
                Self { ip, pid, port_or_reason: destination.port(), kind }
            }
        }
    }

    pub(crate) fn unpack(&self) -> EndpointEntry {
        let ip6 = Ipv6Addr::from(self.ip);
        match self.kind {
            CACHED_PERMIT | CACHED_BLOCK => EndpointEntry::Cached {
                verdict: if self.kind == CACHED_BLOCK { PermitOrBlock::Block } else { PermitOrBlock::Permit },
                reason: Reason::from_code(self.port_or_reason),
            },
            PROXIED_V4 => EndpointEntry::Proxied {
                target_pid: u64::from(self.pid),
                destination: SocketAddr::new(
                    IpAddr::V4(ip6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    self.port_or_reason,
                ),
            },
            _ => EndpointEntry::Proxied {
                target_pid: u64::from(self.pid),
                destination: SocketAddr::new(IpAddr::V6(ip6), self.port_or_reason),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let entries = [
            EndpointEntry::Cached { verdict: PermitOrBlock::Block, reason: Reason::RuleBlock },
            EndpointEntry::Cached { verdict: PermitOrBlock::Permit, reason: Reason::LoopSuspected },
            EndpointEntry::Proxied { target_pid: 5151, destination: "93.184.216.34:443".parse().unwrap() },
            EndpointEntry::Proxied { target_pid: u64::from(u32::MAX), destination: "0.0.0.0:0".parse().unwrap() },
            EndpointEntry::Proxied { target_pid: 7, destination: "[2001:db8::1]:80".parse().unwrap() },
            // An IPv4-mapped IPv6 destination stays IPv6.
            EndpointEntry::Proxied { target_pid: 7, destination: "[::ffff:1.2.3.4]:80".parse().unwrap() },
        ];
        for e in entries {
            assert_eq!(PackedEntry::pack(&e).unpack(), e);
        }
    }

    #[test]
    fn scope_and_flow_info_are_dropped() {
        let e = EndpointEntry::Proxied { target_pid: 7, destination: "[fe80::1%9]:80".parse().unwrap() };
        let EndpointEntry::Proxied { destination, .. } = PackedEntry::pack(&e).unpack() else { panic!() };
        assert_eq!(destination, "[fe80::1]:80".parse::<SocketAddr>().unwrap());
    }
}
