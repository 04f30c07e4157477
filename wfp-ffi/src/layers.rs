//! Filtering layer and sublayer GUIDs (`FWPM_LAYER_*`), from the Windows SDK
//! metadata for fwpmu.h/fwpmk.h ("Filtering Layer Identifiers" page).

use crate::types::GUID;

/// `FWPM_LAYER_ALE_CONNECT_REDIRECT_V4` {c6e63c8c-b784-4562-aa7d-0a67cfcaf9a3}.
pub const FWPM_LAYER_ALE_CONNECT_REDIRECT_V4: GUID =
    GUID::new(0xc6e6_3c8c, 0xb784, 0x4562, [0xaa, 0x7d, 0x0a, 0x67, 0xcf, 0xca, 0xf9, 0xa3]);
/// `FWPM_LAYER_ALE_CONNECT_REDIRECT_V6` {587e54a7-8046-42ba-a0aa-b716250fc7fd}.
pub const FWPM_LAYER_ALE_CONNECT_REDIRECT_V6: GUID =
    GUID::new(0x587e_54a7, 0x8046, 0x42ba, [0xa0, 0xaa, 0xb7, 0x16, 0x25, 0x0f, 0xc7, 0xfd]);
/// `FWPM_LAYER_ALE_AUTH_CONNECT_V4` {c38d57d1-05a7-4c33-904f-7fbceee60e82}.
pub const FWPM_LAYER_ALE_AUTH_CONNECT_V4: GUID =
    GUID::new(0xc38d_57d1, 0x05a7, 0x4c33, [0x90, 0x4f, 0x7f, 0xbc, 0xee, 0xe6, 0x0e, 0x82]);
/// `FWPM_LAYER_ALE_AUTH_CONNECT_V6` {4a72393b-319f-44bc-84c3-ba54dcb3b6b4}.
pub const FWPM_LAYER_ALE_AUTH_CONNECT_V6: GUID =
    GUID::new(0x4a72_393b, 0x319f, 0x44bc, [0x84, 0xc3, 0xba, 0x54, 0xdc, 0xb3, 0xb6, 0xb4]);
/// `FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4` {b4766427-e2a2-467a-bd7e-dbcd1bd85a09}.
pub const FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4: GUID =
    GUID::new(0xb476_6427, 0xe2a2, 0x467a, [0xbd, 0x7e, 0xdb, 0xcd, 0x1b, 0xd8, 0x5a, 0x09]);
/// `FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6` {bb536ccd-4755-4ba9-9ff7-f9edf8699c7b}.
pub const FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6: GUID =
    GUID::new(0xbb53_6ccd, 0x4755, 0x4ba9, [0x9f, 0xf7, 0xf9, 0xed, 0xf8, 0x69, 0x9c, 0x7b]);
/// `FWPM_LAYER_ALE_BIND_REDIRECT_V4` {66978cad-c704-42ac-86ac-7c1a231bd253}.
pub const FWPM_LAYER_ALE_BIND_REDIRECT_V4: GUID =
    GUID::new(0x6697_8cad, 0xc704, 0x42ac, [0x86, 0xac, 0x7c, 0x1a, 0x23, 0x1b, 0xd2, 0x53]);
/// `FWPM_LAYER_ALE_BIND_REDIRECT_V6` {bef02c9c-606b-4536-8c26-1c2fc7b631d4}.
pub const FWPM_LAYER_ALE_BIND_REDIRECT_V6: GUID =
    GUID::new(0xbef0_2c9c, 0x606b, 0x4536, [0x8c, 0x26, 0x1c, 0x2f, 0xc7, 0xb6, 0x31, 0xd4]);
