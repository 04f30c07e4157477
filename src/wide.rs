//! Owned UTF-16LE strings, for the host tools and tests that build inputs
//! from text (fixtures, the lab). The kernel never needs these: there, app
//! ids borrow WFP's own buffers.

use alloc::vec::Vec;
use core::fmt;

use crate::flow::AppId;

/// An app id owned as UTF-16LE bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct WideString(Vec<u8>);

impl WideString {
    /// Encodes `s` (no terminator).
    pub fn new(s: &str) -> Self {
        Self(s.encode_utf16().flat_map(u16::to_le_bytes).collect())
    }

    /// Borrows it as an [`AppId`].
    pub fn app_id(&self) -> AppId<'_> {
        AppId::from_utf16le(&self.0)
    }

    /// Copies a borrowed app id.
    pub fn from_app_id(id: &AppId<'_>) -> Self {
        Self(id.as_bytes().to_vec())
    }
}

impl From<&str> for WideString {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for WideString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.app_id(), f)
    }
}

impl fmt::Display for WideString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.app_id(), f)
    }
}
