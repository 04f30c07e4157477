//! Checked little-endian readers and writers for the core's binary formats
//! (audit records, redirect contexts, rules blobs, control messages).
//!
//! Every read checks the length first (smoltcp `wire`, rustls `Reader`):
//! malformed bytes become an error, never a panic.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Ran out of input (reading) or room (writing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short;

/// A cursor over input bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub const fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes.
    pub const fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if n > self.buf.len() {
            return Err(Short);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        self.take(N)?.try_into().map_err(|_| Short)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A socket address as [`Writer::socket_addr`] writes it; `Ok(None)` for
    /// an unknown family tag is not possible: unknown tags are `Err(Bad)`.
    pub fn socket_addr(&mut self) -> Result<Option<SocketAddr>, Short> {
        let family = self.u8()?;
        let port = self.u16()?;
        match family {
            4 => {
                let ip: [u8; 4] = self.array()?;
                Ok(Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))))
            }
            6 => {
                let ip: [u8; 16] = self.array()?;
                let flow = self.u32()?;
                let scope = self.u32()?;
                Ok(Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))))
            }
            _ => Ok(None),
        }
    }

    /// Bytes prefixed by a u16 length.
    pub fn bytes16(&mut self) -> Result<&'a [u8], Short> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// A cursor over an output buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    /// Writes into `buf`.
    pub const fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes written so far.
    pub const fn written(&self) -> usize {
        self.at
    }

    /// The bytes written so far.
    pub fn as_written(&self) -> &[u8] {
        self.buf.get(..self.at).unwrap_or(&[])
    }

    /// Appends bytes.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), Short> {
        let end = self.at.checked_add(bytes.len()).ok_or(Short)?;
        self.buf.get_mut(self.at..end).ok_or(Short)?.copy_from_slice(bytes);
        self.at = end;
        Ok(())
    }

    /// Overwrites bytes already written (for length fields).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) -> Result<(), Short> {
        let end = at.checked_add(bytes.len()).ok_or(Short)?;
        if end > self.at {
            return Err(Short);
        }
        self.buf.get_mut(at..end).ok_or(Short)?.copy_from_slice(bytes);
        Ok(())
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) -> Result<(), Short> {
        self.put(&[v])
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> Result<(), Short> {
        self.put(&v.to_le_bytes())
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> Result<(), Short> {
        self.put(&v.to_le_bytes())
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> Result<(), Short> {
        self.put(&v.to_le_bytes())
    }

    /// A socket address: family (4 or 6), port, address, and for IPv6 the
    /// flow info and scope id.
    pub fn socket_addr(&mut self, a: &SocketAddr) -> Result<(), Short> {
        match a {
            SocketAddr::V4(a) => {
                self.u8(4)?;
                self.u16(a.port())?;
                self.put(&a.ip().octets())
            }
            SocketAddr::V6(a) => {
                self.u8(6)?;
                self.u16(a.port())?;
                self.put(&a.ip().octets())?;
                self.u32(a.flowinfo())?;
                self.u32(a.scope_id())
            }
        }
    }

    /// Bytes prefixed by a u16 length.
    pub fn bytes16(&mut self, b: &[u8]) -> Result<(), Short> {
        self.u16(u16::try_from(b.len()).map_err(|_| Short)?)?;
        self.put(b)
    }
}

/// Encoded size of a socket address.
pub const fn socket_addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 1 + 2 + 4,
        SocketAddr::V6(_) => 1 + 2 + 16 + 8,
    }
}

/// The unspecified address of a family, for defaults.
pub const fn unspecified(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_reads() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        let a: SocketAddr = "[fe80::1%7]:443".parse().unwrap();
        w.socket_addr(&a).unwrap();
        w.u32(7).unwrap();
        let n = w.written();
        assert_eq!(n, socket_addr_len(&a) + 4);
        let mut r = Reader::new(&buf[..n]);
        assert_eq!(r.socket_addr().unwrap(), Some(a));
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.u8(), Err(Short));
        let mut small = [0u8; 3];
        assert_eq!(Writer::new(&mut small).u32(1), Err(Short));
    }
}
