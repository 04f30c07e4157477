//! The WFP objects netsh describes, as read from its XML: providers,
//! sublayers, callouts, filters and netEvents. Field names follow FWPM_*0
//! (fwpmtypes.h) as netsh prints them; a missing field stays `None`, and a
//! field that is present but unreadable is an error naming its position.

use core::fmt;
use core::net::{IpAddr, SocketAddr};

use crate::xml::{Node, XmlError};

/// The layers this tool inventories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// FWPM_LAYER_ALE_CONNECT_REDIRECT_V*.
    ConnectRedirect,
    /// FWPM_LAYER_ALE_BIND_REDIRECT_V*.
    BindRedirect,
    /// FWPM_LAYER_ALE_AUTH_CONNECT_V*.
    AuthConnect,
}

/// One inventoried layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layer {
    /// Which.
    pub kind: LayerKind,
    /// The IPv6 layer (else IPv4).
    pub v6: bool,
}

impl Layer {
    /// Every inventoried layer, in report order.
    pub const ALL: [Self; 6] = [
        Self { kind: LayerKind::ConnectRedirect, v6: false },
        Self { kind: LayerKind::ConnectRedirect, v6: true },
        Self { kind: LayerKind::BindRedirect, v6: false },
        Self { kind: LayerKind::BindRedirect, v6: true },
        Self { kind: LayerKind::AuthConnect, v6: false },
        Self { kind: LayerKind::AuthConnect, v6: true },
    ];

    /// The FWPM_LAYER_* symbol netsh prints.
    pub const fn symbol(self) -> &'static str {
        match (self.kind, self.v6) {
            (LayerKind::ConnectRedirect, false) => "FWPM_LAYER_ALE_CONNECT_REDIRECT_V4",
            (LayerKind::ConnectRedirect, true) => "FWPM_LAYER_ALE_CONNECT_REDIRECT_V6",
            (LayerKind::BindRedirect, false) => "FWPM_LAYER_ALE_BIND_REDIRECT_V4",
            (LayerKind::BindRedirect, true) => "FWPM_LAYER_ALE_BIND_REDIRECT_V6",
            (LayerKind::AuthConnect, false) => "FWPM_LAYER_ALE_AUTH_CONNECT_V4",
            (LayerKind::AuthConnect, true) => "FWPM_LAYER_ALE_AUTH_CONNECT_V6",
        }
    }

    /// Short name (`connect-redirect/v4`, ...).
    pub fn short(self) -> String {
        let k = match self.kind {
            LayerKind::ConnectRedirect => "connect-redirect",
            LayerKind::BindRedirect => "bind-redirect",
            LayerKind::AuthConnect => "auth-connect",
        };
        format!("{k}/{}", if self.v6 { "v6" } else { "v4" })
    }

    /// From the FWPM_LAYER_* symbol.
    pub fn from_symbol(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.symbol() == s)
    }

    /// From the run-time layer id netEvents carry (FWPS_BUILTIN_LAYERS; the
    /// numbers a real `netsh wfp show state` lists against each layerKey).
    pub const fn from_runtime_id(id: u64) -> Option<Self> {
        let (kind, v6) = match id {
            48 => (LayerKind::AuthConnect, false),
            50 => (LayerKind::AuthConnect, true),
            66 => (LayerKind::ConnectRedirect, false),
            67 => (LayerKind::ConnectRedirect, true),
            68 => (LayerKind::BindRedirect, false),
            69 => (LayerKind::BindRedirect, true),
            _ => return None,
        };
        Some(Self { kind, v6 })
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// A filter's weight as added (FWPM_FILTER0.weight; "Filter Weight Assignment").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// FWP_EMPTY: BFE chose it.
    Empty,
    /// FWP_UINT8: a range 0..15 for the top 4 bits.
    Range(u8),
    /// FWP_UINT64: used as is.
    Exact(u64),
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty"),
            Self::Range(r) => write!(f, "range {r}"),
            Self::Exact(w) => write!(f, "{w}"),
        }
    }
}

/// A provider (FWPM_PROVIDER0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// providerKey (a GUID or a FWPM_PROVIDER_* symbol).
    pub key: String,
    /// displayData.name.
    pub name: String,
    /// displayData.description.
    pub description: String,
    /// FWPM_PROVIDER_FLAG_PERSISTENT.
    pub persistent: bool,
    /// serviceName.
    pub service: Option<String>,
}

/// A sublayer (FWPM_SUBLAYER0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sublayer {
    /// subLayerKey.
    pub key: String,
    /// displayData.name.
    pub name: String,
    /// providerKey.
    pub provider: Option<String>,
    /// weight.
    pub weight: u16,
    /// FWPM_SUBLAYER_FLAG_PERSISTENT.
    pub persistent: bool,
}

/// A callout (FWPM_CALLOUT0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    /// calloutKey.
    pub key: String,
    /// displayData.name.
    pub name: String,
    /// providerKey.
    pub provider: Option<String>,
    /// applicableLayer.
    pub layer: String,
    /// calloutId.
    pub id: Option<u64>,
    /// FWPM_CALLOUT_FLAG_REGISTERED: the driver is loaded.
    pub registered: bool,
    /// FWPM_CALLOUT_FLAG_PERSISTENT.
    pub persistent: bool,
}

/// A filter (FWPM_FILTER0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// filterKey.
    pub key: String,
    /// filterId.
    pub id: u64,
    /// displayData.name.
    pub name: String,
    /// Flag symbols as netsh prints them.
    pub flags: Vec<String>,
    /// providerKey.
    pub provider: Option<String>,
    /// layerKey.
    pub layer: String,
    /// subLayerKey.
    pub sublayer: String,
    /// weight.
    pub weight: Weight,
    /// effectiveWeight (what BFE sorts by inside the sublayer).
    pub effective_weight: Option<u64>,
    /// action.type.
    pub action: String,
    /// action.calloutKey (netsh prints it as `filterType`).
    pub callout: Option<String>,
    /// Conditions, one line each (`FWPM_CONDITION_IP_PROTOCOL = 6`).
    pub conditions: Vec<String>,
    /// Where the filter's `<item>` starts in its file.
    pub origin: String,
}

impl Filter {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT: a hard permit or block.
    pub fn clears_action_right(&self) -> bool {
        self.has("FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT")
    }

    /// FWPM_FILTER_FLAG_PERSISTENT.
    pub fn persistent(&self) -> bool {
        self.has("FWPM_FILTER_FLAG_PERSISTENT")
    }

    /// FWPM_FILTER_FLAG_BOOTTIME.
    pub fn boot_time(&self) -> bool {
        self.has("FWPM_FILTER_FLAG_BOOTTIME")
    }

    /// FWPM_FILTER_FLAG_DISABLED.
    pub fn disabled(&self) -> bool {
        self.has("FWPM_FILTER_FLAG_DISABLED")
    }

    /// FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED.
    pub fn permit_if_unregistered(&self) -> bool {
        self.has("FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED")
    }

    /// The action calls a callout.
    pub fn is_callout(&self) -> bool {
        self.action.starts_with("FWP_ACTION_CALLOUT_")
    }

    /// The inventoried layer, if it is one.
    pub fn layer(&self) -> Option<Layer> {
        Layer::from_symbol(&self.layer)
    }

    /// Short action name (`callout-terminating`, `permit`, ...).
    pub fn action_short(&self) -> String {
        self.action.trim_start_matches("FWP_ACTION_").to_ascii_lowercase().replace('_', "-")
    }
}

/// A netEvent's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// FWPM_NET_EVENT_TYPE_CLASSIFY_DROP.
    Drop,
    /// FWPM_NET_EVENT_TYPE_CLASSIFY_ALLOW.
    Allow,
}

impl EventType {
    /// `drop` or `allow`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Allow => "allow",
        }
    }
}

/// One `terminatingFiltersInfo` entry: a sublayer's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminating {
    /// filterId.
    pub filter: u64,
    /// subLayer (an FWPP_SUBLAYER_INTERNAL_* symbol or a key).
    pub sublayer: String,
    /// actionType.
    pub action: String,
}

/// A classify drop or allow (FWPM_NET_EVENT*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetEvent {
    /// drop or allow.
    pub kind: EventType,
    /// header.timeStamp as printed (UTC).
    pub time: String,
    /// Milliseconds since the Unix epoch, when the time stamp reads.
    pub time_ms: Option<i64>,
    /// header.ipProtocol.
    pub protocol: Option<u8>,
    /// Local address and port.
    pub local: Option<SocketAddr>,
    /// Remote address and port.
    pub remote: Option<SocketAddr>,
    /// header.appId, decoded.
    pub app: Option<String>,
    /// header.userId.
    pub user: Option<String>,
    /// header.packageSid.
    pub package: Option<String>,
    /// classifyDrop/classifyAllow.filterId.
    pub filter: Option<u64>,
    /// layerId (run-time).
    pub layer_id: Option<u64>,
    /// terminatingFiltersInfo.
    pub chain: Vec<Terminating>,
    /// Where the event starts in its file.
    pub origin: String,
}

fn bad(node: &Node, what: &str, why: impl fmt::Display) -> XmlError {
    XmlError::at(node.pos, format!("<{}>: {what}: {why}", node.name))
}

fn number(node: &Node, path: &str) -> Result<Option<u64>, XmlError> {
    match node.text_at(path) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            let at = node.at(path).unwrap_or(node);
            bad(at, path, format!("`{t}` is not a number"))
        }),
    }
}

fn flag_set(node: &Node, flag: &str) -> bool {
    node.items_text("flags").iter().any(|f| f == flag)
}

/// Reads a provider.
pub fn provider(node: &Node) -> Result<Provider, XmlError> {
    let key = node.text_at("providerKey").ok_or_else(|| bad(node, "providerKey", "missing"))?;
    Ok(Provider {
        key: key.to_owned(),
        name: node.text_at("displayData/name").unwrap_or_default().to_owned(),
        description: node.text_at("displayData/description").unwrap_or_default().to_owned(),
        persistent: flag_set(node, "FWPM_PROVIDER_FLAG_PERSISTENT"),
        service: node.text_at("serviceName").map(str::to_owned),
    })
}

/// Reads a sublayer.
pub fn sublayer(node: &Node) -> Result<Sublayer, XmlError> {
    let key = node.text_at("subLayerKey").ok_or_else(|| bad(node, "subLayerKey", "missing"))?;
    let weight = number(node, "weight")?.ok_or_else(|| bad(node, "weight", "missing"))?;
    let weight = u16::try_from(weight).map_err(|_| bad(node, "weight", "a sublayer weight is 16 bits"))?;
    Ok(Sublayer {
        key: key.to_owned(),
        name: node.text_at("displayData/name").unwrap_or_default().to_owned(),
        provider: node.text_at("providerKey").map(str::to_owned),
        weight,
        persistent: flag_set(node, "FWPM_SUBLAYER_FLAG_PERSISTENT"),
    })
}

/// Reads a callout.
pub fn callout(node: &Node) -> Result<Callout, XmlError> {
    let key = node.text_at("calloutKey").ok_or_else(|| bad(node, "calloutKey", "missing"))?;
    Ok(Callout {
        key: key.to_owned(),
        name: node.text_at("displayData/name").unwrap_or_default().to_owned(),
        provider: node.text_at("providerKey").map(str::to_owned),
        layer: node.text_at("applicableLayer").unwrap_or_default().to_owned(),
        id: number(node, "calloutId")?,
        registered: flag_set(node, "FWPM_CALLOUT_FLAG_REGISTERED"),
        persistent: flag_set(node, "FWPM_CALLOUT_FLAG_PERSISTENT"),
    })
}

fn weight(node: &Node) -> Result<Weight, XmlError> {
    let Some(w) = node.child("weight") else { return Ok(Weight::Empty) };
    match w.text_at("type") {
        None | Some("FWP_EMPTY") => Ok(Weight::Empty),
        Some("FWP_UINT8") => {
            let v = number(w, "uint8")?.ok_or_else(|| bad(w, "uint8", "missing"))?;
            u8::try_from(v).map(Weight::Range).map_err(|_| bad(w, "uint8", "out of range"))
        }
        Some("FWP_UINT64") => Ok(Weight::Exact(number(w, "uint64")?.ok_or_else(|| bad(w, "uint64", "missing"))?)),
        Some(other) => Err(bad(w, "type", format!("unexpected weight type {other}"))),
    }
}

fn condition(item: &Node) -> String {
    let field = item.text_at("fieldKey").unwrap_or("?").trim_start_matches("FWPM_CONDITION_");
    let op = match item.text_at("matchType").unwrap_or("") {
        "FWP_MATCH_EQUAL" => "=",
        "FWP_MATCH_NOT_EQUAL" => "!=",
        "FWP_MATCH_GREATER" => ">",
        "FWP_MATCH_LESS" => "<",
        "FWP_MATCH_GREATER_OR_EQUAL" => ">=",
        "FWP_MATCH_LESS_OR_EQUAL" => "<=",
        "FWP_MATCH_RANGE" => "in",
        "FWP_MATCH_FLAGS_ALL_SET" => "has all",
        "FWP_MATCH_FLAGS_ANY_SET" => "has any",
        "FWP_MATCH_FLAGS_NONE_SET" => "has none",
        "FWP_MATCH_PREFIX" => "prefix",
        other => other,
    };
    let value = item.child("conditionValue").map(value_text).unwrap_or_default();
    format!("{field} {op} {value}")
}

fn value_text(v: &Node) -> String {
    if let Some(r) = v.child("rangeValue") {
        let low = r.child("valueLow").map(value_text).unwrap_or_default();
        let high = r.child("valueHigh").map(value_text).unwrap_or_default();
        return format!("{low}..{high}");
    }
    let payload = v.children.iter().find(|c| c.name != "type");
    match payload {
        Some(p) if p.name == "byteBlob" => {
            p.text_at("asString").map(dotted).or_else(|| p.text_at("data").map(str::to_owned)).unwrap_or_default()
        }
        Some(p) => p.text.trim().to_owned(),
        None => String::new(),
    }
}

/// Undoes netsh's rendering of UTF-16 as "one character, one dot" (asString).
fn dotted(s: &str) -> String {
    let chars: Vec<char> = s.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        out.push(c);
        i += 2;
    }
    out.trim_end_matches('.').trim_end_matches('\0').to_owned()
}

/// Reads a filter.
pub fn filter(node: &Node, file: &str) -> Result<Filter, XmlError> {
    let id = number(node, "filterId")?.ok_or_else(|| bad(node, "filterId", "missing"))?;
    let action = node.at("action").ok_or_else(|| bad(node, "action", "missing"))?;
    let conditions = node
        .child("filterCondition")
        .map(|c| c.children.iter().filter(|i| i.name == "item").map(condition).collect())
        .unwrap_or_default();
    let effective = match node.child("effectiveWeight") {
        Some(e) if e.text_at("type") == Some("FWP_UINT64") => number(e, "uint64")?,
        _ => None,
    };
    Ok(Filter {
        key: node.text_at("filterKey").unwrap_or_default().to_owned(),
        id,
        name: node.text_at("displayData/name").unwrap_or_default().to_owned(),
        flags: node.items_text("flags"),
        provider: node.text_at("providerKey").map(str::to_owned),
        layer: node.text_at("layerKey").ok_or_else(|| bad(node, "layerKey", "missing"))?.to_owned(),
        sublayer: node.text_at("subLayerKey").unwrap_or_default().to_owned(),
        weight: weight(node)?,
        effective_weight: effective,
        action: action.text_at("type").ok_or_else(|| bad(action, "type", "missing"))?.to_owned(),
        callout: action.text_at("calloutKey").or_else(|| action.text_at("filterType")).map(str::to_owned),
        conditions,
        origin: format!("{file}:{}", node.pos.line),
    })
}

/// Decodes netsh's app id: `data` is the UTF-16LE bytes in hex.
fn app_id(node: &Node) -> Option<String> {
    let hex = node.text_at("data")?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let s = String::from_utf16_lossy(&units);
    let s = s.trim_end_matches('\0').to_owned();
    if s.is_empty() { node.text_at("asString").map(dotted) } else { Some(s) }
}

/// Milliseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS(.fff)Z`.
pub fn parse_utc_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Reads a netEvent; `None` for types other than classify drop and allow.
pub fn net_event(node: &Node, file: &str) -> Result<Option<NetEvent>, XmlError> {
    let kind = match node.text_at("type") {
        Some("FWPM_NET_EVENT_TYPE_CLASSIFY_DROP") => EventType::Drop,
        Some("FWPM_NET_EVENT_TYPE_CLASSIFY_ALLOW") => EventType::Allow,
        _ => return Ok(None),
    };
    let h = node.child("header").ok_or_else(|| bad(node, "header", "missing"))?;
    let addr = |v4: &str, v6: &str| -> Result<Option<IpAddr>, XmlError> {
        match h.text_at(v4).or_else(|| h.text_at(v6)) {
            None => Ok(None),
            Some(t) => t.parse().map(Some).map_err(|_| bad(h, v4, format!("`{t}` is not an address"))),
        }
    };
    let local_ip = addr("localAddrV4", "localAddrV6.byteArray16")?;
    let remote_ip = addr("remoteAddrV4", "remoteAddrV6.byteArray16")?;
    let port = |p: &str| -> Result<Option<u16>, XmlError> {
        number(h, p)?.map(|v| u16::try_from(v).map_err(|_| bad(h, p, "not a port"))).transpose()
    };
    let (lp, rp) = (port("localPort")?, port("remotePort")?);
    let protocol = number(h, "ipProtocol")?.and_then(|p| u8::try_from(p).ok());
    let body = node.child(if kind == EventType::Drop { "classifyDrop" } else { "classifyAllow" });
    let chain = node
        .at("internalFields/terminatingFiltersInfo")
        .map(|t| {
            t.children
                .iter()
                .filter(|i| i.name == "item")
                .map(|i| {
                    Ok(Terminating {
                        filter: number(i, "filterId")?.unwrap_or(0),
                        sublayer: i.text_at("subLayer").unwrap_or_default().to_owned(),
                        action: i.text_at("actionType").unwrap_or_default().to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, XmlError>>()
        })
        .transpose()?
        .unwrap_or_default();
    let time = h.text_at("timeStamp").unwrap_or_default().to_owned();
    Ok(Some(NetEvent {
        kind,
        time_ms: parse_utc_ms(&time),
        time,
        protocol,
        local: local_ip.map(|ip| SocketAddr::new(ip, lp.unwrap_or(0))),
        remote: remote_ip.map(|ip| SocketAddr::new(ip, rp.unwrap_or(0))),
        app: h.child("appId").and_then(app_id),
        user: h.text_at("userId").map(str::to_owned),
        package: h.text_at("packageSid").map(str::to_owned),
        filter: body.map(|b| number(b, "filterId")).transpose()?.flatten(),
        layer_id: body.map(|b| number(b, "layerId")).transpose()?.flatten(),
        chain,
        origin: format!("{file}:{}", node.pos.line),
    }))
}
