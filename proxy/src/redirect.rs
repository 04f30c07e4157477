//! The seam between the relay and WFP: who tells us a connection's redirect
//! records and context, and who sets records on our outbound socket.
//!
//! On Windows, `windows::WfpProvider` asks Winsock
//! (SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS / _CONTEXT on the accepted
//! socket, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS on the outbound one, and
//! IP_WFP_REDIRECT_RECORDS / _CONTEXT ancillary data for UDP). Elsewhere,
//! [`LoopbackProvider`] plays WFP's part over loopback for tests and benches.
//!
//! The provider only fetches bytes; [`decode`] decides what they mean, the
//! same way on every platform.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};

use arbiter::context::{ContextError, RedirectContext};
use socket2::Socket;

/// What the platform returned for one redirected connection or flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawRedirect {
    /// The opaque redirect records (`None`: the query found none).
    pub records: Option<Vec<u8>>,
    /// The redirect context bytes (`None`: the query found none).
    pub context: Option<Vec<u8>>,
}

/// A redirected connection we can forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// To copy onto the outbound socket before connecting.
    pub records: Vec<u8>,
    /// Where the application was going, and who it is.
    pub context: RedirectContext,
}

/// Why a connection cannot be forwarded.
#[derive(Debug)]
pub enum QueryError {
    /// No redirect records: without them our outbound connection would look
    /// new to every redirector, which is how proxy loops start.
    MissingRecords,
    /// No redirect context: nothing says where the flow was going.
    MissingContext,
    /// A context that is not ours (another vendor's, or garbage).
    UnknownContext(ContextError),
    /// The platform query itself failed.
    Io(io::Error),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingRecords => f.write_str("connection carries no WFP redirect records"),
            Self::MissingContext => f.write_str("connection carries no redirect context"),
            Self::UnknownContext(e) => write!(f, "unknown redirect context: {e}"),
            Self::Io(e) => write!(f, "redirect query failed: {e}"),
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::UnknownContext(e) => Some(e),
            Self::Io(e) => Some(e),
            Self::MissingRecords | Self::MissingContext => None,
        }
    }
}

impl QueryError {
    /// A stable short name for reports.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::MissingRecords => "missing-records",
            Self::MissingContext => "missing-context",
            Self::UnknownContext(_) => "unknown-context",
            Self::Io(_) => "query-failed",
        }
    }
}

/// Decodes what the platform returned. Context first: a foreign or missing
/// context is the more specific complaint.
pub fn decode(raw: RawRedirect) -> Result<Redirect, QueryError> {
    let context = raw.context.ok_or(QueryError::MissingContext)?;
    let context = RedirectContext::decode(&context).map_err(QueryError::UnknownContext)?;
    let records = raw.records.filter(|r| !r.is_empty()).ok_or(QueryError::MissingRecords)?;
    Ok(Redirect { records, context })
}

/// One datagram received on the UDP listener, with its redirect metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes received into the caller's buffer.
    pub len: usize,
    /// The application's address.
    pub from: SocketAddr,
    /// Its redirect records and context, when the platform gave them.
    pub redirect: RawRedirect,
}

/// The platform's WFP redirect calls.
pub trait RedirectProvider: Send + Sync + 'static {
    /// Queries the redirect records and context of an accepted connection.
    fn query_stream(&self, accepted: &TcpStream) -> io::Result<RawRedirect>;
    /// Sets redirect records on an outbound socket; called before `connect`.
    fn set_records(&self, outbound: &Socket, records: &[u8]) -> io::Result<()>;
    /// Readies a UDP listener to report redirect metadata (once, at start).
    fn prepare_listener(&self, listener: &UdpSocket) -> io::Result<()> {
        let _ = listener;
        Ok(())
    }
    /// Receives one datagram on a UDP listener, with its redirect metadata.
    fn recv_datagram(&self, listener: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram>;
}

#[derive(Debug, Default)]
struct LoopbackState {
    /// What WFP would report for a connection or flow, keyed by the application's address.
    inbound: HashMap<SocketAddr, RawRedirect>,
    /// Records set on outbound sockets, keyed by the socket's local address.
    propagated: HashMap<SocketAddr, Vec<u8>>,
}

/// WFP's part, played over loopback: the test tells it what each
/// application connection "was redirected with", and it remembers which
/// records the relay set on which outbound socket, so the far end can check
/// that the records arrived with the connection.
#[derive(Clone, Debug, Default)]
pub struct LoopbackProvider {
    state: Arc<Mutex<LoopbackState>>,
}

impl LoopbackProvider {
    /// An empty provider: every connection is unknown until announced.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoopbackState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Announces what a connection from `app` carries.
    pub fn announce(&self, app: SocketAddr, redirect: RawRedirect) {
        self.state().inbound.insert(app, redirect);
    }

    /// The records the relay set on the outbound socket whose local address is `outbound`.
    pub fn propagated(&self, outbound: SocketAddr) -> Option<Vec<u8>> {
        self.state().propagated.get(&outbound).cloned()
    }

    /// How many outbound sockets got records.
    pub fn propagated_count(&self) -> usize {
        self.state().propagated.len()
    }

    fn lookup(&self, app: SocketAddr) -> RawRedirect {
        self.state().inbound.get(&app).cloned().unwrap_or_default()
    }
}

impl RedirectProvider for LoopbackProvider {
    fn query_stream(&self, accepted: &TcpStream) -> io::Result<RawRedirect> {
        Ok(self.lookup(accepted.peer_addr()?))
    }

    fn set_records(&self, outbound: &Socket, records: &[u8]) -> io::Result<()> {
        // WFP ties the records to the socket; here the socket is bound first
        // so its address can stand for it at the far end.
        // The socket's family is not queryable everywhere: try IPv4 first.
        let v4: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 0).into();
        outbound.bind(&v4.into()).or_else(|_| outbound.bind(&v6.into()))?;
        let local = outbound
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "outbound socket is not an IP socket"))?;
        self.state().propagated.insert(local, records.to_vec());
        Ok(())
    }

    fn recv_datagram(&self, listener: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
        let (len, from) = listener.recv_from(buf)?;
        Ok(Datagram { len, from, redirect: self.lookup(from) })
    }
}
