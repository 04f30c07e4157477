//! Records that are not decisions of the table: another vendor's bind
//! redirect (kind 6) and a change of the boot guard (kind 7). Neither
//! replays (there is no decision function to re-run): [`super::AuditRecord::replay`]
//! gives `None` for them, as for departures. Readers that predate a kind
//! skip it by its length.

use core::net::SocketAddr;

use super::{Body, DecodeError, EncodeError, Sink};
use crate::boot::BootMode;
use crate::flow::{AppId, Protocol};

/// Another filter changed a socket's local address at ALE_BIND_REDIRECT:
/// who (its filter id, `modifierFilterId`), from what (the address the
/// application asked for, the oldest version of the bind request) and to
/// what (the address in force when our inspection callout ran).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebindRecord<'a> {
    /// The process that bound.
    pub pid: u64,
    /// Its app id.
    pub app: AppId<'a>,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The local address the application asked for.
    pub from: SocketAddr,
    /// The local address after every earlier filter's change.
    pub to: SocketAddr,
    /// The filter that made the newest change (`modifierFilterId`).
    pub by: u64,
    /// How many versions of the request other filters made (1 = one change).
    pub changes: u32,
}

/// What changed about the boot guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GuardChange {
    /// Our filters are in place and our proxy registered: the boot-time
    /// protection is lifted (block mode) or was never there (open mode).
    Ready = 1,
    /// Our proxy went away (died or unregistered): the driver falls back to
    /// the configured mode until it registers again.
    ProxyLost = 2,
    /// The driver is unloading: the persistent filters (block mode) are what
    /// remains.
    Unloading = 3,
    /// Our filters left the engine (the BFE stopped) while our proxy was
    /// registered: the boot set (block mode) applies until the filters are
    /// back.
    FiltersGone = 4,
}

impl GuardChange {
    /// Its name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::ProxyLost => "proxy-lost",
            Self::Unloading => "unloading",
            Self::FiltersGone => "filters-gone",
        }
    }

    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Ready),
            2 => Some(Self::ProxyLost),
            3 => Some(Self::Unloading),
            4 => Some(Self::FiltersGone),
            _ => None,
        }
    }
}

/// The boot guard changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardRecord {
    /// The configured `[boot] mode`.
    pub mode: BootMode,
    /// What happened.
    pub change: GuardChange,
    /// The proxy PID concerned (0 for none).
    pub proxy_pid: u64,
}

pub(super) fn write_rebind(w: &mut impl Sink, r: &RebindRecord<'_>) -> Result<(), EncodeError> {
    w.u64(r.pid)?;
    w.bytes16(r.app.as_bytes())?;
    w.u8(r.protocol.0)?;
    w.addr(&r.from)?;
    w.addr(&r.to)?;
    w.u64(r.by)?;
    w.u32(r.changes)
}

pub(super) fn write_guard(w: &mut impl Sink, g: &GuardRecord) -> Result<(), EncodeError> {
    w.u8(g.mode as u8)?;
    w.u8(g.change as u8)?;
    w.u64(g.proxy_pid)
}

impl<'a> Body<'a> {
    pub(super) fn rebind(&mut self) -> Result<RebindRecord<'a>, DecodeError> {
        let pid = self.u64()?;
        let app = self.app("app id")?;
        let protocol = Protocol(self.u8()?);
        let from = self.addr("requested local address")?;
        let to = self.addr("bound local address")?;
        if from.is_ipv4() != to.is_ipv4() {
            return Err(self.bad("address family (requested and bound differ)"));
        }
        let by = self.u64()?;
        let changes = self.u32()?;
        if changes == 0 {
            return Err(self.bad("rebind change count"));
        }
        Ok(RebindRecord { pid, app, protocol, from, to, by, changes })
    }

    pub(super) fn guard(&mut self) -> Result<GuardRecord, DecodeError> {
        let mode = BootMode::from_u8(self.u8()?).ok_or_else(|| self.bad("boot mode"))?;
        let change = GuardChange::from_u8(self.u8()?).ok_or_else(|| self.bad("guard change"))?;
        let proxy_pid = self.u64()?;
        Ok(GuardRecord { mode, change, proxy_pid })
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::audit::{AuditRecord, Event};
    use crate::time::Instant;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn rebind(app: &[u8]) -> AuditRecord<'_> {
        AuditRecord {
            seq: 9,
            at: Instant::from_millis(1234),
            event: Event::Rebind(RebindRecord {
                pid: 4242,
                app: AppId::from_utf16le(app),
                protocol: Protocol::UDP,
                from: "0.0.0.0:5353".parse().unwrap(),
                to: "192.168.1.20:5353".parse().unwrap(),
                by: 77,
                changes: 1,
            }),
        }
    }

    fn guard() -> AuditRecord<'static> {
        AuditRecord {
            seq: 10,
            at: Instant::from_millis(99),
            event: Event::Guard(GuardRecord { mode: BootMode::Block, change: GuardChange::ProxyLost, proxy_pid: 31 }),
        }
    }

    #[test]
    fn both_kinds_round_trip_and_do_not_replay() {
        let app = utf16(r"\device\harddiskvolume3\apps\game.exe");
        for rec in [rebind(&app), guard()] {
            let bytes = rec.to_vec().unwrap();
            assert_eq!(bytes.len(), rec.encoded_len());
            let (back, used) = AuditRecord::decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, rec);
            assert_eq!(back.replay(), None, "not a decision: nothing to replay");
            assert_eq!(back.outcome(), None);
            for n in 0..bytes.len() {
                assert!(AuditRecord::decode(&bytes[..n]).is_err(), "truncated at {n}");
            }
        }
        assert_eq!(rebind(&app).to_vec().unwrap()[3], 6, "kind 6");
        assert_eq!(guard().to_vec().unwrap()[3], 7, "kind 7");
    }

    #[test]
    fn bad_values_are_named() {
        let mut bytes = guard().to_vec().unwrap();
        let last = bytes.len() - 9;
        bytes[last] = 0;
        let e = AuditRecord::decode(&bytes).unwrap_err();
        assert_eq!(e.kind, crate::audit::DecodeErrorKind::BadValue("guard change"));
        let app = utf16("a");
        let mut r = rebind(&app);
        if let Event::Rebind(x) = &mut r.event {
            x.to = "[::1]:5353".parse().unwrap();
        }
        let bytes = r.to_vec().unwrap();
        assert!(AuditRecord::decode(&bytes).is_err(), "mixed families refused");
    }

    #[test]
    fn mixed_logs_iterate() {
        let app = utf16("x.exe");
        let mut log = rebind(&app).to_vec().unwrap();
        log.extend(guard().to_vec().unwrap());
        let all: Vec<_> = crate::audit::records(&log).collect();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(Result::is_ok));
    }
}
