//! Vendors we recognise by their provider, sublayer or callout keys and by
//! names, and the lab profile each one maps to.
//!
//! Keys and names come from each product's published material, cited per
//! entry. A real product's own lab profile (`planned`) is used when the lab
//! has it; until then the entry names the abstract profile (`today`) that
//! stands in for it. A vendor we do not know gets a stand-in derived from its
//! filters (see [`stand_in`]).

use arbiter_lab::profiles::Profile;

/// One known vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// Short id (`arbiter`, `netebpfext`, ...).
    pub id: &'static str,
    /// Product name.
    pub product: &'static str,
    /// Provider, sublayer or callout keys (lower case, with braces).
    pub keys: &'static [&'static str],
    /// Lower-case name fragments of its provider, sublayers, callouts or filters.
    pub names: &'static [&'static str],
    /// The lab profile named after the product, once the lab has it.
    pub planned: Option<&'static str>,
    /// The existing lab profile that stands in for it.
    pub today: Option<&'static str>,
    /// Where the keys and names come from.
    pub source: &'static str,
}

/// Our own driver: driver/src/lib.rs (provider, sublayer and callout keys, display name `arbiter`).
pub const OURS: Known = Known {
    id: "arbiter",
    product: "arbiter (this project)",
    keys: &[
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1a01}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1a02}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b11}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b12}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b21}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b22}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b31}",
        "{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b32}",
    ],
    names: &[],
    planned: None,
    today: None,
    source: "driver/src/lib.rs",
};

/// The sublayer weight our driver uses when `Parameters\SublayerWeight` is unset.
pub const OUR_DEFAULT_SUBLAYER_WEIGHT: u16 = arbiter_callout::filters::DEFAULT_SUBLAYER_WEIGHT;

/// Every vendor we recognise, ours first.
pub const KNOWN: &[Known] = &[
    OURS,
    Known {
        id: "netebpfext",
        product: "eBPF for Windows (netebpfext.sys)",
        keys: &[
            "{ddb851f5-841a-4b77-8a46-bb7063e9f162}",
            "{7c7b3fb9-3331-436a-98e1-b901df457fff}",
            "{98849e12-b07d-11ec-9a30-18602489beee}",
            "{98849e13-b07d-11ec-9a30-18602489beee}",
            "{98849e0f-b07d-11ec-9a30-18602489beee}",
            "{98849e10-b07d-11ec-9a30-18602489beee}",
            "{98849e0b-b07d-11ec-9a30-18602489beee}",
        ],
        names: &["ebpf"],
        planned: Some("netebpfext"),
        today: Some("sampler"),
        source: "ebpf-for-windows docs/TroubleshootingGuide.md (expected WFP objects for BPF_PROG_TYPE_CGROUP_SOCK_ADDR)",
    },
    Known {
        id: "wfpsampler",
        product: "Microsoft WFPSampler",
        keys: &[],
        names: &["wfpsampler"],
        planned: Some("wfpsampler"),
        today: Some("sampler"),
        source: "name fragment only (keys not yet transcribed from the published sample)",
    },
    Known {
        id: "mullvad",
        product: "Mullvad VPN split tunnel",
        keys: &[],
        names: &["mullvad"],
        planned: Some("mullvad"),
        today: None,
        source: "name fragment only (keys not yet transcribed from the published driver)",
    },
    Known {
        id: "portmaster",
        product: "Safing Portmaster",
        keys: &[],
        names: &["portmaster"],
        planned: Some("portmaster"),
        today: None,
        source: "name fragment only (keys not yet transcribed from the published driver)",
    },
    Known {
        id: "proxybridge",
        product: "ProxyBridge",
        keys: &[],
        names: &["proxybridge"],
        planned: Some("proxybridge"),
        today: None,
        source: "name fragment only (keys not yet transcribed from the published driver)",
    },
    Known {
        id: "split-tunnel",
        product: "a VPN client's split-tunnel driver",
        keys: &[],
        names: &["split tunnel", "split-tunnel", "splittunnel"],
        planned: Some("split-tunnel"),
        today: None,
        source: "name fragments only",
    },
    Known {
        id: "idm",
        product: "Internet Download Manager",
        keys: &["{b92c1468-3ed5-457d-85d6-feb103281627}", "{cc6209d0-7f13-4cfa-b29c-938db0e95e6d}"],
        names: &["internet download manager", "idm filter"],
        planned: None,
        today: None,
        source: "a published `netsh wfp show filters` (wfpdiag/tests/data/astral-filters.xml)",
    },
    Known {
        id: "huorong",
        product: "Huorong security (hrwfpdrv.sys)",
        keys: &["{745590a5-d0ba-4073-a921-75a4849ff259}"],
        names: &["hrwfpdrv"],
        planned: None,
        today: None,
        source: "a published `netsh wfp show filters` (wfpdiag/tests/data/astral-filters.xml)",
    },
    Known {
        id: "sophos",
        product: "Sophos Network Threat Protection",
        keys: &["{63dd0fa6-3cc5-4f44-91ab-ef56b7af8eae}", "{916dde36-66b4-4ba2-af45-e9febfd190c0}"],
        names: &["sophos"],
        planned: None,
        today: None,
        source: "a published `netsh wfp show state` (wfpdiag/tests/data/sophos-wfpstate.xml)",
    },
    Known {
        id: "windivert",
        product: "WinDivert",
        keys: &[],
        names: &["windivert"],
        planned: None,
        today: None,
        source: "WinDivert's sublayer names (WinDivert2.2_SubLayer...) in a published `netsh wfp show state`",
    },
    Known {
        id: "windows-firewall",
        product: "Windows Defender Firewall (MPSSVC)",
        keys: &[
            "fwpm_provider_mpssvc_wf",
            "fwpm_provider_mpssvc_wsh",
            "fwpm_provider_mpssvc_app_isolation",
            "fwpm_provider_mpssvc_edp",
            "fwpm_provider_mpssvc_tenant_restrictions",
            "{4b153735-1049-4480-aab4-d1b9bdc03710}",
            "{decc16ca-3f33-4346-be1e-8fb4ae0f3d62}",
        ],
        names: &[],
        planned: None,
        today: None,
        source: "fwpmu.h FWPM_PROVIDER_MPSSVC_* and the providers of Microsoft's UWP troubleshooting page",
    },
];

/// Finds a known vendor by any key or name of its objects.
pub fn recognise<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<Known> {
    let keys: Vec<String> = keys.into_iter().map(str::to_ascii_lowercase).collect();
    let names: Vec<String> = names.into_iter().map(str::to_ascii_lowercase).collect();
    KNOWN.iter().copied().find(|k| {
        k.keys.iter().any(|key| keys.iter().any(|x| x == key))
            || k.names.iter().any(|n| names.iter().any(|x| x.contains(n)))
            || (k.id == "arbiter" && names.iter().any(|x| x == "arbiter"))
    })
}

/// What a vendor's filters let us say about it in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// It has a callout at ALE_CONNECT_REDIRECT.
    pub redirect_callout: bool,
    /// It has a callout at ALE_AUTH_CONNECT.
    pub auth_callout: bool,
    /// It has a permit filter with CLEAR_ACTION_RIGHT at ALE_CONNECT_REDIRECT.
    pub hard_permit: bool,
}

/// The lab profile for a vendor, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The profile the lab runs today (`None`: not simulated).
    pub profile: Option<&'static str>,
    /// The product's own profile, once the lab has it.
    pub planned: Option<&'static str>,
    /// Why this profile.
    pub why: String,
}

/// Picks the lab profile: the product's own when the lab has it, else the
/// known stand-in, else one derived from what its filters can do.
pub fn stand_in(known: Option<&Known>, facts: Facts) -> Mapping {
    let planned = known.and_then(|k| k.planned);
    if known.is_some_and(|k| k.id == "windows-firewall") {
        let why = "the Windows firewall: rules that permit or block, no redirect: not simulated";
        return Mapping { profile: None, planned: None, why: why.into() };
    }
    if let Some(p) = planned.and_then(Profile::from_name) {
        return Mapping { profile: Some(p.name()), planned, why: format!("the lab's {} profile", p.name()) };
    }
    if let Some(t) = known.and_then(|k| k.today) {
        let why = match planned {
            Some(p) => format!("stands in for `{p}` until the lab has that profile"),
            None => format!("known vendor, modelled as `{t}`"),
        };
        return Mapping { profile: Some(t), planned, why };
    }
    let (profile, why) = match facts {
        Facts { hard_permit: true, .. } => {
            ("write-stripper", "a permit with CLEAR_ACTION_RIGHT at connect-redirect takes the write right")
        }
        Facts { redirect_callout: true, .. } => (
            "sampler",
            "a connect-redirect callout of unknown logic: modelled as the WFP sample it likely derives from",
        ),
        Facts { auth_callout: true, .. } => {
            ("auth-blocker", "an auth-connect callout of unknown logic: modelled as one that may block unknown proxies")
        }
        _ => return Mapping { profile: None, planned, why: "no callout or hard permit at the redirect layers".into() },
    };
    let why = match planned {
        Some(p) => format!("{why} (until the lab has `{p}`)"),
        None => why.to_owned(),
    };
    Mapping { profile: Some(profile), planned, why }
}
