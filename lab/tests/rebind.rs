//! The zone rule after a rebind: a split-tunnel driver moves the
//! application's socket to loopback, the host's address or a tunnel address
//! (above and below us, TCP and UDP, IPv4 and IPv6, with and without our
//! proxy excluded); the flow must still reach our proxy and then its
//! destination, and when the rebind happens above us our bind inspection
//! audits it. Each scenario's indications are the fixtures in
//! `fixtures/rebind/` (set `ARBITER_WRITE_FIXTURES=1` to rewrite them).
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "tests")]

use std::net::SocketAddr;
use std::path::Path;

use arbiter::Protocol;
use arbiter::audit::{Event, records};
use arbiter_lab::engine::{Engine, HopResult, Identity, ProxyProcess, Vendor};
use arbiter_lab::fixture::{Environment, Fixture, RulesSource};
use arbiter_lab::ours::{ArbiterCallout, OWN_FILTER, OWN_HANDLE, OWN_PROXY_APP, OWN_PROXY_PID, lab_arbiter};
use arbiter_lab::profiles::{RebindTo, SplitTunnel};
use arbiter_lab::scenario::{APP, APP_PID, DEST_V4, DEST_V6, LabRules};

const PEER_FILTER: u64 = 300;

struct Run {
    path: Vec<String>,
    delivered: bool,
    locals: Vec<SocketAddr>,
    rebinds: Vec<(u64, SocketAddr, SocketAddr)>,
    fixture: Fixture,
}

fn run(to: RebindTo, above: bool, protocol: Protocol, v6: bool, exclude_proxy: bool) -> Run {
    let rules = LabRules::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.toml")).unwrap();
    let v4l = rules.rules.proxy.v4.unwrap();
    let v6l = rules.rules.proxy.v6.unwrap();
    let arb = lab_arbiter(rules.rules.clone(), Some(v4l), Some(v6l)).unwrap();
    let ours = Vendor {
        id: Identity {
            name: "arbiter".into(),
            weight: if above { 10 } else { 20 },
            filter: OWN_FILTER,
            handle: OWN_HANDLE,
            proxy: Some(ProxyProcess {
                pid: OWN_PROXY_PID,
                app: OWN_PROXY_APP.into(),
                v4: SocketAddr::V4(v4l),
                v6: SocketAddr::V6(v6l),
                propagates_records: true,
            }),
            tunnel: None,
        },
        callout: Box::new(ArbiterCallout::new(arb, arbiter_wfp_model::Readings::default()).unwrap()),
    };
    let apps: Vec<&str> = if exclude_proxy { vec![APP, OWN_PROXY_APP] } else { vec![APP] };
    let peer = Vendor {
        id: Identity {
            name: "split-tunnel".into(),
            weight: if above { 20 } else { 10 },
            filter: PEER_FILTER,
            handle: 3,
            proxy: None,
            tunnel: None,
        },
        callout: Box::new(SplitTunnel::new(&apps, to)),
    };
    let mut engine = Engine::new(vec![ours, peer]);
    let dest: SocketAddr = (if v6 { DEST_V6 } else { DEST_V4 }).parse().unwrap();
    let mut conn = Some(engine.app_connection(APP_PID, APP, protocol, dest));
    let (mut path, mut locals, mut delivered) = (vec!["app".to_owned()], Vec::new(), false);
    while let Some(c) = conn.take() {
        assert!(path.len() < 8, "chain too long: {path:?}");
        locals.push(c.local);
        let trace = engine.classify(&c, dest);
        match trace.result {
            HopResult::ToProxy { vendor } => {
                path.push(format!("{}-proxy", engine.vendors[vendor].id.name));
                conn = engine.proxy_outbound(&trace, vendor);
            }
            HopResult::Delivered { .. } => {
                path.push(dest.to_string());
                delivered = true;
            }
            ref other => path.push(format!("{other:?}")),
        }
    }
    let ours = engine.vendors[0].callout.as_arbiter().unwrap();
    // `arbiter audit` and the chain pictures describe the record.
    for r in records(&ours.audit_log).map(Result::unwrap) {
        if let Event::Rebind(b) = r.event {
            let d = arbiter_lab::audit_log::describe(&r);
            assert_eq!(d.kind, "rebind");
            assert!(d.pid == Some(APP_PID) || d.pid == Some(OWN_PROXY_PID), "{:?}", d.pid);
            assert!(
                d.detail.contains(&format!("filter {}", b.by)) && d.detail.contains(&b.to.to_string()),
                "{}",
                d.detail
            );
        }
    }
    let notes = arbiter_lab::bind::rebind_notes(&ours.audit_log);
    let rebinds: Vec<(u64, SocketAddr, SocketAddr)> = records(&ours.audit_log)
        .filter_map(|r| match r.unwrap().event {
            Event::Rebind(b) => Some((b.by, b.from, b.to)),
            _ => None,
        })
        .collect();
    let name = format!(
        "rebind/{}/{}/{}/{}/{}",
        to.name(),
        if above { "above" } else { "below" },
        protocol,
        if v6 { "v6" } else { "v4" },
        if exclude_proxy { "proxy-excluded" } else { "proxy-tunnelled" }
    );
    let fixture = Fixture {
        name: name.clone(),
        path: format!("{}.toml", name.replace('/', "_")).into(),
        rules: RulesSource::Inline(rules.table.clone()),
        environment: Environment { own_filter: OWN_FILTER, proxy_pid: Some(OWN_PROXY_PID), ..Environment::default() },
        steps: ours.steps.clone(),
    };
    assert_eq!(notes.len(), rebinds.len());
    Run { path, delivered, locals, rebinds, fixture }
}

#[test]
fn a_rebound_flow_still_reaches_our_proxy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/rebind");
    let write = std::env::var_os("ARBITER_WRITE_FIXTURES").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut count = 0;
    for to in RebindTo::ALL {
        for above in [true, false] {
            for protocol in [Protocol::TCP, Protocol::UDP] {
                for v6 in [false, true] {
                    for exclude_proxy in [false, true] {
                        let r = run(to, above, protocol, v6, exclude_proxy);
                        let name = &r.fixture.name;
                        let want_ip = to.ip(v6);
                        assert_eq!(r.locals[0].ip(), want_ip, "{name}: the app's socket was rebound");
                        // Web traffic (TCP 443) is proxied by the default rules;
                        // UDP 443 is not, and goes straight out from its new address.
                        if protocol == Protocol::TCP {
                            assert_eq!(r.path[1], "arbiter-proxy", "{name}: {:?}", r.path);
                            assert!(r.delivered, "{name}: {:?}", r.path);
                            if exclude_proxy {
                                assert_eq!(r.locals[1].ip(), want_ip, "{name}: our proxy's socket was rebound too");
                            }
                        } else {
                            assert!(r.delivered, "{name}: {:?}", r.path);
                        }
                        // Above us our inspection sees the history; below, the
                        // rebind happens after our look.
                        if above {
                            assert!(
                                r.rebinds.iter().any(|&(by, from, to_)| by == PEER_FILTER
                                    && from.ip().is_unspecified()
                                    && to_.ip() == want_ip),
                                "{name}: rebind audited: {:?}",
                                r.rebinds
                            );
                        } else {
                            assert!(r.rebinds.is_empty(), "{name}: {:?}", r.rebinds);
                        }
                        let file = dir.join(&r.fixture.path);
                        let text = r.fixture.to_toml();
                        if write {
                            std::fs::write(&file, text).unwrap();
                        } else {
                            let on_disk = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                                panic!("{}: {e} (ARBITER_WRITE_FIXTURES=1 writes it)", file.display())
                            });
                            assert_eq!(on_disk, text, "{} is stale", file.display());
                        }
                        count += 1;
                    }
                }
            }
        }
    }
    assert_eq!(count, 48);
}
