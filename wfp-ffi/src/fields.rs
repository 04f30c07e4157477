//! Incoming-value indexes, one table per layer.
//!
//! The same field sits at a different index on each layer (IP_REMOTE_PORT is
//! 8 at ALE_CONNECT_REDIRECT, 7 at ALE_AUTH_CONNECT; FLAGS is 9, 12 and 9;
//! ALE_ORIGINAL_APP_ID is 10 and 32 and absent at ALE_ENDPOINT_CLOSURE), so
//! each layer gets its own module and no index is ever shared. Values are the
//! enum positions in Microsoft's pages (fwpsk.h, Windows 10 1703+):
//!
//! - learn.microsoft.com/windows-hardware/drivers/ddi/fwpsk/ne-fwpsk-fwps_fields_ale_connect_redirect_v4_ (and `_v6_`)
//! - learn.microsoft.com/windows-hardware/drivers/ddi/fwpsk/ne-fwpsk-fwps_fields_ale_auth_connect_v4_ (and `_v6_`)
//! - learn.microsoft.com/windows-hardware/drivers/ddi/fwpsk/ne-fwpsk-fwps_fields_ale_endpoint_closure_v4_ (and `_v6_`)
//!
//! The V4 and V6 enums of each layer list the same members in the same
//! order; they are still declared separately so a reader can check each
//! against its own page.

/// Declares one layer's field enum as `usize` constants, asserting the
/// positions are dense so a skipped member would not compile.
macro_rules! field_enum {
    ($(#[$doc:meta])* $name:ident { $($field:ident = $value:expr,)* @max $max:expr }) => {
        $(#[$doc])*
        pub mod $name {
            $(
                #[doc = concat!("`FWPS_FIELD_", stringify!($name), "_", stringify!($field), "`.")]
                pub const $field: usize = $value;
            )*
            /// `..._MAX`: the number of incoming values at this layer on the newest Windows.
            pub const MAX: usize = $max;
            const _: () = {
                let all = [$($value),*];
                let mut i = 0;
                while i < all.len() {
                    assert!(all[i] == i, "field positions must be dense");
                    i += 1;
                }
                assert!(all.len() == MAX);
            };
        }
    };
}

field_enum! {
    /// `FWPS_FIELDS_ALE_CONNECT_REDIRECT_V4`.
    ALE_CONNECT_REDIRECT_V4 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_DESTINATION_ADDRESS_TYPE = 7,
        IP_REMOTE_PORT = 8,
        FLAGS = 9,
        ALE_ORIGINAL_APP_ID = 10,
        ALE_PACKAGE_ID = 11,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 12,
        COMPARTMENT_ID = 13,
        @max 14
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_CONNECT_REDIRECT_V6`.
    ALE_CONNECT_REDIRECT_V6 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_DESTINATION_ADDRESS_TYPE = 7,
        IP_REMOTE_PORT = 8,
        FLAGS = 9,
        ALE_ORIGINAL_APP_ID = 10,
        ALE_PACKAGE_ID = 11,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 12,
        COMPARTMENT_ID = 13,
        @max 14
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_AUTH_CONNECT_V4`.
    ALE_AUTH_CONNECT_V4 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_REMOTE_PORT = 7,
        ALE_REMOTE_USER_ID = 8,
        ALE_REMOTE_MACHINE_ID = 9,
        IP_DESTINATION_ADDRESS_TYPE = 10,
        IP_LOCAL_INTERFACE = 11,
        FLAGS = 12,
        INTERFACE_TYPE = 13,
        TUNNEL_TYPE = 14,
        INTERFACE_INDEX = 15,
        SUB_INTERFACE_INDEX = 16,
        IP_ARRIVAL_INTERFACE = 17,
        ARRIVAL_INTERFACE_TYPE = 18,
        ARRIVAL_TUNNEL_TYPE = 19,
        ARRIVAL_INTERFACE_INDEX = 20,
        NEXTHOP_SUB_INTERFACE_INDEX = 21,
        IP_NEXTHOP_INTERFACE = 22,
        NEXTHOP_INTERFACE_TYPE = 23,
        NEXTHOP_TUNNEL_TYPE = 24,
        NEXTHOP_INTERFACE_INDEX = 25,
        ORIGINAL_PROFILE_ID = 26,
        CURRENT_PROFILE_ID = 27,
        REAUTHORIZE_REASON = 28,
        PEER_NAME = 29,
        ORIGINAL_ICMP_TYPE = 30,
        INTERFACE_QUARANTINE_EPOCH = 31,
        ALE_ORIGINAL_APP_ID = 32,
        ALE_PACKAGE_ID = 33,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 34,
        ALE_EFFECTIVE_NAME = 35,
        COMPARTMENT_ID = 36,
        BITMAP_IP_LOCAL_ADDRESS = 37,
        BITMAP_IP_LOCAL_PORT = 38,
        BITMAP_IP_REMOTE_ADDRESS = 39,
        BITMAP_IP_REMOTE_PORT = 40,
        @max 41
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_AUTH_CONNECT_V6`.
    ALE_AUTH_CONNECT_V6 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_REMOTE_PORT = 7,
        ALE_REMOTE_USER_ID = 8,
        ALE_REMOTE_MACHINE_ID = 9,
        IP_DESTINATION_ADDRESS_TYPE = 10,
        IP_LOCAL_INTERFACE = 11,
        FLAGS = 12,
        INTERFACE_TYPE = 13,
        TUNNEL_TYPE = 14,
        INTERFACE_INDEX = 15,
        SUB_INTERFACE_INDEX = 16,
        IP_ARRIVAL_INTERFACE = 17,
        ARRIVAL_INTERFACE_TYPE = 18,
        ARRIVAL_TUNNEL_TYPE = 19,
        ARRIVAL_INTERFACE_INDEX = 20,
        NEXTHOP_SUB_INTERFACE_INDEX = 21,
        IP_NEXTHOP_INTERFACE = 22,
        NEXTHOP_INTERFACE_TYPE = 23,
        NEXTHOP_TUNNEL_TYPE = 24,
        NEXTHOP_INTERFACE_INDEX = 25,
        ORIGINAL_PROFILE_ID = 26,
        CURRENT_PROFILE_ID = 27,
        REAUTHORIZE_REASON = 28,
        PEER_NAME = 29,
        ORIGINAL_ICMP_TYPE = 30,
        INTERFACE_QUARANTINE_EPOCH = 31,
        ALE_ORIGINAL_APP_ID = 32,
        ALE_PACKAGE_ID = 33,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 34,
        ALE_EFFECTIVE_NAME = 35,
        COMPARTMENT_ID = 36,
        BITMAP_IP_LOCAL_ADDRESS = 37,
        BITMAP_IP_LOCAL_PORT = 38,
        BITMAP_IP_REMOTE_ADDRESS = 39,
        BITMAP_IP_REMOTE_PORT = 40,
        @max 41
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_ENDPOINT_CLOSURE_V4`.
    ALE_ENDPOINT_CLOSURE_V4 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_REMOTE_PORT = 7,
        IP_LOCAL_INTERFACE = 8,
        FLAGS = 9,
        ALE_PACKAGE_ID = 10,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 11,
        COMPARTMENT_ID = 12,
        @max 13
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_ENDPOINT_CLOSURE_V6`.
    ALE_ENDPOINT_CLOSURE_V6 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        IP_REMOTE_ADDRESS = 6,
        IP_REMOTE_PORT = 7,
        IP_LOCAL_INTERFACE = 8,
        FLAGS = 9,
        ALE_PACKAGE_ID = 10,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 11,
        COMPARTMENT_ID = 12,
        @max 13
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_BIND_REDIRECT_V4`
    /// (learn.microsoft.com/windows-hardware/drivers/ddi/fwpsk/ne-fwpsk-fwps_fields_ale_bind_redirect_v4_):
    /// no remote address or port, the socket is not connected yet.
    ALE_BIND_REDIRECT_V4 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        FLAGS = 6,
        ALE_PACKAGE_ID = 7,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 8,
        COMPARTMENT_ID = 9,
        @max 10
    }
}

field_enum! {
    /// `FWPS_FIELDS_ALE_BIND_REDIRECT_V6`
    /// (learn.microsoft.com/windows-hardware/drivers/ddi/fwpsk/ne-fwpsk-fwps_fields_ale_bind_redirect_v6_):
    /// no remote address or port, the socket is not connected yet.
    ALE_BIND_REDIRECT_V6 {
        ALE_APP_ID = 0,
        ALE_USER_ID = 1,
        IP_LOCAL_ADDRESS = 2,
        IP_LOCAL_ADDRESS_TYPE = 3,
        IP_LOCAL_PORT = 4,
        IP_PROTOCOL = 5,
        FLAGS = 6,
        ALE_PACKAGE_ID = 7,
        ALE_SECURITY_ATTRIBUTE_FQBN_VALUE = 8,
        COMPARTMENT_ID = 9,
        @max 10
    }
}

// The traps anchors.md names, pinned.
const _: () = {
    assert!(ALE_CONNECT_REDIRECT_V4::IP_REMOTE_PORT == 8);
    assert!(ALE_AUTH_CONNECT_V4::IP_REMOTE_PORT == 7);
    assert!(ALE_ENDPOINT_CLOSURE_V4::IP_REMOTE_PORT == 7);
    assert!(ALE_CONNECT_REDIRECT_V4::FLAGS == 9);
    assert!(ALE_AUTH_CONNECT_V4::FLAGS == 12);
    assert!(ALE_ENDPOINT_CLOSURE_V4::FLAGS == 9);
    assert!(ALE_CONNECT_REDIRECT_V4::ALE_ORIGINAL_APP_ID == 10);
    assert!(ALE_AUTH_CONNECT_V4::ALE_ORIGINAL_APP_ID == 32);
    assert!(ALE_CONNECT_REDIRECT_V4::ALE_PACKAGE_ID == 11);
    assert!(ALE_AUTH_CONNECT_V4::ALE_PACKAGE_ID == 33);
    assert!(ALE_ENDPOINT_CLOSURE_V4::ALE_PACKAGE_ID == 10);
};
