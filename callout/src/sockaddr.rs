//! `SOCKADDR_STORAGE` / `SOCKADDR` to and from `core::net::SocketAddr`.
//!
//! Ports and addresses in socket addresses are in network byte order; the
//! scope id is `SCOPE_ID.Value`.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use wfp_ffi::{AF_INET, AF_INET6, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_STORAGE};

/// A socket address as `SOCKADDR_STORAGE` (the rest zeroed).
pub fn to_storage(addr: &SocketAddr) -> SOCKADDR_STORAGE {
    let mut out = SOCKADDR_STORAGE::ZERO;
    write_storage(&mut out, addr);
    out
}

/// Overwrites `out` with `addr`, zeroing the bytes the family does not use.
pub fn write_storage(out: &mut SOCKADDR_STORAGE, addr: &SocketAddr) {
    *out = SOCKADDR_STORAGE::ZERO;
    match addr {
        SocketAddr::V4(a) => {
            let sin = SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            };
            let p: *mut SOCKADDR_STORAGE = out;
            // SAFETY: SOCKADDR_STORAGE is 128 bytes, 8-aligned (asserted in
            // wfp-ffi); SOCKADDR_IN is 16 bytes, 2-aligned, so it fits at the
            // start, and `out` is an exclusive reference.
            unsafe { p.cast::<SOCKADDR_IN>().write(sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: a.ip().octets(),
                sin6_scope_id: a.scope_id(),
            };
            let p: *mut SOCKADDR_STORAGE = out;
            // SAFETY: SOCKADDR_IN6 is 28 bytes, 4-aligned: it fits at the
            // start of the 8-aligned 128-byte storage we hold exclusively.
            unsafe { p.cast::<SOCKADDR_IN6>().write(sin6) };
        }
    }
}

/// Reads a `SOCKADDR_STORAGE`; `None` for a family other than IPv4/IPv6.
pub fn from_storage(s: &SOCKADDR_STORAGE) -> Option<SocketAddr> {
    let p: *const SOCKADDR_STORAGE = s;
    // SAFETY: the storage is 128 readable bytes, which covers the SOCKADDR
    // header and both family structures.
    unsafe { read_sockaddr(p.cast::<SOCKADDR>()) }
}

/// Reads a socket address whose family decides its size.
///
/// # Safety
///
/// `p` must be null or point to a readable `SOCKADDR` whose family's full
/// structure (`SOCKADDR_IN` or `SOCKADDR_IN6`) is readable.
pub unsafe fn read_sockaddr(p: *const SOCKADDR) -> Option<SocketAddr> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and readable per the contract; read_unaligned because
    // WFP's buffers are not promised to be aligned.
    let family = unsafe { p.cast::<u16>().read_unaligned() };
    match family {
        AF_INET => {
            // SAFETY: the family says a SOCKADDR_IN is there (contract).
            let sin = unsafe { p.cast::<SOCKADDR_IN>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(sin.sin_addr), u16::from_be(sin.sin_port))))
        }
        AF_INET6 => {
            // SAFETY: the family says a SOCKADDR_IN6 is there (contract).
            let sin6 = unsafe { p.cast::<SOCKADDR_IN6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
