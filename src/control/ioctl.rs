//! The control device: its names, its IOCTL codes and the access each needs.
//!
//! Every op has its own code ([`super::Op::ioctl`]), built like the WDK's
//! `CTL_CODE` macro: device type in bits 16..32, required access in bits
//! 14..16, function in bits 2..14, transfer method in bits 0..2. All use
//! METHOD_BUFFERED. The required access is what the I/O manager checks
//! against the handle before it dispatches the IRP ("Defining I/O Control
//! Codes": `FILE_READ_ACCESS` needs a handle opened with `FILE_READ_DATA`,
//! `FILE_WRITE_ACCESS` one opened with `FILE_WRITE_DATA`):
//!
//! | op | function | access | code |
//! |---|---|---|---|
//! | hello | 0x901 | `FILE_READ_ACCESS` | `0x8A7B6404` |
//! | set-rules | 0x902 | `FILE_WRITE_ACCESS` | `0x8A7BA408` |
//! | register-proxy | 0x903 | `FILE_WRITE_ACCESS` | `0x8A7BA40C` |
//! | unregister-proxy | 0x904 | `FILE_WRITE_ACCESS` | `0x8A7BA410` |
//! | drain-audit | 0x905 | `FILE_READ_ACCESS` | `0x8A7B6414` |
//! | read-counters | 0x906 | `FILE_READ_ACCESS` | `0x8A7B6418` |
//! | read-driver-counters | 0x907 | `FILE_READ_ACCESS` | `0x8A7B641C` |
//!
//! The table is checked by a test.

/// The control device's NT name (the driver creates it).
pub const DEVICE_NAME: &str = r"\Device\ArbiterControl";
/// Its DOS symbolic link (the driver creates it).
pub const DEVICE_LINK: &str = r"\DosDevices\ArbiterControl";
/// The path user mode opens with CreateFileW.
pub const DEVICE_PATH: &str = r"\\.\ArbiterControl";
/// Vendor device type (0x8000 and above are for vendors).
pub const FILE_DEVICE_ARBITER: u32 = 0x8A7B;
/// `METHOD_BUFFERED`: the I/O manager copies both buffers through one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_READ_ACCESS` (= `FILE_READ_DATA`) in an IOCTL code, and `FILE_READ_DATA` in an access mask.
pub const FILE_READ_ACCESS: u32 = 0x0001;
/// `FILE_WRITE_ACCESS` (= `FILE_WRITE_DATA`) in an IOCTL code, and `FILE_WRITE_DATA` in an access mask.
pub const FILE_WRITE_ACCESS: u32 = 0x0002;
/// `GENERIC_READ` (mapped to `FILE_GENERIC_READ`, which includes `FILE_READ_DATA`).
pub const GENERIC_READ: u32 = 0x8000_0000;
/// `GENERIC_WRITE` (mapped to `FILE_GENERIC_WRITE`, which includes `FILE_WRITE_DATA`).
pub const GENERIC_WRITE: u32 = 0x4000_0000;
/// `GENERIC_ALL`.
pub const GENERIC_ALL: u32 = 0x1000_0000;

/// The WDK's `CTL_CODE(device, function, METHOD_BUFFERED, access)`.
pub const fn ctl_code(device: u32, function: u32, access: Access) -> u32 {
    (device << 16) | (access.bits() << 14) | (function << 2) | METHOD_BUFFERED
}

/// The access a handle was granted (read, write, both or neither), as far
/// as the control device cares. The driver fills it from the access mask
/// granted when the handle was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access(u32);

impl Access {
    /// Neither.
    pub const NONE: Self = Self(0);
    /// Read: hello, counters, audit drain.
    pub const READ: Self = Self(FILE_READ_ACCESS);
    /// Write: rules swap, proxy registration.
    pub const WRITE: Self = Self(FILE_WRITE_ACCESS);
    /// Both.
    pub const READ_WRITE: Self = Self(FILE_READ_ACCESS | FILE_WRITE_ACCESS);

    /// From an `ACCESS_MASK` granted on a handle: `FILE_READ_DATA` or
    /// `GENERIC_READ` give read, `FILE_WRITE_DATA` or `GENERIC_WRITE` give
    /// write, `GENERIC_ALL` gives both. Every other bit is ignored.
    pub const fn from_access_mask(mask: u32) -> Self {
        let read = mask & (FILE_READ_ACCESS | GENERIC_READ | GENERIC_ALL) != 0;
        let write = mask & (FILE_WRITE_ACCESS | GENERIC_WRITE | GENERIC_ALL) != 0;
        Self(if read { FILE_READ_ACCESS } else { 0 } | if write { FILE_WRITE_ACCESS } else { 0 })
    }

    /// The two CTL_CODE access bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Read granted.
    pub const fn read(self) -> bool {
        self.0 & FILE_READ_ACCESS != 0
    }

    /// Write granted.
    pub const fn write(self) -> bool {
        self.0 & FILE_WRITE_ACCESS != 0
    }

    /// Every bit of `need` is granted here.
    pub const fn allows(self, need: Self) -> bool {
        self.0 & need.0 == need.0
    }
}
