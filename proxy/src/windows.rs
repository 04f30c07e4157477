//! The Windows calls: Winsock's WFP redirect ioctls and the driver's control
//! device. Everything else in the crate is platform-neutral.
//!
//! Sources: "Using Bind or Connect Redirection" (steps 7 and 8: query records
//! and context on the accepted socket, set the records on the outbound socket
//! before it connects), the SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
//! SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT and
//! SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS control code pages, and the
//! IPPROTO_IP socket options page (IP_WFP_REDIRECT_RECORDS / _CONTEXT, which
//! deliver the same data as WSARecvMsg control messages for UDP).

use std::ffi::c_void;
use std::io;
use std::net::{TcpStream, UdpSocket};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, AsRawSocket, FromRawHandle, OwnedHandle};
use std::ptr;
use std::sync::OnceLock;

use socket2::{SockAddr, SockAddrStorage, Socket};
use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Networking::WinSock::{
    IP_WFP_REDIRECT_CONTEXT, IP_WFP_REDIRECT_RECORDS, IPPROTO_IP, IPPROTO_IPV6, IPV6_WFP_REDIRECT_CONTEXT,
    IPV6_WFP_REDIRECT_RECORDS, LPFN_WSARECVMSG, SIO_GET_EXTENSION_FUNCTION_POINTER,
    SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
    SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, SOCKADDR, SOCKET, SOCKET_ERROR, WSABUF, WSAGetLastError, WSAID_WSARECVMSG,
    WSAIoctl, WSAMSG, setsockopt,
};
use windows_sys::Win32::Storage::FileSystem::{CreateFileW, FILE_ATTRIBUTE_NORMAL, OPEN_EXISTING};
use windows_sys::Win32::System::IO::DeviceIoControl;

use crate::redirect::{Datagram, RawRedirect, RedirectProvider};
use crate::service::ControlChannel;

/// Redirect records are opaque and small; the docs suggest starting near 1 KB.
const FIRST_QUERY_LEN: usize = 1024;
/// We never accept more than this from a query.
const MAX_QUERY_LEN: usize = 64 * 1024;
/// Room for the records and context control messages of one datagram.
const CONTROL_LEN: usize = 8 * 1024;
/// `sizeof(CMSGHDR)` on 64-bit Windows: cmsg_len (usize), level, type.
const CMSG_HEADER_LEN: usize = 16;

fn raw(s: &impl AsRawSocket) -> SOCKET {
    // RawSocket is u64, SOCKET is usize: the same value on 64-bit Windows.
    s.as_raw_socket() as SOCKET
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn last_wsa_error() -> io::Error {
    // SAFETY: WSAGetLastError has no preconditions.
    let code = unsafe { WSAGetLastError() };
    io::Error::from_raw_os_error(code)
}

/// Runs a query ioctl with no input, growing the buffer while Winsock says
/// it is too small. Any other failure means "nothing there": Winsock fails
/// these queries on connections WFP did not redirect.
fn query(s: SOCKET, code: u32) -> Option<Vec<u8>> {
    let mut len = FIRST_QUERY_LEN;
    while len <= MAX_QUERY_LEN {
        let mut buf = vec![0u8; len];
        let mut returned = 0u32;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and
        // `returned` for one u32; no overlapped I/O, so both outlive the call.
        let rc = unsafe {
            WSAIoctl(
                s,
                code,
                ptr::null(),
                0,
                buf.as_mut_ptr().cast::<c_void>(),
                u32_len(buf.len()),
                &raw mut returned,
                ptr::null_mut(),
                None,
            )
        };
        if rc != SOCKET_ERROR {
            buf.truncate(usize::try_from(returned).unwrap_or(0));
            return (!buf.is_empty()).then_some(buf);
        }
        let needed = usize::try_from(returned).unwrap_or(0);
        let too_small = matches!(last_wsa_error().raw_os_error(), Some(10014 | 10040 | 10055));
        if !too_small {
            return None;
        }
        len = if needed > len { needed } else { len.saturating_mul(2) };
    }
    None
}

/// The WFP redirect calls, through Winsock.
#[derive(Debug, Default)]
pub struct WfpProvider {
    recv_msg: OnceLock<LPFN_WSARECVMSG>,
}

impl WfpProvider {
    /// A provider.
    pub fn new() -> Self {
        Self::default()
    }

    fn recv_msg(&self, s: SOCKET) -> io::Result<LPFN_WSARECVMSG> {
        if let Some(f) = self.recv_msg.get() {
            return Ok(*f);
        }
        let guid = WSAID_WSARECVMSG;
        let mut f: LPFN_WSARECVMSG = None;
        let mut returned = 0u32;
        // SAFETY: the input is the GUID (read only), the output one function
        // pointer slot of the size given; both live across the call.
        let rc = unsafe {
            WSAIoctl(
                s,
                SIO_GET_EXTENSION_FUNCTION_POINTER,
                (&raw const guid).cast::<c_void>(),
                u32_len(size_of_val(&guid)),
                (&raw mut f).cast::<c_void>(),
                u32_len(size_of::<LPFN_WSARECVMSG>()),
                &raw mut returned,
                ptr::null_mut(),
                None,
            )
        };
        if rc == SOCKET_ERROR || f.is_none() {
            return Err(last_wsa_error());
        }
        Ok(*self.recv_msg.get_or_init(|| f))
    }
}

fn set_flag(s: SOCKET, level: i32, name: i32) -> io::Result<()> {
    let on: u32 = 1;
    // SAFETY: `on` is a 4-byte value that outlives the call.
    let rc = unsafe { setsockopt(s, level, name, (&raw const on).cast::<u8>(), 4) };
    if rc == SOCKET_ERROR { Err(last_wsa_error()) } else { Ok(()) }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Reads the WFP control messages out of a WSARecvMsg control buffer.
fn parse_control(control: &[u8], redirect: &mut RawRedirect) {
    let mut at = 0usize;
    while let Some(header) = control.get(at..at.saturating_add(CMSG_HEADER_LEN)) {
        let (Some(len), Some(level), Some(kind)) = (u64_at(header, 0), i32_at(header, 8), i32_at(header, 12)) else {
            return;
        };
        let len = usize::try_from(len).unwrap_or(0);
        if len < CMSG_HEADER_LEN {
            return;
        }
        let Some(data) = control.get(at.saturating_add(CMSG_HEADER_LEN)..at.saturating_add(len)) else { return };
        let is_records = (level == IPPROTO_IP && kind == IP_WFP_REDIRECT_RECORDS)
            || (level == IPPROTO_IPV6 && kind == IPV6_WFP_REDIRECT_RECORDS);
        let is_context = (level == IPPROTO_IP && kind == IP_WFP_REDIRECT_CONTEXT)
            || (level == IPPROTO_IPV6 && kind == IPV6_WFP_REDIRECT_CONTEXT);
        if is_records {
            redirect.records = Some(data.to_vec());
        } else if is_context {
            redirect.context = Some(data.to_vec());
        }
        // Control messages are aligned to pointer size.
        at = at.saturating_add(len).saturating_add(7) & !7;
    }
}

impl RedirectProvider for WfpProvider {
    fn query_stream(&self, accepted: &TcpStream) -> io::Result<RawRedirect> {
        let s = raw(accepted);
        Ok(RawRedirect {
            records: query(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS),
            context: query(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT),
        })
    }

    fn set_records(&self, outbound: &Socket, records: &[u8]) -> io::Result<()> {
        let mut returned = 0u32;
        // SAFETY: `records` is valid for reads of its length; no output
        // buffer; no overlapped I/O.
        let rc = unsafe {
            WSAIoctl(
                raw(outbound),
                SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS,
                records.as_ptr().cast::<c_void>(),
                u32_len(records.len()),
                ptr::null_mut(),
                0,
                &raw mut returned,
                ptr::null_mut(),
                None,
            )
        };
        if rc == SOCKET_ERROR { Err(last_wsa_error()) } else { Ok(()) }
    }

    fn prepare_listener(&self, listener: &UdpSocket) -> io::Result<()> {
        let s = raw(listener);
        if listener.local_addr()?.is_ipv6() {
            set_flag(s, IPPROTO_IPV6, IPV6_WFP_REDIRECT_RECORDS)?;
            set_flag(s, IPPROTO_IPV6, IPV6_WFP_REDIRECT_CONTEXT)
        } else {
            set_flag(s, IPPROTO_IP, IP_WFP_REDIRECT_RECORDS)?;
            set_flag(s, IPPROTO_IP, IP_WFP_REDIRECT_CONTEXT)
        }
    }

    fn recv_datagram(&self, listener: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
        let s = raw(listener);
        let recv = self.recv_msg(s)?.ok_or_else(|| io::Error::other("WSARecvMsg is not available"))?;
        let mut control = vec![0u8; CONTROL_LEN];
        let mut data = WSABUF { len: u32_len(buf.len()), buf: buf.as_mut_ptr() };
        let mut received = 0u32;
        let mut storage = SockAddrStorage::zeroed();
        let mut msg = WSAMSG {
            name: (&raw mut storage).cast::<SOCKADDR>(),
            namelen: storage.size_of(),
            lpBuffers: &raw mut data,
            dwBufferCount: 1,
            Control: WSABUF { len: u32_len(control.len()), buf: control.as_mut_ptr() },
            dwFlags: 0,
        };
        // SAFETY: every pointer in `msg` (address storage, data and control
        // buffers with their lengths) and `received` outlive this synchronous call.
        let rc = unsafe { recv(s, &raw mut msg, &raw mut received, ptr::null_mut(), None) };
        if rc == SOCKET_ERROR {
            return Err(last_wsa_error());
        }
        let control_len = usize::try_from(msg.Control.len).unwrap_or(0);
        // SAFETY: WSARecvMsg wrote a sockaddr of `namelen` bytes into `storage`.
        let from = unsafe { SockAddr::new(storage, msg.namelen) };
        let from = from.as_socket().ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
        let mut redirect = RawRedirect::default();
        parse_control(control.get(..control_len).unwrap_or(&[]), &mut redirect);
        Ok(Datagram { len: usize::try_from(received).unwrap_or(0), from, redirect })
    }
}

/// The driver's control device, opened with CreateFileW.
#[derive(Debug)]
pub struct DeviceChannel {
    handle: OwnedHandle,
}

impl DeviceChannel {
    /// Opens [`arbiter::control::DEVICE_PATH`] for reading and writing: the
    /// service registers our proxy (write access) and drains the audit
    /// (read access) through this one handle. Read-only tools pass only
    /// `GENERIC_READ`.
    pub fn open() -> io::Result<Self> {
        let path: Vec<u16> = std::ffi::OsStr::new(arbiter::control::DEVICE_PATH).encode_wide().chain([0]).collect();
        // SAFETY: `path` is NUL-terminated UTF-16 that outlives the call; no
        // security attributes or template handle.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                ptr::null(),
                OPEN_EXISTING,
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE || handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: CreateFileW returned a valid handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
        Ok(Self { handle })
    }
}

impl ControlChannel for DeviceChannel {
    fn call(&mut self, ioctl: u32, request: &[u8], reply: &mut [u8]) -> io::Result<usize> {
        let mut returned = 0u32;
        let h: HANDLE = self.handle.as_raw_handle();
        // SAFETY: both buffers are valid for their lengths and outlive the
        // synchronous call (the handle was not opened for overlapped I/O).
        let ok = unsafe {
            DeviceIoControl(
                h,
                ioctl,
                request.as_ptr().cast::<c_void>(),
                u32_len(request.len()),
                reply.as_mut_ptr().cast::<c_void>(),
                u32_len(reply.len()),
                &raw mut returned,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(returned).unwrap_or(0))
    }
}
