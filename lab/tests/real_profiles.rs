//! The profiles transcribed from published drivers (issue 15): the
//! behaviours their doc comments cite, one callout at a time, and the
//! scenario outcomes with our arbiter above and below, TCP and UDP.

use core::net::SocketAddr;
use std::path::Path;

use arbiter::flow::PreviousEntry;
use arbiter::{Layer, Protocol, RedirectState};
use arbiter_lab::engine::{AuthAction, AuthView, Callout, ConnectAction, ConnectView, Connection, Opener};
use arbiter_lab::profiles::Profile;
use arbiter_lab::profiles::real::{
    Acquire, Mullvad, NETEBPFEXT_TARGET_PID, NetEbpfExt, Portmaster, ProxyBridge, ProxyBridgeVersion, Watch, WfpSampler,
};
use arbiter_lab::scenario::{APP, LabRules, Ours, Position, Scenario, run};

fn conn(protocol: Protocol, pid: u64, app: &str) -> Connection {
    Connection {
        hop: 0,
        endpoint: 1,
        pid,
        app: app.to_owned(),
        original_app: app.to_owned(),
        protocol,
        local: "10.0.0.5:50000".parse().unwrap(),
        remote: "93.184.216.34:443".parse().unwrap(),
        records: Vec::new(),
        opener: Opener::App,
    }
}

fn view<'a>(c: &'a Connection, previous: &'a [PreviousEntry], state: RedirectState, reauth: bool) -> ConnectView<'a> {
    ConnectView { conn: c, remote: c.remote, state, write_right: true, reauthorize: reauth, previous, now_ms: 10 }
}

const fn own(filter: u64) -> PreviousEntry {
    PreviousEntry { filter, local_redirect_handle: true }
}

const OTHER_LOCAL: PreviousEntry = PreviousEntry { filter: 100, local_redirect_handle: true };
const OTHER_REMOTE: PreviousEntry = PreviousEntry { filter: 100, local_redirect_handle: false };

// ---- wfpsampler ----

#[test]
fn wfpsampler_hop_cap_blocks_after_three_own_modifications() {
    let me = Profile::WfpSampler.identity(10);
    let c = conn(Protocol::TCP, 4242, APP);
    let mut s = WfpSampler { acquire: Acquire::ClearsWrite };
    // Newest first: another vendor's remote redirect, then its own (CLS 1979-2018).
    let three = [OTHER_REMOTE, own(me.filter), OTHER_REMOTE, own(me.filter), OTHER_REMOTE, own(me.filter)];
    let d = s.connect_redirect(&me, &view(&c, &three, RedirectState::NotRedirected, true));
    assert!(matches!(d.action, ConnectAction::RedirectLocal { .. }), "3 own modifications: still redirects: {d:?}");
    let four =
        [OTHER_REMOTE, own(me.filter), OTHER_REMOTE, own(me.filter), OTHER_REMOTE, own(me.filter), own(me.filter)];
    let d = s.connect_redirect(&me, &view(&c, &four, RedirectState::NotRedirected, true));
    assert_eq!(d.action, ConnectAction::Block, "{d:?}");
    assert!(!d.clears_write, "the failure exit sets the write right (CLS 2039-2052)");
}

#[test]
fn wfpsampler_redirect_states_and_reauthorization() {
    let me = Profile::WfpSampler.identity(10);
    let c = conn(Protocol::TCP, 4242, APP);
    let mut s = WfpSampler { acquire: Acquire::ClearsWrite };
    let by_self = s.connect_redirect(&me, &view(&c, &[], RedirectState::RedirectedBySelf, false));
    assert_eq!((by_self.action, by_self.clears_write), (ConnectAction::Permit, false));
    let prev = s.connect_redirect(&me, &view(&c, &[], RedirectState::PreviouslyRedirectedBySelf, false));
    assert_eq!(prev.action, ConnectAction::Continue, "nothing written");
    let reauth_own = s.connect_redirect(&me, &view(&c, &[own(me.filter)], RedirectState::NotRedirected, true));
    assert_eq!(reauth_own.action, ConnectAction::Permit);
    let reauth_other = s.connect_redirect(&me, &view(&c, &[OTHER_LOCAL], RedirectState::NotRedirected, true));
    assert_eq!(reauth_other.action, ConnectAction::Permit, "does not redirect another vendor's local redirect");
    // Without reauthorization another vendor's local redirect is redirected again (only reauth looks).
    let fresh = s.connect_redirect(&me, &view(&c, &[OTHER_LOCAL], RedirectState::RedirectedByOther, false));
    assert!(matches!(fresh.action, ConnectAction::RedirectLocal { .. }));
    let mut no_write = view(&c, &[], RedirectState::NotRedirected, false);
    no_write.write_right = false;
    assert_eq!(s.connect_redirect(&me, &no_write).action, ConnectAction::Continue);
}

#[test]
fn wfpsampler_toggle_reads_both_ways() {
    let me = Profile::WfpSampler.identity(10);
    let c = conn(Protocol::UDP, 4242, APP);
    for (acquire, hard) in [(Acquire::ClearsWrite, false), (Acquire::Unchanged, true)] {
        let d = WfpSampler { acquire }.connect_redirect(&me, &view(&c, &[], RedirectState::NotRedirected, false));
        let ConnectAction::RedirectLocal { to, target_pid } = d.action else { panic!("{d:?}") };
        // The connection's own local address with the proxy port (CLS 1386-1404).
        assert_eq!(to, "10.0.0.5:9100".parse::<SocketAddr>().unwrap());
        assert_eq!(target_pid, me.proxy.as_ref().unwrap().pid);
        assert!(d.reauthorize_if_modified, "REAUTHORIZE_IF_MODIFIED_BY_OTHERS (RD 81-104)");
        assert_eq!(d.clears_write, hard, "{acquire:?}: rights ^= WRITE");
    }
}

// ---- netebpfext ----

#[test]
fn netebpfext_skips_when_another_vendors_local_handle_is_in_the_chain() {
    let me = Profile::NetEbpfExt.identity(10);
    let c = conn(Protocol::TCP, 4242, APP);
    let mut n = NetEbpfExt { acquire: Acquire::ClearsWrite };
    // Anywhere in the chain, not only the newest (SA 2589-2608).
    let chain = [OTHER_REMOTE, OTHER_LOCAL];
    let d = n.connect_redirect(&me, &view(&c, &chain, RedirectState::RedirectedByOther, false));
    assert_eq!(d.action, ConnectAction::Permit, "{d:?}");
    assert!(d.clears_write, "applied unchanged; the documented acquire cleared the right");
    // Another vendor's remote redirect alone does not stop it.
    let d = n.connect_redirect(&me, &view(&c, &[OTHER_REMOTE], RedirectState::NotRedirected, false));
    let ConnectAction::RedirectLocal { target_pid, .. } = d.action else { panic!("{d:?}") };
    assert_eq!(target_pid, NETEBPFEXT_TARGET_PID, "the constant TARGET_PROCESS_ID (SA 13)");
    assert!(!d.reauthorize_if_modified, "applied with flags 0 (SA 2670-2673)");
    let soft = NetEbpfExt { acquire: Acquire::Unchanged }
        .connect_redirect(&me, &view(&c, &[], RedirectState::NotRedirected, false));
    assert!(!soft.clears_write);
}

#[test]
fn netebpfext_own_states_reauthorization_and_auth() {
    let me = Profile::NetEbpfExt.identity(10);
    let c = conn(Protocol::UDP, 4242, APP);
    let mut n = NetEbpfExt { acquire: Acquire::ClearsWrite };
    for st in [RedirectState::RedirectedBySelf, RedirectState::PreviouslyRedirectedBySelf] {
        assert_eq!(n.connect_redirect(&me, &view(&c, &[], st, false)).action, ConnectAction::Continue, "{st:?}");
    }
    assert_eq!(
        n.connect_redirect(&me, &view(&c, &[], RedirectState::NotRedirected, true)).action,
        ConnectAction::Permit
    );
    let mut no_write = view(&c, &[], RedirectState::NotRedirected, false);
    no_write.write_right = false;
    assert_eq!(n.connect_redirect(&me, &no_write).action, ConnectAction::Continue);
    let a = AuthView {
        conn: &c,
        remote: c.remote,
        redirected: false,
        target_pid: None,
        original_destination: None,
        now_ms: 0,
    };
    assert_eq!(n.auth_connect(&me, &a).action, AuthAction::Permit, "SOFT verdict at auth-connect");
}

// ---- mullvad ----

#[test]
fn mullvad_only_rewrites_the_local_address() {
    let me = Profile::Mullvad.identity(10);
    let mut m = Mullvad::new(&[APP]);
    let tcp = conn(Protocol::TCP, 4242, APP);
    let d = m.connect_redirect(&me, &view(&tcp, &[], RedirectState::NotRedirected, false));
    let ConnectAction::RewriteLocal { to } = d.action else { panic!("{d:?}") };
    assert_eq!(to.port(), tcp.local.port(), "the port is kept (CO 643-656)");
    assert!(!d.clears_write && !d.reauthorize_if_modified, "soft permit, flags 0");
    // Its own version in the chain: unchanged (CO 623-641).
    let mine = [PreviousEntry { filter: me.filter, local_redirect_handle: false }];
    assert_eq!(
        m.connect_redirect(&me, &view(&tcp, &mine, RedirectState::NotRedirected, true)).action,
        ConnectAction::Continue
    );
    // UDP is the bind filter's (IP_PROTOCOL != TCP); others' processes are left alone.
    let udp = conn(Protocol::UDP, 4242, APP);
    assert_eq!(
        m.connect_redirect(&me, &view(&udp, &[], RedirectState::NotRedirected, false)).action,
        ConnectAction::Continue
    );
    let other = conn(Protocol::TCP, 7, r"\device\harddiskvolume3\apps\other.exe");
    assert_eq!(
        m.connect_redirect(&me, &view(&other, &[], RedirectState::NotRedirected, false)).action,
        ConnectAction::Continue
    );
    // It never looks at the redirect state.
    let st = m.connect_redirect(&me, &view(&tcp, &[], RedirectState::RedirectedByOther, false));
    assert!(matches!(st.action, ConnectAction::RewriteLocal { .. }));
}

// ---- portmaster ----

#[test]
fn portmaster_is_absent_at_connect_redirect_and_decides_at_auth() {
    let me = Profile::Portmaster.identity(10);
    let mut p = Portmaster::default();
    let c = conn(Protocol::TCP, 4242, APP);
    assert_eq!(
        p.connect_redirect(&me, &view(&c, &[], RedirectState::NotRedirected, false)).action,
        ConnectAction::Continue
    );
    let a = AuthView {
        conn: &c,
        remote: c.remote,
        redirected: false,
        target_pid: None,
        original_destination: None,
        now_ms: 0,
    };
    assert_eq!(p.auth_connect(&me, &a).action, AuthAction::Permit);
    assert_eq!(p.auth_connect(&me, &a).action, AuthAction::Permit);
    assert_eq!(p.pended, 1, "pended on first sight only; then the cached verdict");
    let mut strict = Portmaster { blocked_apps: vec![APP.to_owned()], ..Portmaster::default() };
    assert_eq!(strict.auth_connect(&me, &a).action, AuthAction::Block, "permanent block: hard BLOCK");
}

// ---- proxybridge ----

#[test]
fn proxybridge_permits_first_skips_its_own_and_hard_permits_its_redirect() {
    let me = Profile::ProxyBridge.identity(10);
    let relay = me.proxy.clone().unwrap();
    let mut p = ProxyBridge { version: ProxyBridgeVersion::Ea115fa, acquire: Acquire::ClearsWrite, watch: Watch::All };
    let c = conn(Protocol::UDP, 4242, APP);
    let mut no_write = view(&c, &[], RedirectState::NotRedirected, false);
    no_write.write_right = false;
    assert_eq!(
        p.connect_redirect(&me, &no_write).action,
        ConnectAction::Permit,
        "PERMIT written before the check (D 110-111)"
    );
    for st in [RedirectState::RedirectedBySelf, RedirectState::PreviouslyRedirectedBySelf] {
        assert_eq!(p.connect_redirect(&me, &view(&c, &[], st, false)).action, ConnectAction::Permit);
    }
    let from_relay = conn(Protocol::TCP, relay.pid, &relay.app);
    assert_eq!(
        p.connect_redirect(&me, &view(&from_relay, &[], RedirectState::NotRedirected, false)).action,
        ConnectAction::Permit
    );
    // It does not look at others' local redirects: it redirects on top of them.
    let d = p.connect_redirect(&me, &view(&c, &[OTHER_LOCAL], RedirectState::RedirectedByOther, false));
    let ConnectAction::RedirectLocal { to, target_pid } = d.action else { panic!("{d:?}") };
    assert_eq!((to.port(), target_pid), (relay.v4.port(), relay.pid));
    assert!(d.clears_write && !d.reauthorize_if_modified, "hard permit, flags 0 (D 230-236)");
    let mut only_app = ProxyBridge { watch: Watch::App, ..p };
    let other = conn(Protocol::TCP, 7, r"\device\harddiskvolume3\apps\other.exe");
    assert_eq!(
        only_app.connect_redirect(&me, &view(&other, &[], RedirectState::NotRedirected, false)).action,
        ConnectAction::Permit
    );
}

#[test]
fn proxybridge_loopback_path_by_version_and_reading() {
    let me = Profile::ProxyBridge.identity(10);
    let mut c = conn(Protocol::TCP, 4242, APP);
    c.remote = "127.0.0.1:34010".parse().unwrap();
    let cases = [
        (ProxyBridgeVersion::Ea115fa, Acquire::ClearsWrite, ConnectAction::Block, true),
        (ProxyBridgeVersion::Ea115fa, Acquire::Unchanged, ConnectAction::Permit, false),
        (ProxyBridgeVersion::Aa0a826, Acquire::ClearsWrite, ConnectAction::Permit, true),
        (ProxyBridgeVersion::Aa0a826, Acquire::Unchanged, ConnectAction::Permit, false),
    ];
    for (version, acquire, action, hard) in cases {
        let d = ProxyBridge { version, acquire, watch: Watch::All }
            .connect_redirect(&me, &view(&c, &[], RedirectState::NotRedirected, false));
        assert_eq!((d.action, d.clears_write), (action, hard), "{version:?} {acquire:?}");
    }
}

// ---- scenarios: ours above and below, TCP and UDP ----

fn rules() -> Vec<LabRules> {
    LabRules::shipped(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
}

fn outcome(peer: Profile, position: Position, protocol: Protocol, v6: bool) -> arbiter_lab::scenario::Report {
    let rules = rules();
    let s = Scenario { ours: Ours::Arbiter, peer, position, protocol, v6, rules: 0 };
    let r = run(s, &rules).unwrap();
    assert!(!r.is_failure(), "{}: {} ({})", r.name, r.outcome.kind(), r.outcome.detail());
    assert_eq!(r.audit_failures, 0);
    r
}

fn each(peer: Profile, check: impl Fn(Position, Protocol, &arbiter_lab::scenario::Report)) {
    for position in [Position::Above, Position::Below] {
        for protocol in [Protocol::TCP, Protocol::UDP] {
            for v6 in [false, true] {
                let r = outcome(peer, position, protocol, v6);
                check(position, protocol, &r);
            }
        }
    }
}

fn delivered(r: &arbiter_lab::scenario::Report) -> bool {
    r.outcome.kind() == "delivered"
}

#[test]
fn wfpsampler_scenarios_deliver_through_both_proxies() {
    each(Profile::WfpSampler, |position, protocol, r| {
        assert!(delivered(r), "{}: {}", r.name, r.outcome.detail());
        // Both proxies on TCP (the default rules proxy TCP); the sample proxies UDP too.
        assert!(r.path.iter().any(|p| p == "wfpsampler-proxy"), "{}: {:?}", r.name, r.path);
        if protocol == Protocol::TCP {
            assert!(r.path.iter().any(|p| p == "arbiter-proxy"), "{}: {:?}", r.name, r.path);
        }
        let _ = position;
    });
}

#[test]
fn netebpfext_scenarios_deliver_and_never_redirect_over_a_local_redirect() {
    each(Profile::NetEbpfExt, |_, _, r| {
        assert!(delivered(r), "{}: {}", r.name, r.outcome.detail());
        for t in &r.traces {
            for d in t.decisions.iter().filter(|d| d.name == "netebpfext" && d.layer == Layer::ConnectRedirect) {
                // A redirect only where no other vendor's local redirect came before in this classification.
                if d.action == "redirect" {
                    let before = t.decisions.iter().take_while(|x| !core::ptr::eq(*x, d));
                    assert!(
                        !before.clone().any(|x| x.name == "arbiter" && x.action == "redirect" && x.round == d.round),
                        "{}: netebpfext redirected over ours",
                        r.name
                    );
                }
            }
        }
    });
}

#[test]
fn mullvad_scenarios_deliver_and_keep_the_remote_address() {
    each(Profile::Mullvad, |position, protocol, r| {
        assert!(delivered(r), "{}: {}", r.name, r.outcome.detail());
        let first = r.traces.first().unwrap();
        let rewrote = first.decisions.iter().any(|d| d.name == "mullvad" && d.action == "rewrite-local");
        // Below us it meets the application's own TCP connection (to a global address) first.
        assert_eq!(rewrote, protocol == Protocol::TCP && position == Position::Below, "{}", r.name);
        if protocol == Protocol::TCP {
            assert!(r.path.iter().any(|p| p == "arbiter-proxy"), "our redirect still applies: {:?}", r.path);
        }
    });
}

#[test]
fn portmaster_scenarios_deliver_and_it_acts_only_at_auth_connect() {
    each(Profile::Portmaster, |_, _, r| {
        assert!(delivered(r), "{}: {}", r.name, r.outcome.detail());
        for d in r.traces.iter().flat_map(|t| &t.decisions).filter(|d| d.name == "portmaster") {
            match d.layer {
                Layer::ConnectRedirect => assert_eq!(d.action, "continue"),
                Layer::AuthConnect => assert_eq!(d.action, "permit"),
            }
        }
    });
}

#[test]
fn proxybridge_scenarios_its_loopback_path_blocks_our_redirected_tcp_when_below_us() {
    each(Profile::ProxyBridge, |position, protocol, r| {
        if position == Position::Above && protocol == Protocol::TCP {
            // ea115fa acquires, sees our loopback proxy as the destination, and
            // releases without applying: the documented acquire left a hard BLOCK.
            let arbiter_lab::scenario::Outcome::Blocked { by, layer, .. } = &r.outcome else {
                panic!("{}: {}", r.name, r.outcome.kind())
            };
            assert_eq!((by.as_str(), *layer), ("proxybridge", Layer::ConnectRedirect));
        } else {
            assert!(delivered(r), "{}: {}", r.name, r.outcome.detail());
        }
    });
}
