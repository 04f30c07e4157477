//! The sampler column decides as the lab's `sampler` profile does: same
//! verdict and same redirect target for every workload flow in every
//! redirect state, write right and previousVersion chain.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side tests")]

use std::net::SocketAddr;

use arbiter::decide::{Env, ProxyRegistration, Verdict};
use arbiter::flow::{ConnectRedirectInput, Flow, PreviousChain, PreviousEntry, RedirectState};
use arbiter_bench::sampler::Sampler;
use arbiter_bench::workload::{Workload, rule_set};
use arbiter_lab::engine::{Callout, ConnectAction, ConnectView, Connection, Opener, RecordEntry, RedirectContext};
use arbiter_lab::profiles::{self, Profile, Wants};

#[test]
fn decides_like_the_lab_profile() {
    let w = Workload::new(rule_set(1_000));
    let me = Profile::Sampler.identity(0);
    let proxy = me.proxy.clone().unwrap();
    let mut lab = profiles::Sampler { wants: Wants::Rules(Box::new(w.rules.clone())) };
    let (Ok(SocketAddr::V4(v4)), Ok(SocketAddr::V6(v6))) = (proxy.v4.to_string().parse(), proxy.v6.to_string().parse())
    else {
        panic!("the lab's listeners")
    };
    let env =
        Env { own_filter: me.filter, proxy: Some(ProxyRegistration { pid: proxy.pid, v4: Some(v4), v6: Some(v6) }) };
    let ours = Sampler::new(env, &w.rules);

    let own = PreviousEntry { filter: me.filter, local_redirect_handle: true };
    let other = PreviousEntry { filter: 999, local_redirect_handle: true };
    let chains: [&[PreviousEntry]; 4] = [&[], &[own], &[other], &[other, own]];
    let states = [
        RedirectState::NotRedirected,
        RedirectState::RedirectedBySelf,
        RedirectState::RedirectedByOther,
        RedirectState::PreviouslyRedirectedBySelf,
    ];
    let context =
        |s: &arbiter_bench::workload::Shape| RedirectContext { original_remote: s.remote, original_local: s.local };
    let mut compared = 0usize;
    let mut proxied = 0usize;
    for (i, s) in w.shapes.iter().enumerate().step_by(3) {
        for state in states {
            for write_right in [true, false] {
                for chain in chains {
                    for pid in [s.pid, proxy.pid] {
                        let records = match state {
                            RedirectState::NotRedirected => vec![],
                            RedirectState::RedirectedBySelf => {
                                vec![RecordEntry { handle: me.handle, context: context(s) }]
                            }
                            RedirectState::RedirectedByOther => vec![RecordEntry { handle: 77, context: context(s) }],
                            RedirectState::PreviouslyRedirectedBySelf => vec![
                                RecordEntry { handle: me.handle, context: context(s) },
                                RecordEntry { handle: 77, context: context(s) },
                            ],
                        };
                        let conn = Connection {
                            hop: 0,
                            endpoint: i as u64,
                            pid,
                            app: s.app.to_string(),
                            original_app: s.app.to_string(),
                            protocol: s.protocol,
                            local: s.local,
                            remote: s.remote,
                            records,
                            opener: Opener::App,
                        };
                        let view = ConnectView {
                            conn: &conn,
                            remote: s.remote,
                            state,
                            write_right,
                            reauthorize: !chain.is_empty(),
                            previous: chain,
                            now_ms: 0,
                        };
                        let expected = lab.connect_redirect(&me, &view);
                        // The lab's profile sees no package: neither does ours here.
                        let input = ConnectRedirectInput {
                            flow: Flow { pid, package: None, ..w.connect(i as u64).flow },
                            state,
                            write_right,
                            reauthorize: !chain.is_empty(),
                            previous: PreviousChain::from_entries(chain.iter().copied()),
                        };
                        let got = ours.connect(&input);
                        let want = match expected.action {
                            ConnectAction::Continue => (Verdict::Continue, None),
                            ConnectAction::Permit => (Verdict::Permit, None),
                            ConnectAction::Block => (Verdict::Block, None),
                            ConnectAction::RedirectLocal { to, .. } => (Verdict::Proxy, Some(to)),
                            other => panic!("the sampler never does {other:?}"),
                        };
                        assert_eq!((got.verdict, got.to), want, "{input:?}: lab says {}", expected.reason);
                        compared += 1;
                        proxied += usize::from(got.verdict == Verdict::Proxy);
                    }
                }
            }
        }
    }
    assert!(compared > 40_000 && proxied > 1_000, "{compared} compared, {proxied} proxied");
}
