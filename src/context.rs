//! The redirect context we attach to every flow we proxy
//! (FWPS_CONNECT_REQUEST0.localRedirectContext), and that our proxy reads back
//! with SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT.
//!
//! Fixed size, versioned, little-endian: magic `ARBC`, version, flags, the
//! process id, then the original remote and original local addresses
//! (what WFPSampler keeps, plus the PID). WFP owns the buffer after apply.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::wire::{Reader, Short, Writer};

/// Encoded size of a context.
pub const CONTEXT_LEN: usize = 64;
const MAGIC: [u8; 4] = *b"ARBC";
const VERSION: u8 = 1;

/// What the proxy needs to reach the original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RedirectContext {
    /// The remote address the application asked for.
    pub original_remote: SocketAddr,
    /// The application's local address.
    pub original_local: SocketAddr,
    /// The application's process id.
    pub pid: u64,
}

/// Why a context could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextError {
    /// Not [`CONTEXT_LEN`] bytes.
    Length,
    /// Not our magic: another vendor's context, or garbage.
    Magic,
    /// A version this build does not know.
    Version(u8),
    /// An address family tag other than 4 or 6.
    Family,
}

impl core::fmt::Display for ContextError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length => write!(f, "redirect context is not {CONTEXT_LEN} bytes"),
            Self::Magic => f.write_str("redirect context is not ours (bad magic)"),
            Self::Version(v) => write!(f, "redirect context version {v} is not supported"),
            Self::Family => f.write_str("redirect context holds an unknown address family"),
        }
    }
}

impl core::error::Error for ContextError {}

impl From<Short> for ContextError {
    fn from(_: Short) -> Self {
        Self::Length
    }
}

fn put_addr(w: &mut Writer<'_>, a: &SocketAddr) -> Result<(), Short> {
    // 24 bytes: family, pad, port, scope id, 16 address bytes (IPv4 in the first 4).
    let (family, port, scope, ip) = match a {
        SocketAddr::V4(a) => {
            let mut ip = [0u8; 16];
            if let Some(dst) = ip.get_mut(..4) {
                dst.copy_from_slice(&a.ip().octets());
            }
            (4u8, a.port(), 0u32, ip)
        }
        SocketAddr::V6(a) => (6u8, a.port(), a.scope_id(), a.ip().octets()),
    };
    w.u8(family)?;
    w.u8(0)?;
    w.u16(port)?;
    w.u32(scope)?;
    w.put(&ip)
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr, ContextError> {
    let family = r.u8()?;
    let _pad = r.u8()?;
    let port = r.u16()?;
    let scope = r.u32()?;
    let ip: [u8; 16] = r.array()?;
    match family {
        4 => {
            let [a, b, c, d, ..] = ip;
            Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)))
        }
        6 => Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))),
        _ => Err(ContextError::Family),
    }
}

impl RedirectContext {
    /// The wire form.
    pub fn encode(&self) -> [u8; CONTEXT_LEN] {
        let mut out = [0u8; CONTEXT_LEN];
        let mut w = Writer::new(&mut out);
        // Cannot be short: the sizes add up to CONTEXT_LEN exactly.
        let _ = w
            .put(&MAGIC)
            .and_then(|()| w.u8(VERSION))
            .and_then(|()| w.put(&[0; 3]))
            .and_then(|()| w.u64(self.pid))
            .and_then(|()| put_addr(&mut w, &self.original_remote))
            .and_then(|()| put_addr(&mut w, &self.original_local));
        out
    }

    /// Parses the wire form; any byte string is safe.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContextError> {
        if bytes.len() != CONTEXT_LEN {
            return Err(ContextError::Length);
        }
        let mut r = Reader::new(bytes);
        if r.array::<4>()? != MAGIC {
            return Err(ContextError::Magic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(ContextError::Version(version));
        }
        r.take(3)?;
        let pid = r.u64()?;
        let original_remote = get_addr(&mut r)?;
        let original_local = get_addr(&mut r)?;
        Ok(Self { original_remote, original_local, pid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (remote, local) in [("93.184.216.34:443", "10.0.0.5:50000"), ("[2001:db8::1]:80", "[fe80::2%3]:51000")] {
            let c = RedirectContext {
                original_remote: remote.parse().unwrap(),
                original_local: local.parse().unwrap(),
                pid: 4242,
            };
            assert_eq!(RedirectContext::decode(&c.encode()), Ok(c));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(RedirectContext::decode(&[0; 10]), Err(ContextError::Length));
        assert_eq!(RedirectContext::decode(&[0; CONTEXT_LEN]), Err(ContextError::Magic));
        let c = RedirectContext {
            original_remote: "1.2.3.4:5".parse().unwrap(),
            original_local: "1.2.3.4:6".parse().unwrap(),
            pid: 1,
        };
        let mut b = c.encode();
        b[4] = 9;
        assert_eq!(RedirectContext::decode(&b), Err(ContextError::Version(9)));
        let mut b = c.encode();
        b[16] = 5;
        assert_eq!(RedirectContext::decode(&b), Err(ContextError::Family));
    }
}
