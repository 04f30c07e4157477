//! Base types shared by FWPS and FWPM: GUID, NTSTATUS, byte blobs, the tagged
//! `FWP_VALUE0`, and the Winsock socket address structures.
//!
//! Checked against (x86_64):
//! - `FWP_VALUE0`: learn.microsoft.com/windows/win32/api/fwptypes/ns-fwptypes-fwp_value0
//!   (the 64-bit and `double64` members are *pointers*, not inline values).
//! - `FWP_DATA_TYPE`: learn.microsoft.com/windows/win32/api/fwptypes/ne-fwptypes-fwp_data_type
//! - `FWP_BYTE_BLOB`, `FWP_BYTE_ARRAY16`: fwptypes.h, as used by the two pages above.
//! - `SOCKADDR_IN`, `SOCKADDR_IN6`, `SOCKADDR_STORAGE`, `SOCKADDR_INET`: ws2def.h /
//!   ws2ipdef.h (`SOCKADDR_STORAGE` is 128 bytes, 8-aligned).

use core::ffi::c_void;

/// `NTSTATUS`: negative values are errors.
pub type NTSTATUS = i32;
/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `HANDLE`.
pub type HANDLE = *mut c_void;

/// `NT_SUCCESS(status)`.
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// `GUID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GUID {
    /// First 32 bits.
    pub Data1: u32,
    /// Next 16 bits.
    pub Data2: u16,
    /// Next 16 bits.
    pub Data3: u16,
    /// Last 64 bits, in byte order.
    pub Data4: [u8; 8],
}

impl GUID {
    /// Builds a GUID from its registry-format parts.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        Self { Data1: d1, Data2: d2, Data3: d3, Data4: d4 }
    }
}

/// `FWP_DATA_TYPE` (an enum in C; kept open because the kernel may use values we do not know).
pub type FWP_DATA_TYPE = u32;
/// No data.
pub const FWP_EMPTY: FWP_DATA_TYPE = 0;
/// `uint8`.
pub const FWP_UINT8: FWP_DATA_TYPE = 1;
/// `uint16`.
pub const FWP_UINT16: FWP_DATA_TYPE = 2;
/// `uint32`.
pub const FWP_UINT32: FWP_DATA_TYPE = 3;
/// `*uint64`.
pub const FWP_UINT64: FWP_DATA_TYPE = 4;
/// `int8`.
pub const FWP_INT8: FWP_DATA_TYPE = 5;
/// `int16`.
pub const FWP_INT16: FWP_DATA_TYPE = 6;
/// `int32`.
pub const FWP_INT32: FWP_DATA_TYPE = 7;
/// `*int64`.
pub const FWP_INT64: FWP_DATA_TYPE = 8;
/// `float32`.
pub const FWP_FLOAT: FWP_DATA_TYPE = 9;
/// `*double64`.
pub const FWP_DOUBLE: FWP_DATA_TYPE = 10;
/// `*byteArray16`.
pub const FWP_BYTE_ARRAY16_TYPE: FWP_DATA_TYPE = 11;
/// `*byteBlob`.
pub const FWP_BYTE_BLOB_TYPE: FWP_DATA_TYPE = 12;
/// `*sid`.
pub const FWP_SID: FWP_DATA_TYPE = 13;
/// `*sd`.
pub const FWP_SECURITY_DESCRIPTOR_TYPE: FWP_DATA_TYPE = 14;
/// `*tokenInformation`.
pub const FWP_TOKEN_INFORMATION_TYPE: FWP_DATA_TYPE = 15;
/// `*tokenAccessInformation`.
pub const FWP_TOKEN_ACCESS_INFORMATION_TYPE: FWP_DATA_TYPE = 16;
/// `unicodeString`.
pub const FWP_UNICODE_STRING_TYPE: FWP_DATA_TYPE = 17;
/// `*byteArray6`.
pub const FWP_BYTE_ARRAY6_TYPE: FWP_DATA_TYPE = 18;

/// `FWP_BYTE_BLOB`: a length and a pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWP_BYTE_BLOB {
    /// Bytes at `data`.
    pub size: u32,
    /// The bytes.
    pub data: *mut u8,
}

/// `FWP_BYTE_ARRAY16`: an IPv6 address at the ALE layers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FWP_BYTE_ARRAY16 {
    /// The 16 bytes, network order.
    pub byteArray16: [u8; 16],
}

/// `FWP_BYTE_ARRAY6`: a MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FWP_BYTE_ARRAY6 {
    /// The 6 bytes.
    pub byteArray6: [u8; 6],
}

/// The union of `FWP_VALUE0`, selected by `type`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union FWP_VALUE0_u {
    /// `FWP_UINT8`.
    pub uint8: u8,
    /// `FWP_UINT16`.
    pub uint16: u16,
    /// `FWP_UINT32`.
    pub uint32: u32,
    /// `FWP_UINT64`: a pointer, not the value.
    pub uint64: *mut u64,
    /// `FWP_INT8`.
    pub int8: i8,
    /// `FWP_INT16`.
    pub int16: i16,
    /// `FWP_INT32`.
    pub int32: i32,
    /// `FWP_INT64`: a pointer, not the value.
    pub int64: *mut i64,
    /// `FWP_FLOAT`.
    pub float32: f32,
    /// `FWP_DOUBLE`: a pointer, not the value.
    pub double64: *mut f64,
    /// `FWP_BYTE_ARRAY16_TYPE`.
    pub byteArray16: *mut FWP_BYTE_ARRAY16,
    /// `FWP_BYTE_BLOB_TYPE`.
    pub byteBlob: *mut FWP_BYTE_BLOB,
    /// `FWP_SID`: a binary SID.
    pub sid: *mut c_void,
    /// `FWP_SECURITY_DESCRIPTOR_TYPE`.
    pub sd: *mut FWP_BYTE_BLOB,
    /// `FWP_TOKEN_INFORMATION_TYPE`.
    pub tokenInformation: *mut c_void,
    /// `FWP_TOKEN_ACCESS_INFORMATION_TYPE`.
    pub tokenAccessInformation: *mut FWP_BYTE_BLOB,
    /// `FWP_UNICODE_STRING_TYPE`: NUL-terminated UTF-16.
    pub unicodeString: *mut u16,
    /// `FWP_BYTE_ARRAY6_TYPE`.
    pub byteArray6: *mut FWP_BYTE_ARRAY6,
}

/// `FWP_VALUE0`: a tagged value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FWP_VALUE0 {
    /// Which union member is valid.
    pub r#type: FWP_DATA_TYPE,
    /// The value.
    pub u: FWP_VALUE0_u,
}

impl FWP_VALUE0 {
    /// An `FWP_EMPTY` value.
    pub const EMPTY: Self = Self { r#type: FWP_EMPTY, u: FWP_VALUE0_u { uint64: core::ptr::null_mut() } };
}

impl core::fmt::Debug for FWP_VALUE0 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FWP_VALUE0").field("type", &self.r#type).finish_non_exhaustive()
    }
}

/// `FWP_CONDITION_VALUE0` has the layout of `FWP_VALUE0` plus range/mask
/// pointer members; the union keeps its size (pointer-sized), so the value
/// form is shared.
pub type FWP_CONDITION_VALUE0 = FWP_VALUE0;

/// `ADDRESS_FAMILY`.
pub type ADDRESS_FAMILY = u16;
/// `AF_INET`.
pub const AF_INET: ADDRESS_FAMILY = 2;
/// `AF_INET6` (23 on Windows).
pub const AF_INET6: ADDRESS_FAMILY = 23;

/// `SOCKADDR`: the family-tagged header every socket address starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR {
    /// Address family.
    pub sa_family: ADDRESS_FAMILY,
    /// Family-specific bytes.
    pub sa_data: [u8; 14],
}

/// `SOCKADDR_IN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR_IN {
    /// `AF_INET`.
    pub sin_family: ADDRESS_FAMILY,
    /// Port, network byte order.
    pub sin_port: u16,
    /// Address, network byte order.
    pub sin_addr: [u8; 4],
    /// Zero.
    pub sin_zero: [u8; 8],
}

/// `SOCKADDR_IN6` (`SOCKADDR_IN6_LH`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SOCKADDR_IN6 {
    /// `AF_INET6`.
    pub sin6_family: ADDRESS_FAMILY,
    /// Port, network byte order.
    pub sin6_port: u16,
    /// Flow information.
    pub sin6_flowinfo: u32,
    /// Address, network byte order.
    pub sin6_addr: [u8; 16],
    /// Scope id (`SCOPE_ID.Value`).
    pub sin6_scope_id: u32,
}

/// `SOCKADDR_STORAGE`: large enough for any address, 8-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SOCKADDR_STORAGE {
    /// Address family.
    pub ss_family: ADDRESS_FAMILY,
    /// Padding up to `__ss_align`.
    pub __ss_pad1: [u8; 6],
    /// Forces 8-byte alignment.
    pub __ss_align: i64,
    /// The rest.
    pub __ss_pad2: [u8; 112],
}

impl SOCKADDR_STORAGE {
    /// All zero (`ss_family` 0 = `AF_UNSPEC`).
    pub const ZERO: Self = Self { ss_family: 0, __ss_pad1: [0; 6], __ss_align: 0, __ss_pad2: [0; 112] };
}

impl Default for SOCKADDR_STORAGE {
    fn default() -> Self {
        Self::ZERO
    }
}

/// `SOCKADDR_INET`: either family, discriminated by the family field.
#[repr(C)]
#[derive(Clone, Copy)]
pub union SOCKADDR_INET {
    /// IPv4.
    pub Ipv4: SOCKADDR_IN,
    /// IPv6.
    pub Ipv6: SOCKADDR_IN6,
    /// The common family field.
    pub si_family: ADDRESS_FAMILY,
}

/// `SCOPE_ID`: a 28-bit zone and 4-bit level, read as its `Value`.
pub type SCOPE_ID = u32;

/// `IP_ADDRESS_PREFIX`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IP_ADDRESS_PREFIX {
    /// The prefix address.
    pub Prefix: SOCKADDR_INET,
    /// Prefix length in bits.
    pub PrefixLength: u8,
}

#[cfg(target_arch = "x86_64")]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GUID>() == 16);
    assert!(offset_of!(GUID, Data4) == 8);
    assert!(size_of::<FWP_BYTE_BLOB>() == 16);
    assert!(offset_of!(FWP_BYTE_BLOB, data) == 8);
    assert!(size_of::<FWP_BYTE_ARRAY16>() == 16);
    // fwptypes.h FWP_VALUE0: 4-byte tag, padded, then a pointer-sized union.
    assert!(size_of::<FWP_VALUE0_u>() == 8);
    assert!(size_of::<FWP_VALUE0>() == 16);
    assert!(offset_of!(FWP_VALUE0, u) == 8);
    assert!(size_of::<SOCKADDR>() == 16);
    assert!(size_of::<SOCKADDR_IN>() == 16);
    assert!(offset_of!(SOCKADDR_IN, sin_port) == 2);
    assert!(offset_of!(SOCKADDR_IN, sin_addr) == 4);
    assert!(size_of::<SOCKADDR_IN6>() == 28);
    assert!(offset_of!(SOCKADDR_IN6, sin6_addr) == 8);
    assert!(offset_of!(SOCKADDR_IN6, sin6_scope_id) == 24);
    assert!(size_of::<SOCKADDR_STORAGE>() == 128);
    assert!(align_of::<SOCKADDR_STORAGE>() == 8);
    assert!(size_of::<SOCKADDR_INET>() == 28);
    assert!(size_of::<IP_ADDRESS_PREFIX>() == 32);
    assert!(offset_of!(IP_ADDRESS_PREFIX, PrefixLength) == 28);
};
