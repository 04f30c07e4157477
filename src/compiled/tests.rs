//! The compiled matcher against the reference scan, and the blob codec.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;

use super::blob::{self, BlobError, HEADER_LEN};
use super::{CompiledRules, DEFAULT_SEED};
use crate::arbiter::{Arbiter, Capacities, Config};
use crate::flow::{AppId, Flow, Protocol, SidBuf, fold_unit};
use crate::policy::{Action, Cidr, Glob, LoopPolicy, PermitOrBlock, Policy, PortRange, ProxyListeners, Rule, RuleSet};
use crate::time::Duration;
use crate::wide::WideString;
use counting::counted;

const SIDS: [&str; 3] =
    ["S-1-15-2-1430448594-2639229838-973813799-439329657-1197984847-4069523365-4100528453", "S-1-15-2-1", "S-1-5-18"];

fn sid(i: usize) -> SidBuf {
    SidBuf::parse(SIDS[i % SIDS.len()]).unwrap()
}

// ---------------------------------------------------------------- strategies

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        prop::sample::select(vec![
            Ipv4Addr::new(10, 0, 0, 0),
            Ipv4Addr::new(10, 1, 0, 0),
            Ipv4Addr::new(10, 1, 2, 3),
            Ipv4Addr::new(10, 1, 2, 255),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
        ]),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        prop::sample::select(vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            "fe80::1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "2001:db8:1::".parse().unwrap(),
            "::ffff:0:0".parse().unwrap(),
            Ipv6Addr::from(u128::MAX),
        ]),
        // IPv4-mapped: an IPv6 address, never matched by an IPv4 CIDR.
        v4().prop_map(|a| a.to_ipv6_mapped()),
        any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (v4(), prop_oneof![Just(0u8), Just(32), 0u8..=34]).prop_map(|(a, p)| Cidr { addr: IpAddr::V4(a), prefix: p }),
        (v6(), prop_oneof![Just(0u8), Just(128), 0u8..=130]).prop_map(|(a, p)| Cidr { addr: IpAddr::V6(a), prefix: p }),
        (v4(), 96u8..=128).prop_map(|(a, p)| Cidr { addr: IpAddr::V6(a.to_ipv6_mapped()), prefix: p }),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![prop::sample::select(vec![0u16, 1, 53, 79, 80, 81, 443, 4095, 4096, 8000, 8999, 65535]), any::<u16>()]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        port().prop_map(|p| PortRange { lo: p, hi: p }),
        (port(), port()).prop_map(|(lo, hi)| PortRange { lo, hi }),
        Just(PortRange { lo: 0, hi: u16::MAX }),
    ]
}

/// Path-like pieces, so heads, tails and whole components recur across
/// patterns and ids; `K` is the Kelvin sign (it folds to ASCII `k`).
const PIECES: [&str; 12] = ["\\", "dev", "k", "\u{212A}", "x.exe", "Vendor", "vendor1", "É", "\\dev\\", "ab", "a", "b"];

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec!['a', 'b', 'A', '\\', '*', '?', 'é', 'É']), 0..7)
            .prop_map(|c| c.into_iter().collect()),
        prop::collection::vec(
            prop_oneof![prop::sample::select(PIECES.to_vec()), prop::sample::select(vec!["*", "?", "*\\", "\\*"])],
            0..6
        )
        .prop_map(|p| p.concat()),
    ]
}

fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec!['a', 'b', 'B', '\\', 'é', 'É']), 0..9)
            .prop_map(|c| c.into_iter().collect()),
        prop::collection::vec(prop::sample::select(PIECES.to_vec()), 0..8).prop_map(|p| p.concat()),
    ]
}

fn globs() -> impl Strategy<Value = Vec<Glob>> {
    prop_oneof![
        3 => prop::collection::vec(pattern().prop_map(|p| Glob::new(&p).unwrap()), 0..3),
        1 => prop::collection::vec(pattern().prop_map(|p| Glob::new(&p).unwrap()), 3..8),
    ]
}

/// Raw UTF-16LE app id bytes: odd lengths, trailing and inner NUL units,
/// lone surrogates, and ids longer than the tests' fold buffer.
fn raw_id() -> impl Strategy<Value = Vec<u8>> {
    let wide = |s: String| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    (
        prop_oneof![
            4 => subject().prop_map(wide),
            1 => (subject(), 0usize..3).prop_map(move |(s, k)| {
                let long: String = "\\dir".repeat(70 + 2 * k);
                wide(long + &s)
            }),
        ],
        prop::collection::vec(prop::sample::select(vec![0u16, 0xd800, 0x212a, 0x5c]), 0..2),
        any::<bool>(),
    )
        .prop_map(|(mut bytes, extra, odd)| {
            bytes.extend(extra.into_iter().flat_map(u16::to_le_bytes));
            if odd {
                bytes.push(b'a');
            }
            bytes
        })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![Protocol::TCP, Protocol::UDP, Protocol::ICMP, Protocol(58)])
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::sample::select(vec![Action::Proxy, Action::Block, Action::Bypass]),
        prop::option::weighted(0.5, protocol()),
        prop::collection::vec(cidr(), 0..3),
        prop::collection::vec(port_range(), 0..3),
        globs(),
        prop::collection::vec(pattern().prop_map(|p| Glob::new(&p).unwrap()), 0..2),
        prop::collection::vec((0usize..3).prop_map(sid), 0..2),
    )
        .prop_map(|(action, protocol, remote, remote_ports, app, original_app, package)| Rule {
            name: String::from("r"),
            action,
            protocol,
            remote,
            remote_ports,
            app,
            original_app,
            package,
        })
}

fn rule_set() -> impl Strategy<Value = RuleSet> {
    (prop::collection::vec(rule(), 0..40), globs(), globs()).prop_map(|(rules, trust, known_proxies)| RuleSet {
        rules,
        trust,
        known_proxies,
        ..RuleSet::default()
    })
}

#[derive(Clone, Debug)]
struct FlowSpec {
    protocol: Protocol,
    remote: SocketAddr,
    app: WideString,
    original_app: WideString,
    package: Option<SidBuf>,
}

impl FlowSpec {
    fn flow(&self) -> Flow<'_> {
        Flow {
            protocol: self.protocol,
            local: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 50000)),
            remote: self.remote,
            endpoint: 1,
            pid: 42,
            app: self.app.app_id(),
            original_app: self.original_app.app_id(),
            package: self.package.as_ref().map(SidBuf::as_sid),
        }
    }
}

fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    (
        protocol(),
        prop_oneof![
            (v4(), port()).prop_map(|(a, p)| SocketAddr::V4(SocketAddrV4::new(a, p))),
            (v6(), port()).prop_map(|(a, p)| SocketAddr::V6(SocketAddrV6::new(a, p, 0, 0))),
        ],
        subject(),
        subject(),
        prop::option::of((0usize..4).prop_map(|i| if i == 3 { SidBuf::parse("S-1-15-2-99").unwrap() } else { sid(i) })),
    )
        .prop_map(|(protocol, remote, app, original_app, package)| FlowSpec {
            protocol,
            remote,
            app: WideString::new(&app),
            original_app: WideString::new(&original_app),
            package,
        })
}

/// The rule set compiled both ways, whatever its size: looked up through the
/// indexes, and scanned rule by rule.
fn both(rs: &RuleSet) -> [CompiledRules; 2] {
    [CompiledRules::build(rs, DEFAULT_SEED, false).unwrap(), CompiledRules::build(rs, DEFAULT_SEED, true).unwrap()]
}

fn assert_same(rs: &RuleSet, compiled: &[CompiledRules], spec: &FlowSpec) {
    let flow = spec.flow();
    for (c, how) in compiled.iter().zip(["indexed", "scanned"]) {
        assert_eq!(c.first_match(&flow), rs.first_match(&flow), "first_match ({how}) for {spec:?}");
        assert_eq!(c.is_trusted(&flow.app), rs.is_trusted(&flow.app), "is_trusted for {spec:?}");
        assert_eq!(c.is_known_proxy(&flow.app), rs.is_known_proxy(&flow.app), "is_known_proxy for {spec:?}");
    }
}

fn assert_same_flow(rs: &RuleSet, compiled: &[CompiledRules], flow: &Flow<'_>) {
    for (c, how) in compiled.iter().zip(["indexed", "scanned"]) {
        assert_eq!(c.first_match(flow), rs.first_match(flow), "first_match ({how}) for {flow:?}");
        assert_eq!(c.is_trusted(&flow.app), rs.is_trusted(&flow.app), "is_trusted for {flow:?}");
        assert_eq!(c.is_known_proxy(&flow.original_app), rs.is_known_proxy(&flow.original_app), "{flow:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 1 } else { 512 }, ..ProptestConfig::default() })]

    /// App ids as raw bytes (odd, NUL-padded, non-ASCII, longer than the
    /// fold buffer), equal or not to the original app id.
    #[test]
    fn compiled_equals_naive_on_raw_ids(
        rs in rule_set(),
        ids in prop::collection::vec((raw_id(), prop::option::of(raw_id()), flow_spec()), 1..12),
    ) {
        let compiled = both(&rs);
        for (app, original, spec) in &ids {
            let mut flow = spec.flow();
            flow.app = AppId::from_utf16le(app);
            flow.original_app = AppId::from_utf16le(original.as_deref().unwrap_or(app));
            assert_same_flow(&rs, &compiled, &flow);
        }
    }

    /// The glob index's two ways of reading an id (folded on the stack, or
    /// unit by unit) and the reference matcher agree, pattern by pattern and
    /// through the index.
    #[test]
    fn glob_paths_agree(patterns in prop::collection::vec(pattern(), 1..6), id in raw_id()) {
        use super::globs::{FOLD_UNITS, GlobIndex, fold};
        let globs: Vec<Glob> = patterns.iter().map(|p| Glob::new(p).unwrap()).collect();
        let mut units: Vec<&[u16]> = globs.iter().map(Glob::units).collect();
        units.sort_unstable();
        units.dedup();
        let ix = GlobIndex::build(units.iter().copied(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
        let app = AppId::from_utf16le(&id);
        let mut buf = [0u16; FOLD_UNITS];
        let folded = fold(&app, &mut buf);
        let expect: Vec<u16> = app.folded_units().collect();
        prop_assert_eq!(folded.map(<[u16]>::to_vec), (expect.len() <= FOLD_UNITS).then_some(expect));
        let mut want = Vec::new();
        for (k, p) in (0u32..).zip(&units) {
            let reference = crate::policy::glob_match(p, &app);
            prop_assert_eq!(ix.key_matches(k, &app), reference, "unfolded, pattern {:?}", p);
            if let Some(f) = folded {
                prop_assert_eq!(ix.key_matches(k, f), reference, "folded, pattern {:?}", p);
            }
            if reference {
                want.push(k);
            }
        }
        let mut got = Vec::new();
        ix.for_each_match(&app, |k| { got.push(k); true });
        got.sort_unstable();
        prop_assert_eq!(&got, &want);
        if let Some(f) = folded {
            let mut got = Vec::new();
            ix.for_each_match(f, |k| { got.push(k); true });
            got.sort_unstable();
            prop_assert_eq!(&got, &want);
        }
    }

    /// The linear middle matcher (segments found one after the other, long
    /// runs searched as stretches side by side) against the reference matcher:
    /// long ids built from the segments' own text, so that segments occur,
    /// almost occur and overlap, with `?`, case and the Kelvin sign.
    #[test]
    fn long_middles_agree_with_reference(
        segments in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec!['a', 'b', '?', 'k', 'é']), 1..14),
            1..6,
        ),
        lead in any::<bool>(),
        trail in any::<bool>(),
        head in "[ab]{0,2}",
        tail in "[ab]{0,2}",
        pieces in prop::collection::vec((0usize..8, 0usize..40, any::<bool>()), 0..40),
    ) {
        use super::globs::{FOLD_UNITS, GlobIndex, fold};
        let texts: Vec<String> = segments.iter().map(|s| s.iter().collect()).collect();
        let mut middle = texts.join("*");
        if lead || head.is_empty() {
            middle.insert(0, '*');
        }
        if trail || tail.is_empty() {
            middle.push('*');
        }
        let glob = Glob::new(&alloc::format!("{head}{middle}{tail}")).unwrap();
        // Pieces: a segment's text (its `?` filled, its case flipped), or a
        // run of filler; then the tail.
        let mut id = head.clone();
        for &(which, run, upper) in &pieces {
            let piece: String = match texts.get(which) {
                Some(t) if run % 3 != 0 => t.replace('?', if upper { "b" } else { "a" }),
                _ => "ab".repeat(run / 2) + if run % 2 == 0 { "" } else { "\u{212A}" },
            };
            id.push_str(&if upper { piece.to_uppercase() } else { piece });
        }
        id.push_str(&tail);
        let wide = WideString::new(&id);
        let app = wide.app_id();
        let ix = GlobIndex::build([glob.units()].into_iter(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
        let want = crate::policy::glob_match(glob.units(), &app);
        prop_assert_eq!(ix.key_matches(0, &app), want, "{:?} vs {:?}", glob, id);
        prop_assert_eq!(ix.any_match(&app), want);
        let mut buf = [0u16; FOLD_UNITS];
        if let Some(f) = fold(&app, &mut buf) {
            prop_assert_eq!(ix.key_matches(0, f), want);
        }
    }

    /// The segment search (long runs cut into stretches searched side by
    /// side) finds the first occurrence, wherever it lies against the
    /// stretches' edges: ids dense with occurrences and near-occurrences of
    /// the segment, with `?`, case and the Kelvin sign, checked against a
    /// scan of every position.
    #[test]
    fn segment_search_finds_the_first_occurrence(
        segment in prop::collection::vec(prop::sample::select(vec!['a', 'b', '?', 'k', 'é']), 1..65),
        pieces in prop::collection::vec((0usize..4, 0usize..70, any::<bool>()), 1..80),
        cut in (0usize..64, 0usize..64),
    ) {
        use super::globs::GlobIndex;
        let text: String = segment.iter().collect();
        let glob = Glob::new(&alloc::format!("*{text}*")).unwrap();
        let mut id = String::new();
        for &(kind, run, upper) in &pieces {
            let mut piece = match kind {
                0 => text.replace('?', "x"),
                // The segment with one unit changed: almost an occurrence.
                1 => text.chars().enumerate().map(|(i, c)| if i == run % segment.len() { 'z' } else if c == '?' { 'b' } else { c }).collect(),
                2 => "a".repeat(run) + if run % 2 == 0 { "\u{212A}" } else { "b" },
                _ => "ab".repeat(run / 2),
            };
            if upper {
                piece = piece.to_uppercase();
            }
            id.push_str(&piece);
        }
        let wide = WideString::new(&id);
        let app = wide.app_id();
        let n = app.len_units();
        let (from, limit) = (cut.0.min(n), n.saturating_sub(cut.1).max(cut.0.min(n)));
        let ix = GlobIndex::build([glob.units()].into_iter(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
        let units: Vec<u16> = (0..n).map(|i| fold_unit(app.unit(i).unwrap())).collect();
        let pattern = glob.units().get(1..glob.units().len() - 1).unwrap();
        let len = pattern.len();
        let want = (from..limit).filter(|&end| end + 1 >= from + len).find(|&end| {
            units[end + 1 - len..=end].iter().zip(pattern).all(|(&u, &p)| p == u16::from(b'?') || p == u)
        });
        prop_assert_eq!(ix.first_segment_end(0, &app, from, limit), want, "{:?} in {:?} [{}, {})", text, id, from, limit);
        prop_assert_eq!(ix.first_segment_end(0, units.as_slice(), from, limit), want);
    }

    /// The compiled matcher answers exactly as the reference scan.
    #[test]
    fn compiled_equals_naive(rs in rule_set(), flows in prop::collection::vec(flow_spec(), 1..24)) {
        let compiled = both(&rs);
        for spec in &flows {
            assert_same(&rs, &compiled, spec);
        }
    }

    /// Flows drawn from the rules' own values hit rules far more often than
    /// random ones do.
    #[test]
    fn compiled_equals_naive_on_rule_values(rs in rule_set(), picks in prop::collection::vec((any::<usize>(), any::<usize>(), subject()), 1..24)) {
        let compiled = both(&rs);
        for (i, j, app) in picks {
            let Some(rule) = rs.rules.get(i % rs.rules.len().max(1)) else { continue };
            let ip = rule.remote.get(j % rule.remote.len().max(1)).map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.addr);
            let port = rule.remote_ports.get(j % rule.remote_ports.len().max(1)).map_or(80, |r| r.hi);
            let spec = FlowSpec {
                protocol: rule.protocol.unwrap_or(Protocol::UDP),
                remote: SocketAddr::new(ip, port),
                app: WideString::new(&app),
                original_app: WideString::new(&app),
                package: rule.package.first().copied(),
            };
            assert_same(&rs, &compiled, &spec);
        }
    }

    /// A valid rule set survives the blob unchanged, its id the checksum.
    #[test]
    fn blob_round_trip(rs in rule_set()) {
        let rs = sanitized(rs);
        let bytes = blob::encode(&rs).unwrap();
        let back = blob::decode_rule_set(&bytes).unwrap();
        prop_assert_eq!(back.id, blob::crc32(&bytes[HEADER_LEN..]));
        prop_assert_eq!(&back, &RuleSet { id: back.id, ..rs.clone() });
        prop_assert_eq!(blob::encode(&back).unwrap(), bytes.clone());
        crate::fuzzing::rules_blob(&bytes);
    }

    /// Any byte string: no panic, and whatever is accepted re-encodes to itself.
    #[test]
    fn decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
        crate::fuzzing::rules_blob(&data);
    }

    /// Mutations of valid blobs, with the checksum fixed up so the payload parser is reached.
    #[test]
    fn decode_survives_mutations(rs in rule_set(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut bytes = blob::encode(&sanitized(rs)).unwrap();
        let at = HEADER_LEN + at % (bytes.len() - HEADER_LEN).max(1);
        if let Some(b) = bytes.get_mut(at) { *b = byte; }
        let cut = HEADER_LEN + cut % (bytes.len() - HEADER_LEN + 1);
        bytes.truncate(cut);
        let len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        let crc = blob::crc32(&bytes[HEADER_LEN..]);
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        crate::fuzzing::rules_blob(&bytes);
    }
}

/// What the front end would produce: prefixes within the family, ranges not inverted.
fn sanitized(mut rs: RuleSet) -> RuleSet {
    // What the shared validator refuses: bad globs and repeated names.
    let fix = |globs: &mut Vec<Glob>| {
        for g in globs.iter_mut() {
            if crate::validate::check_glob(g.units()).is_err() {
                *g = Glob::new("*").unwrap();
            }
        }
    };
    fix(&mut rs.trust);
    fix(&mut rs.known_proxies);
    for (i, r) in rs.rules.iter_mut().enumerate() {
        r.name = alloc::format!("{}-{i}", r.name);
        fix(&mut r.app);
        fix(&mut r.original_app);
        for c in &mut r.remote {
            c.prefix = c.prefix.min(if c.addr.is_ipv4() { 32 } else { 128 });
        }
        for p in &mut r.remote_ports {
            if p.lo > p.hi {
                core::mem::swap(&mut p.lo, &mut p.hi);
            }
        }
    }
    rs.proxy = ProxyListeners {
        v4: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 34010)),
        v6: Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 34010, 0, 0)),
    };
    rs.loop_policy = LoopPolicy {
        revisit: PermitOrBlock::Block,
        on_loop: PermitOrBlock::Permit,
        max_hops: 4,
        hop_window: Duration::from_millis(2500),
    };
    rs
}

// ---------------------------------------------------------------- fixed cases

/// A tiny deterministic generator for the large cases.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
#[cfg_attr(miri, ignore = "long; the proptests cover the same paths under Miri")]
fn many_blocks_agree_with_naive() {
    // 5,000 rules span three blocks; most flows match late or not at all.
    let mut g = XorShift(0x1234_5678_9abc_def1);
    let mut rules = Vec::new();
    for i in 0..5000u32 {
        let mut r = Rule::any("r", [Action::Proxy, Action::Block, Action::Bypass][(i % 3) as usize]);
        if g.below(3) > 0 {
            r.protocol = Some([Protocol::TCP, Protocol::UDP][g.below(2) as usize]);
        }
        if g.below(4) > 0 {
            let a = Ipv4Addr::from((10u32 << 24) | (g.below(256) as u32) << 16 | (g.below(256) as u32) << 8);
            r.remote.push(Cidr { addr: IpAddr::V4(a), prefix: [8, 16, 24, 32][g.below(4) as usize] });
        }
        if g.below(2) > 0 {
            let lo = g.below(2000) as u16;
            r.remote_ports.push(PortRange { lo, hi: lo + g.below(50) as u16 });
        }
        if g.below(2) > 0 {
            r.app.push(Glob::new(&alloc::format!("*\\app{}.exe", g.below(200))).unwrap());
        }
        rules.push(r);
    }
    let rs = RuleSet { rules, ..RuleSet::default() };
    let compiled = both(&rs);
    let mut hits = 0;
    for _ in 0..3000 {
        let ip = Ipv4Addr::from((10u32 << 24) | (g.below(256) as u32) << 16 | (g.below(256) as u32) << 8 | 7);
        let spec = FlowSpec {
            protocol: [Protocol::TCP, Protocol::UDP][g.below(2) as usize],
            remote: SocketAddr::V4(SocketAddrV4::new(ip, g.below(2100) as u16)),
            app: WideString::new(&alloc::format!("\\device\\x\\APP{}.exe", g.below(220))),
            original_app: WideString::new("x"),
            package: None,
        };
        assert_same(&rs, &compiled, &spec);
        hits += usize::from(rs.first_match(&spec.flow()).is_some());
    }
    assert!(hits > 100, "the case must exercise matches too ({hits})");
}

#[test]
#[cfg_attr(miri, ignore = "long; the proptests cover the same paths under Miri")]
fn too_many_matching_globs_still_exact() {
    // 100 distinct globs all match the app; each rule also pins one port, so
    // the answer depends on which glob-holding rule the port selects.
    let mut rules = Vec::new();
    for i in 0..100u16 {
        let mut r = Rule::any("g", Action::Proxy);
        r.app.push(Glob::new(&"*".repeat(usize::from(i) + 1)).unwrap());
        r.remote_ports.push(PortRange { lo: 1000 + i, hi: 1000 + i });
        rules.push(r);
    }
    let mut miss = Rule::any("never", Action::Block);
    miss.app.push(Glob::new("zzz*").unwrap());
    rules.insert(0, miss);
    let rs = RuleSet { rules, ..RuleSet::default() };
    let compiled = both(&rs);
    for port in [999u16, 1000, 1050, 1099, 1100] {
        let spec = FlowSpec {
            protocol: Protocol::TCP,
            remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), port)),
            app: WideString::new("abc"),
            original_app: WideString::new("abc"),
            package: None,
        };
        assert_same(&rs, &compiled, &spec);
    }
}

#[test]
#[cfg_attr(miri, ignore = "long; the proptests cover the same paths under Miri")]
fn folding_is_idempotent() {
    // The blob stores folded glob units and re-folds them on decode.
    for u in 0..=u16::MAX {
        assert_eq!(fold_unit(fold_unit(u)), fold_unit(u), "unit {u:#06x}");
    }
}

#[test]
fn empty_rule_set_matches_nothing() {
    let rs = RuleSet::default();
    let compiled = CompiledRules::compile(&rs).unwrap();
    let spec = FlowSpec {
        protocol: Protocol::TCP,
        remote: "1.2.3.4:80".parse().unwrap(),
        app: WideString::new("a"),
        original_app: WideString::new("a"),
        package: None,
    };
    assert_eq!(compiled.first_match(&spec.flow()), None);
    assert!(!compiled.is_trusted(&AppId::EMPTY));
}

// ---------------------------------------------------------------- blobs

fn web_rules(port: u16) -> RuleSet {
    let mut web = Rule::any("web", Action::Proxy);
    web.protocol = Some(Protocol::TCP);
    web.remote_ports = vec![PortRange { lo: port, hi: port }];
    web.app = vec![Glob::new(r"*\browser.exe").unwrap()];
    web.package = vec![sid(0)];
    let mut local = Rule::any("loopback", Action::Bypass);
    local.remote = vec![Cidr { addr: "127.0.0.0".parse().unwrap(), prefix: 8 }];
    sanitized(RuleSet {
        rules: vec![local, web],
        trust: vec![Glob::new(r"*\vendorb\proxy.exe").unwrap()],
        ..RuleSet::default()
    })
}

fn with_id(rs: RuleSet) -> RuleSet {
    let id = blob::rule_set_id(&rs).unwrap();
    RuleSet { id, ..rs }
}

#[test]
fn blob_round_trip_fixed() {
    let rs = with_id(web_rules(443));
    let bytes = blob::encode(&rs).unwrap();
    assert_eq!(&bytes[..4], b"ARBR");
    assert_eq!(blob::decode_rule_set(&bytes).unwrap(), rs);
    let compiled = blob::decode(&bytes).unwrap();
    assert_eq!(compiled.id(), rs.id);
    assert_ne!(rs.id, 0);
    assert_eq!(compiled.proxy(), rs.proxy);
    assert_eq!(compiled.loop_policy(), rs.loop_policy);
}

#[test]
fn truncated_and_flipped_blobs_are_rejected() {
    let bytes = blob::encode(&web_rules(443)).unwrap();
    let payload = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
    assert_eq!(blob::decode(&bytes[..10]).unwrap_err(), BlobError::TooShort { len: 10 });
    assert_eq!(
        blob::decode(&bytes[..bytes.len() - 1]).unwrap_err(),
        BlobError::LengthMismatch { declared: payload, actual: payload as usize - 1 }
    );
    for at in HEADER_LEN..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        assert!(
            matches!(blob::decode(&bad), Err(BlobError::ChecksumMismatch { .. })),
            "a flipped payload byte at {at} must fail the checksum"
        );
    }
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(blob::decode(&bad).unwrap_err(), BlobError::BadMagic);
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert_eq!(blob::decode(&bad).unwrap_err(), BlobError::UnsupportedVersion { version: 9 });
    let msg = alloc::format!("{}", blob::decode(&bytes[..bytes.len() - 1]).unwrap_err());
    assert!(msg.starts_with("offset 8:"), "{msg}");
}

#[test]
fn forged_counts_do_not_reserve_past_the_blob() {
    // A valid header around a payload whose rule count claims four billion rules.
    let mut bytes = blob::encode(&RuleSet::default()).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = blob::crc32(&bytes[HEADER_LEN..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        blob::decode(&bytes).unwrap_err(),
        BlobError::Invalid { offset: n - 4, what: "count exceeds the bytes left in the blob" }
    );
}

#[test]
fn failed_swap_leaves_old_rules_in_force() {
    let old = with_id(web_rules(443));
    let new = with_id(web_rules(8080));
    let compiled = CompiledRules::compile(&old).unwrap();
    let mut arbiter =
        Arbiter::new(Config::default(), Capacities { endpoints: 8, destinations: 8, known_proxies: 8 }, compiled)
            .unwrap();
    let app = WideString::new(r"\device\harddiskvolume3\apps\Browser.exe");
    let package = sid(0);
    let flow = |port| Flow {
        protocol: Protocol::TCP,
        local: "10.0.0.5:50000".parse().unwrap(),
        remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(93, 184, 216, 34), port)),
        endpoint: 1,
        pid: 7,
        app: app.app_id(),
        original_app: app.app_id(),
        package: Some(package.as_sid()),
    };
    let good = blob::encode(&new).unwrap();

    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for bad in [&truncated, &flipped] {
        let err = blob::swap_blob(&mut arbiter, bad, [1, 2, 3, 4]).unwrap_err();
        assert!(matches!(err, BlobError::LengthMismatch { .. } | BlobError::ChecksumMismatch { .. }), "{err}");
        assert_eq!(arbiter.policy().id(), old.id, "old rules stay in force");
        assert_eq!(arbiter.policy().first_match(&flow(443)).map(|h| h.index), Some(1));
        assert_eq!(arbiter.policy().first_match(&flow(8080)), None);
    }

    let previous = blob::swap_blob(&mut arbiter, &good, [1, 2, 3, 4]).unwrap();
    assert_eq!(previous.id(), old.id);
    assert_eq!(arbiter.policy().id(), new.id);
    assert_eq!(arbiter.policy().first_match(&flow(443)), None);
    assert_eq!(arbiter.policy().first_match(&flow(8080)).map(|h| h.index), Some(1));
}

#[test]
fn glob_anchors_of_every_kind() {
    // Tail, head, middle component, first component, and none at all.
    let patterns = [r"*\browser.exe", r"\device\harddiskvolume3\vendor\*", r"*\Vendor\*", r"device\*", r"*owse*"];
    let ids = [
        r"\device\harddiskvolume3\apps\browser.exe",
        r"\Device\HarddiskVolume3\VENDOR\tool.exe",
        r"\device\harddiskvolume3\other\vendorx\tool.exe",
        r"device\x",
        r"\device\harddiskvolume3\vendor",
        "",
    ];
    for p in patterns {
        let mut r = Rule::any(p, Action::Proxy);
        r.app.push(Glob::new(p).unwrap());
        let rs = RuleSet { rules: vec![r], trust: vec![Glob::new(p).unwrap()], ..RuleSet::default() };
        let compiled = both(&rs);
        for id in ids {
            let spec = FlowSpec {
                protocol: Protocol::TCP,
                remote: "1.2.3.4:80".parse().unwrap(),
                app: WideString::new(id),
                original_app: WideString::new(id),
                package: None,
            };
            assert_same(&rs, &compiled, &spec);
        }
    }
    let hit = |p: &str, id: &str| {
        let rs = RuleSet { trust: vec![Glob::new(p).unwrap()], ..RuleSet::default() };
        CompiledRules::compile(&rs).unwrap().is_trusted(&WideString::new(id).app_id())
    };
    assert!(hit(r"*\Vendor\*", ids[1]));
    assert!(!hit(r"*\Vendor\*", ids[2]));
    assert!(!hit(r"*\Vendor\*", ids[4]), "the component must be followed by a backslash");
    assert!(hit(r"device\*", ids[3]));
}

// ---------------------------------------------------------------- allocation

/// Counts this thread's allocations while a flag is up (the pattern of
/// `tests/no_alloc.rs`), for the whole lib test binary.
mod counting {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::Cell;
    use std::alloc::System;

    struct Counting;

    std::thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: forwards every call to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if COUNTING.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as ours.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if COUNTING.with(Cell::get) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    /// Runs `f` and returns its result and the allocations it made.
    pub(super) fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
        COUNT.with(|c| c.set(0));
        COUNTING.with(|c| c.set(true));
        let r = f();
        COUNTING.with(|c| c.set(false));
        (r, COUNT.with(Cell::get))
    }
}

#[test]
fn matching_does_not_allocate() {
    // Every index kind, globs of every anchor kind, and ids that take the
    // stack fold, the unit-by-unit path, and the shared app/original lookup.
    let mut g = XorShift(0x0dd_ba11_5eed);
    let (n_rules, n_flows) = if cfg!(miri) { (200u32, 30) } else { (3000, 400) };
    let mut rules = Vec::new();
    for i in 0..n_rules {
        let mut r = Rule::any("r", [Action::Proxy, Action::Block, Action::Bypass][(i % 3) as usize]);
        match i % 7 {
            0 => r.remote.push(Cidr { addr: IpAddr::V4(Ipv4Addr::from(g.next() as u32)), prefix: 16 }),
            1 => r.remote.push(Cidr { addr: IpAddr::V6(Ipv6Addr::from(u128::from(g.next()) << 64)), prefix: 48 }),
            2 => r.remote_ports.push(PortRange { lo: g.below(60000) as u16, hi: 60000 }),
            3 => r.app.push(Glob::new(&alloc::format!("*\\app{}.exe", g.below(50))).unwrap()),
            4 => r.app.push(Glob::new(&alloc::format!("\\device\\v{}\\*", g.below(50))).unwrap()),
            5 => r.original_app.push(Glob::new(&alloc::format!("*\\v{}\\*", g.below(50))).unwrap()),
            _ => r.package.push(sid(i as usize)),
        }
        if i % 5 == 0 {
            r.protocol = Some(Protocol::TCP);
        }
        rules.push(r);
    }
    let rs = RuleSet { rules, trust: vec![Glob::new("*\\trusted.exe").unwrap()], ..RuleSet::default() };
    let long = WideString::new(&(String::from("\\device\\v1") + &"\\d".repeat(400) + "\\app3.exe"));
    let specs: Vec<FlowSpec> = (0..n_flows)
        .map(|i| FlowSpec {
            protocol: [Protocol::TCP, Protocol::UDP][i % 2],
            remote: if i % 3 == 0 {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u128::from(g.next()) << 64)), g.below(65536) as u16)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(g.next() as u32)), g.below(65536) as u16)
            },
            app: if i % 10 == 0 {
                long.clone()
            } else {
                WideString::new(&alloc::format!("\\device\\v{}\\app{}.exe", g.below(60), g.below(60)))
            },
            original_app: WideString::new(&alloc::format!("\\device\\v{}\\x.exe", g.below(60))),
            package: (i % 4 == 0).then(|| sid(i)),
        })
        .collect();
    let flows: Vec<Flow<'_>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut f = s.flow();
            if i % 2 == 0 {
                f.original_app = f.app;
            }
            f
        })
        .collect();
    for compiled in both(&rs) {
        let (hits, allocs) = counted(|| {
            flows
                .iter()
                .map(|f| {
                    usize::from(compiled.first_match(f).is_some())
                        + usize::from(compiled.is_trusted(&f.app))
                        + usize::from(compiled.is_known_proxy(&f.app))
                })
                .sum::<usize>()
        });
        assert_eq!(allocs, 0, "matching allocated");
        assert!(hits > n_flows / 8, "the flows must hit rules too ({hits})");
        for f in &flows {
            assert_eq!(compiled.first_match(f), rs.first_match(f));
        }
    }
}

/// Issue 13: a component anchor that occurs twice in the id (`\dev\` in
/// `\dev\\dev\`) was probed twice, so its pattern was reported twice.
#[test]
fn a_repeated_component_reports_its_pattern_once() {
    use super::globs::{FOLD_UNITS, GlobIndex, fold};
    let glob = Glob::new(r"*\dev\*\").unwrap();
    let ix =
        GlobIndex::build([glob.units()].into_iter(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
    let id: Vec<u8> = [92, 0, 100, 0, 101, 0, 118, 0, 92, 0, 92, 0, 100, 0, 101, 0, 118, 0, 92, 0].to_vec();
    let app = AppId::from_utf16le(&id);
    let mut got = Vec::new();
    ix.for_each_match(&app, |k| {
        got.push(k);
        true
    });
    assert_eq!(got, [0]);
    let mut buf = [0u16; FOLD_UNITS];
    let mut got = Vec::new();
    ix.for_each_match(fold(&app, &mut buf).unwrap(), |k| {
        got.push(k);
        true
    });
    assert_eq!(got, [0]);
}

/// More distinct component anchors than a lookup can remember: the patterns
/// past the limit are filed another way, and every answer stays exact.
#[test]
fn many_component_patterns_stay_exact() {
    use super::globs::GlobIndex;
    let globs: Vec<Glob> = (0..300).map(|i| Glob::new(&alloc::format!(r"*\c{i}\*")).unwrap()).collect();
    let mut units: Vec<&[u16]> = globs.iter().map(Glob::units).collect();
    units.sort_unstable();
    let ix = GlobIndex::build(units.iter().copied(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
    let id = WideString::new(r"\c299\x\c7\c299\c7\");
    let app = id.app_id();
    let mut got = Vec::new();
    ix.for_each_match(&app, |k| {
        got.push(k);
        true
    });
    got.sort_unstable();
    let want: Vec<u32> =
        (0u32..).zip(&units).filter(|(_, p)| crate::policy::glob_match(p, &app)).map(|(k, _)| k).collect();
    assert_eq!(got, want);
    assert_eq!(want.len(), 2);
}

/// Issue 12: the `SetRules` blob decoder accepted what `arbiter rules check`
/// refuses (hop window 0, empty and NUL globs, duplicate rule names, and
/// listeners off this machine or on port 0). Now it runs the same validator.
#[test]
fn a_blob_carries_only_what_the_checker_accepts() {
    use crate::validate::{GlobError, ListenerError, Problem};
    let good =
        || RuleSet { rules: vec![Rule::any("a", Action::Proxy), Rule::any("b", Action::Block)], ..RuleSet::default() };
    assert!(blob::decode_rule_set(&blob::encode(&good()).unwrap()).is_ok());
    let mut cases: Vec<(RuleSet, Problem)> = Vec::new();
    let mut rs = good();
    rs.loop_policy.hop_window = Duration::from_millis(0);
    cases.push((rs, Problem::HopWindowZero));
    let mut rs = good();
    rs.rules[0].app.push(Glob::new("").unwrap());
    cases.push((rs, Problem::Glob(GlobError::Empty)));
    let mut rs = good();
    rs.trust.push(Glob::new("a\0b").unwrap());
    cases.push((rs, Problem::Glob(GlobError::Nul)));
    let mut rs = good();
    rs.rules[1].name = "a".into();
    cases.push((rs, Problem::DuplicateName { first: 0 }));
    let mut rs = good();
    rs.proxy.v4 = Some("93.184.216.34:0".parse().unwrap());
    cases.push((rs, Problem::Listener(ListenerError::ZeroPort)));
    let mut rs = good();
    rs.proxy.v4 = Some("93.184.216.34:8080".parse().unwrap());
    cases.push((rs, Problem::Listener(ListenerError::NotLocal)));
    let mut rs = good();
    rs.rules[0].app.push(Glob::new(&"*a".repeat(crate::validate::MAX_GLOB_STARS + 1)).unwrap());
    cases.push((rs, Problem::Glob(GlobError::TooManyStars)));
    for (rs, problem) in cases {
        let bytes = blob::encode(&rs).unwrap();
        match blob::decode_rule_set(&bytes) {
            Err(BlobError::Rejected(f)) => assert_eq!(f.problem, problem),
            other => panic!("{problem:?}: {other:?}"),
        }
        // And so the driver's compiled decoder refuses it, leaving the old rules.
        assert!(blob::decode(&bytes).is_err(), "{problem:?}");
    }
}

/// The glob tables list, for a pattern's unit outside ASCII, every unit
/// that folds to it (so matching never folds case): upper-casing plus
/// `FOLD_EXTRAS` must find them all, for every unit. (A pass over all
/// 65,536 units: natively only.)
#[test]
#[cfg_attr(miri, ignore = "65,536 case foldings")]
fn fold_preimages_are_complete() {
    use super::globs::preimages;
    for u in 0x80..=u16::MAX {
        let f = fold_unit(u);
        if f != u && f >= 0x80 {
            assert!(preimages(f).any(|p| p == u), "{u:#06x} folds to {f:#06x}");
        }
    }
    // And nothing else: each listed unit folds to its target.
    for f in 0x80..=u16::MAX {
        for p in preimages(f) {
            assert_eq!(fold_unit(p), f, "{p:#06x} listed for {f:#06x}");
        }
    }
}

/// The Kelvin sign folds to `k`: every path of the middle matcher reads it
/// so (a segment pinned to an edge or searched for, in a middle with or
/// without other non-ASCII units, in a short run or a long one).
#[test]
fn kelvin_sign_reads_as_k_everywhere() {
    use super::globs::GlobIndex;
    let long = "x".repeat(300);
    let ids = [
        String::from("\\\u{212A}\\"),
        String::from("\\\u{212A}"),
        alloc::format!("{long}\u{212A}{long}"),
        alloc::format!("{long}\\é\u{212A}\\"),
        alloc::format!("é{long}\u{212A}{long}k"),
    ];
    let patterns = ["*\\k?", "*k*", "*é*k*", "*\\ék?", "?*k*?", "*\\k"];
    for p in patterns {
        let glob = Glob::new(p).unwrap();
        let ix =
            GlobIndex::build([glob.units()].into_iter(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
        for id in &ids {
            let wide = WideString::new(id);
            let app = wide.app_id();
            let want = crate::policy::glob_match(glob.units(), &app);
            assert_eq!(ix.key_matches(0, &app), want, "{p} vs {id:?}");
        }
    }
}

/// Class maps give a unit and its folded form the same class, for every
/// unit; a rule set naming more units than one map numbers gets more maps,
/// and patterns in each still answer exactly as the reference matcher.
#[test]
#[cfg_attr(miri, ignore = "65,536 units per map")]
fn class_maps_fold_alike_and_overflow_into_new_maps() {
    use super::globs::GlobIndex;
    let letters: Vec<char> = ('a'..='z')
        .chain('à'..='þ')
        .chain('α'..='ω')
        .chain('а'..='я')
        .chain('ա'..='ֆ')
        .chain('ᴀ'..='ᴊ')
        .chain('\u{4e00}'..='\u{4e95}')
        .collect();
    let chunks: Vec<String> = letters.chunks(8).map(|c| c.iter().collect()).collect();
    let globs: Vec<Glob> = chunks.iter().map(|c| Glob::new(&alloc::format!("*{c}*\\x")).unwrap()).collect();
    let mut units: Vec<&[u16]> = globs.iter().map(Glob::units).collect();
    units.sort_unstable();
    units.dedup();
    let ix = GlobIndex::build(units.iter().copied(), |_| true, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
    assert!(letters.len() > 255, "the letters must overflow one map");
    assert!(ix.class_maps().count() >= 2, "{} maps", ix.class_maps().count());
    for map in ix.class_maps() {
        for u in 0..=u16::MAX {
            assert_eq!(map[usize::from(u)], map[usize::from(fold_unit(u))], "{u:#06x}");
        }
    }
    let upper = |c: char| {
        let mut up = c.to_uppercase();
        match (up.next(), up.next()) {
            (Some(u), None)
                if fold_unit(u16::try_from(u32::from(u)).unwrap_or(0)) == u16::try_from(u32::from(c)).unwrap_or(1) =>
            {
                u
            }
            _ => c,
        }
    };
    for chunk in &chunks {
        for id in [
            alloc::format!("\\q{chunk}r\\x"),
            alloc::format!("{}\\x", chunk.chars().map(upper).collect::<String>()),
            alloc::format!("{chunk}\\y"),
        ] {
            let wide = WideString::new(&id);
            let app = wide.app_id();
            let mut any = false;
            for (k, p) in (0u32..).zip(&units) {
                let want = crate::policy::glob_match(p, &app);
                any |= want;
                assert_eq!(ix.key_matches(k, &app), want, "{id:?}");
            }
            assert_eq!(any, id.ends_with("\\x"), "{id:?}");
        }
    }
}
