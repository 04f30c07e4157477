//! What happens to outbound connections before arbiter is ready: the
//! `[boot]` section of the rules file, as data.
//!
//! Two modes (issue 14):
//! - [`BootMode::Open`] (the default): nothing is installed before the
//!   driver, BFE, our filters and our proxy are all in place; flows in that
//!   window leave untouched.
//! - [`BootMode::Block`]: outbound connections that are neither loopback nor
//!   on the allow-list are blocked from boot until everything is ready, and
//!   again whenever our proxy is gone.
//!
//! The allow-list is a short list of (protocol, remote port) pairs; by
//! default DHCP (UDP 67 for IPv4, UDP 547 for IPv6) and DNS (UDP and TCP 53),
//! so the machine can still get an address and resolve names. It is bounded
//! by [`MAX_ALLOW`] because every entry becomes two WFP filters per address
//! family (one boot-time, one persistent).

use alloc::vec::Vec;

use crate::flow::Protocol;

/// The most allow-list entries a rules file may name.
pub const MAX_ALLOW: usize = 16;

/// The `[boot] mode` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum BootMode {
    /// Nothing is blocked before arbiter is ready (today's behaviour).
    #[default]
    Open = 0,
    /// Block what is not loopback or allowed until arbiter is ready.
    Block = 1,
}

impl BootMode {
    /// The name in the rules file and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Block => "block",
        }
    }

    /// The mode with this name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "block" => Some(Self::Block),
            _ => None,
        }
    }

    /// From its encoded byte.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Open),
            1 => Some(Self::Block),
            _ => None,
        }
    }
}

/// One allow-list entry: outbound `protocol` to remote `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootAllow {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Remote port.
    pub port: u16,
}

impl BootAllow {
    /// DHCP client to server: UDP 67 (IPv4) and UDP 547 (DHCPv6).
    pub const DHCP: [Self; 2] = [Self::udp(67), Self::udp(547)];
    /// DNS: UDP 53 and TCP 53.
    pub const DNS: [Self; 2] = [Self::udp(53), Self::tcp(53)];

    /// UDP to `port`.
    pub const fn udp(port: u16) -> Self {
        Self { protocol: Protocol::UDP, port }
    }

    /// TCP to `port`.
    pub const fn tcp(port: u16) -> Self {
        Self { protocol: Protocol::TCP, port }
    }

    /// Does this entry allow a flow of `protocol` to `port`?
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.port == port
    }
}

/// The `[boot]` section.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BootConfig {
    /// `mode`.
    pub mode: BootMode,
    /// `allow`, expanded (`"dhcp"` and `"dns"` become their entries), sorted
    /// and without duplicates.
    pub allow: Vec<BootAllow>,
}

impl Default for BootConfig {
    fn default() -> Self {
        let mut allow = Vec::new();
        allow.extend_from_slice(&BootAllow::DHCP);
        allow.extend_from_slice(&BootAllow::DNS);
        allow.sort_unstable();
        Self { mode: BootMode::Open, allow }
    }
}

impl BootConfig {
    /// Would `block` mode let an outbound flow of `protocol` to `remote_port`
    /// through (loopback aside, which is always allowed)?
    pub fn allowed(&self, protocol: Protocol, remote_port: u16) -> bool {
        self.allow.iter().any(|a| a.allows(protocol, remote_port))
    }

    /// Sorts and de-duplicates the allow-list (the canonical form).
    pub fn canonicalize(&mut self) {
        self.allow.sort_unstable();
        self.allow.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_open_with_dhcp_and_dns() {
        let b = BootConfig::default();
        assert_eq!(b.mode, BootMode::Open);
        assert!(b.allowed(Protocol::UDP, 67));
        assert!(b.allowed(Protocol::UDP, 547));
        assert!(b.allowed(Protocol::UDP, 53));
        assert!(b.allowed(Protocol::TCP, 53));
        assert!(!b.allowed(Protocol::TCP, 443));
        assert!(!b.allowed(Protocol::TCP, 67));
    }

    #[test]
    fn names_round_trip() {
        for m in [BootMode::Open, BootMode::Block] {
            assert_eq!(BootMode::from_name(m.name()), Some(m));
            assert_eq!(BootMode::from_u8(m as u8), Some(m));
        }
        assert_eq!(BootMode::from_name("closed"), None);
        assert_eq!(BootMode::from_u8(2), None);
    }
}

#[cfg(test)]
mod blob_tests {
    use super::*;
    use alloc::vec::Vec;

    use crate::RuleSet;
    use crate::compiled::blob::{decode_rule_set, encode};

    fn block() -> RuleSet {
        let mut boot = BootConfig { mode: BootMode::Block, ..BootConfig::default() };
        boot.allow.push(BootAllow::udp(123));
        boot.canonicalize();
        RuleSet { boot, ..RuleSet::default() }
    }

    #[test]
    fn default_boot_adds_no_bytes() {
        let plain = encode(&RuleSet::default()).unwrap();
        let back = decode_rule_set(&plain).unwrap();
        assert_eq!(back.boot, BootConfig::default());
        // Same bytes as before the section existed: header + 12 fixed bytes
        // + mask + two empty glob lists + rule count.
        assert_eq!(plain.len(), 16 + 12 + 1 + 4 + 4 + 4);
    }

    #[test]
    fn the_mode_reaches_the_compiled_rules() {
        use crate::Policy;
        let compiled = crate::compiled::blob::decode(&encode(&block()).unwrap()).unwrap();
        assert_eq!(compiled.boot_mode(), BootMode::Block, "the driver's guard reads it from the rules it was sent");
        assert_eq!(block().boot_mode(), BootMode::Block);
        let plain = crate::compiled::blob::decode(&encode(&RuleSet::default()).unwrap()).unwrap();
        assert_eq!(plain.boot_mode(), BootMode::Open);
    }

    #[test]
    fn block_mode_round_trips() {
        let rs = block();
        let blob = encode(&rs).unwrap();
        let back = decode_rule_set(&blob).unwrap();
        assert_eq!(back.boot, rs.boot);
        assert_eq!(encode(&back).unwrap(), blob, "canonical");
    }

    fn reseal(mut blob: Vec<u8>) -> Vec<u8> {
        let payload = blob.get(16..).unwrap().to_vec();
        let len = u32::try_from(payload.len()).unwrap();
        blob[8..12].copy_from_slice(&len.to_le_bytes());
        blob[12..16].copy_from_slice(&crate::compiled::blob::crc32(&payload).to_le_bytes());
        blob
    }

    #[test]
    fn malformed_sections_are_refused() {
        let good = encode(&block()).unwrap();
        let tag_at = encode(&RuleSet::default()).unwrap().len();
        // Bad mode.
        let mut b = good.clone();
        b[tag_at + 1] = 7;
        assert!(decode_rule_set(&reseal(b)).is_err());
        // Unsorted entries: swap the first two.
        let mut b = good.clone();
        let e = tag_at + 3;
        let (x, y) = (b[e..e + 3].to_vec(), b[e + 3..e + 6].to_vec());
        b[e..e + 3].copy_from_slice(&y);
        b[e + 3..e + 6].copy_from_slice(&x);
        assert!(decode_rule_set(&reseal(b)).is_err());
        // ICMP entry.
        let mut b = good.clone();
        b[e] = 1;
        assert!(decode_rule_set(&reseal(b)).is_err());
        // The default spelled out.
        let mut b = encode(&RuleSet::default()).unwrap();
        let d = BootConfig::default();
        b.extend_from_slice(&[b'B', 0, u8::try_from(d.allow.len()).unwrap()]);
        for a in &d.allow {
            b.push(a.protocol.0);
            b.extend_from_slice(&a.port.to_le_bytes());
        }
        assert!(decode_rule_set(&reseal(b)).is_err());
        // Every truncation fails cleanly.
        for n in tag_at..good.len() {
            assert!(decode_rule_set(&reseal(good[..n].to_vec())).is_err() || n == tag_at);
        }
    }
}
