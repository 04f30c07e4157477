//! `arbiter wfpdiag`'s reader on real netsh output (tests/data: each file says
//! where it comes from) and on broken, hostile and huge inputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests")]

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use arbiter_wfpdiag::Machine;
use arbiter_wfpdiag::events::{attribute, name_filter};
use arbiter_wfpdiag::inventory::Inventory;
use arbiter_wfpdiag::model::{EventType, Layer, LayerKind, Weight};
use arbiter_wfpdiag::setup::lab_setup;
use arbiter_wfpdiag::xml::{FileKind, MAX_TEXT};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn machine(names: &[&str]) -> Machine {
    let mut m = Machine::default();
    for n in names {
        m.read_file(&data(n)).unwrap_or_else(|e| panic!("{e}"));
    }
    m
}

fn read_str(text: &str) -> Result<Machine, String> {
    let mut m = Machine::default();
    m.read(text.as_bytes(), "input.xml").map_err(|e| e.to_string())?;
    Ok(m)
}

const CR4: Layer = Layer { kind: LayerKind::ConnectRedirect, v6: false };
const AC4: Layer = Layer { kind: LayerKind::AuthConnect, v6: false };

#[test]
fn ebpf_guide_objects_are_recognised_as_netebpfext_after_us() {
    let m = machine(&["ebpf-guide-state.xml"]);
    assert_eq!(m.files[0].kind, FileKind::Wfpstate);
    assert_eq!(m.sublayers.len(), 3);
    assert_eq!(m.callouts.len(), 3);
    assert_eq!(m.filters.len(), 3);
    let f = m.filters.iter().find(|f| f.id == 68591).unwrap();
    assert_eq!(f.layer(), Some(CR4));
    assert_eq!(f.action, "FWP_ACTION_CALLOUT_TERMINATING");
    // netsh prints the callout key as <filterType>.
    assert_eq!(f.callout.as_deref(), Some("{98849e0f-b07d-11ec-9a30-18602489beee}"));
    assert_eq!(f.weight, Weight::Empty);
    assert_eq!(f.effective_weight, Some(0));
    assert!(!f.clears_action_right() && !f.persistent() && !f.boot_time());

    let inv = Inventory::of(&m);
    assert_eq!(inv.vendors.len(), 1, "{:?}", inv.vendors);
    let v = &inv.vendors[0];
    assert_eq!(v.known.unwrap().id, "netebpfext");
    assert_eq!(v.mapping.planned, Some("netebpfext"));
    assert!(v.mapping.profile.is_some());
    // Not installed: we sit at our default weight 0x8000, far above eBPF's 8..10.
    assert!(!inv.ours_present);
    let order = &inv.order[&CR4];
    assert_eq!(order[0].filter, None, "our hypothetical filter classifies first");
    assert_eq!(order[1].sublayer_weight, Some(8));
    assert!(inv.before_us.is_empty());
}

#[test]
fn real_filters_xml_inventories_third_party_redirectors() {
    let m = machine(&["astral-filters.xml"]);
    assert_eq!(m.files[0].kind, FileKind::Wfpdiag);
    let inv = Inventory::of(&m);
    let at_cr: Vec<u64> = inv.order[&CR4].iter().filter_map(|s| s.filter).map(|i| m.filters[i].id).collect();
    assert_eq!(at_cr, [78456, 78455, 80899], "IDM's two max-weight filters, then hrwfpdrv");
    let idm = m.filters.iter().find(|f| f.id == 78456).unwrap();
    assert_eq!(idm.weight, Weight::Exact(u64::MAX));
    assert!(idm.permit_if_unregistered());
    assert_eq!(idm.conditions.len(), 3);
    assert!(idm.conditions.iter().any(|c| c == "IP_REMOTE_PORT = 1001"), "{:?}", idm.conditions);
    let names: Vec<&str> = inv.vendors.iter().filter_map(|v| v.known.map(|k| k.id)).collect();
    assert!(names.contains(&"idm") && names.contains(&"huorong"), "{names:?}");
    // filters.xml has no sublayers: the third-party order relative to us is unknown, and said so.
    assert!(inv.unknown_order.iter().any(|(l, _)| *l == CR4));
    // Boot-time and persistent flags come through.
    assert!(m.index.len() >= m.filters.len());
}

#[test]
fn real_wfpstate_orders_sophos_around_our_default_weight() {
    let m = machine(&["sophos-wfpstate.xml"]);
    assert!(m.sublayers.len() > 20);
    let inv = Inventory::of(&m);
    let order = &inv.order[&AC4];
    let ours = order.iter().position(|s| s.filter.is_none()).unwrap();
    let weights: Vec<Option<u16>> = order.iter().map(|s| s.sublayer_weight).collect();
    assert_eq!(weights[ours], Some(0x8000));
    assert_eq!(weights[ours - 1], Some(32771), "Sophos NTP DNS sublayer is above us");
    assert_eq!(weights[ours + 1], Some(32766), "Sophos connection tracking is just below us");
    let before: Vec<u64> = inv.before_us.iter().filter(|b| b.layer == AC4).map(|b| m.filters[b.filter].id).collect();
    assert_eq!(before, [109591]);
    // An inspection callout cannot take our write right.
    assert_eq!(inv.before_us[0].takes_write_right, Some(false));
    let sophos = inv.vendors.iter().find(|v| v.known.is_some_and(|k| k.id == "sophos")).unwrap();
    assert_eq!(sophos.mapping.profile, Some("auth-blocker"));
    // The Windows firewall is inventoried but not simulated.
    let fw = inv.vendors.iter().find(|v| v.known.is_some_and(|k| k.id == "windows-firewall")).unwrap();
    assert_eq!(fw.mapping.profile, None);
}

#[test]
fn uwp_case5_drop_is_attributed_to_the_default_block_rule() {
    let m = machine(&["uwp-case5-wfpdiag.xml"]);
    assert_eq!(m.events.len(), 1);
    let e = &m.events[0];
    assert_eq!(e.kind, EventType::Drop);
    assert_eq!(e.protocol, Some(6));
    assert_eq!(e.local.unwrap().to_string(), "10.216.117.17:52956");
    assert_eq!(e.remote.unwrap().to_string(), "10.1.1.1:53");
    assert!(e.app.as_deref().unwrap().ends_with(r"\uwpsocketclient.exe"), "{:?}", e.app);
    assert_eq!(e.time_ms, Some(1_590_180_893_499));
    let inv = Inventory::of(&m);
    let a = &attribute(&m, &inv, &[])[0];
    assert_eq!(a.layer, Some(AC4));
    let by = a.decided_by.as_ref().unwrap();
    assert_eq!((by.id, by.name.as_str(), by.found, by.ours), (121_180, "Block Outbound Default Rule", true, false));
    assert_eq!(by.vendor, "Windows Defender Firewall (MPSSVC)");
    let chain: Vec<(u64, &str, &str, bool)> =
        a.chain.iter().map(|(n, act)| (n.id, n.sublayer.as_str(), act.as_str(), n.found)).collect();
    assert_eq!(
        chain,
        [
            (121_180, "FWPP_SUBLAYER_INTERNAL_FIREWALL_WSH", "block", true),
            (121_165, "FWPP_SUBLAYER_INTERNAL_FIREWALL_WF", "permit", false)
        ]
    );
    // An id the files do not have is named as such, and as ours when our log says so.
    assert!(name_filter(&m, &inv, 424_242, &[424_242]).ours);
}

#[test]
fn uwp_case1_allow_is_read_with_ipv6_addresses() {
    let m = machine(&["uwp-case1-wfpdiag.xml"]);
    let e = &m.events[0];
    assert_eq!(e.kind, EventType::Allow);
    assert_eq!(e.remote.unwrap().to_string(), "[2620:1ec:c11::200]:443");
    let inv = Inventory::of(&m);
    let a = &attribute(&m, &inv, &[])[0];
    assert_eq!(a.layer, Some(Layer { kind: LayerKind::AuthConnect, v6: true }));
    assert_eq!(a.decided_by.as_ref().unwrap().name, "InternetClient Default Rule");
    let f = m.filters.iter().find(|f| f.id == 125_918).unwrap();
    assert!(f.conditions.iter().any(|c| c.starts_with("IP_REMOTE_ADDRESS in ::..ffff:")), "{:?}", f.conditions);
}

#[test]
fn files_of_one_machine_merge() {
    let m = machine(&["astral-filters.xml", "uwp-case5-wfpdiag.xml"]);
    assert_eq!(m.files.len(), 2);
    assert!(m.filters.iter().any(|f| f.id == 78456) && m.filters.iter().any(|f| f.id == 121_180));
}

#[test]
fn the_published_typing_slip_is_an_error_at_its_line_and_column() {
    let text = std::fs::read_to_string(data("uwp-case1-wfpdiag.xml")).unwrap();
    let slipped = text.replacen("FWPM_SUBLAYER_MPSSVC_WSH</subLayerKey>", "FWPM_SUBLAYER_MPSSVC_WSH</subLayerKey", 1);
    let line = slipped.lines().position(|l| l.ends_with("</subLayerKey")).unwrap() + 1;
    let err = read_str(&slipped).unwrap_err();
    assert!(err.starts_with(&format!("input.xml: line {line}, column ")), "{err}");
    assert!(err.contains("not well-formed XML") && err.contains("subLayerKey"), "{err}");
}

#[test]
fn truncated_input_names_the_open_element() {
    let text = std::fs::read_to_string(data("sophos-wfpstate.xml")).unwrap();
    let cut = &text[..text.find("</layers>").unwrap()];
    let err = read_str(cut).unwrap_err();
    assert!(err.contains("the file ends inside <layers>"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn xml_that_is_not_netshs_is_refused_with_its_position() {
    let err = read_str("<?xml version=\"1.0\"?>\n<html><body/></html>").unwrap_err();
    assert_eq!(
        err,
        "input.xml: line 2, column 1: root element <html> is not netsh's (expected <wfpdiag>, <wfpstate> or <netEvents>)"
    );
    let err = read_str("").unwrap_err();
    assert!(err.contains("no XML element"), "{err}");
    let err = read_str("MSCF\0\0\0\0rest of a cabinet").unwrap_err();
    assert!(err.contains(".cab archive") && err.contains("expand wfpdiag.cab"), "{err}");
    let err = read_str("\u{feff}hello").unwrap_err();
    assert!(err.contains("text outside any element"), "{err}");
    let mut m = Machine::default();
    let utf16 = [0xffu8, 0xfe, b'<', 0];
    let err = m.read(&utf16[..], "u16.xml").unwrap_err().to_string();
    assert!(err.contains("UTF-16"), "{err}");
    let err = read_str("<wfpdiag><filters><item><filterId>x</filterId></item></filters></wfpdiag>").unwrap_err();
    assert!(err.contains("filterId") && err.contains("not a number"), "{err}");
}

#[test]
fn oversized_text_and_tokens_are_refused_without_buffering_them() {
    let big = format!("<wfpdiag><filters><item><name>{}</name></item></filters></wfpdiag>", "a".repeat(MAX_TEXT + 1));
    let err = read_str(&big).unwrap_err();
    assert!(err.contains("more than 64 KiB of text"), "{err}");
    // A 100 MB attribute-less tag never closes: refused at the token limit.
    let endless = std::io::repeat(b'a').take(100 * 1024 * 1024);
    let input = std::io::Cursor::new(b"<wfpdiag><".to_vec()).chain(endless);
    let mut m = Machine::default();
    let err = m.read(BufReader::new(input), "endless.xml").unwrap_err().to_string();
    assert!(err.contains("longer than 1024 KiB"), "{err}");
}

#[test]
fn lab_setup_lists_the_machine_in_classification_order() {
    let m = machine(&["ebpf-guide-state.xml"]);
    let inv = Inventory::of(&m);
    let s = lab_setup(&m, &inv, "ebpf");
    let names: Vec<(&str, bool)> = s.vendors.iter().map(|v| (v.name.as_str(), v.ours)).collect();
    assert_eq!(names, [("arbiter", true), ("eBPF for Windows (netebpfext.sys)", false)]);
    let text = s.to_toml().unwrap();
    let back = arbiter_lab::machine::MachineSetup::from_toml(&text, "setup.toml").unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_capture_cab_is_read_directly() {
    // netsh wfp capture writes wfpdiag.xml and an .etl trace into one MSZIP cabinet.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfpdiag.cab");
    let mut builder = cab::CabinetBuilder::new();
    let folder = builder.add_folder(cab::CompressionType::MsZip);
    folder.add_file("wfpdiag.etl");
    folder.add_file("wfpdiag.xml");
    let mut writer = builder.build(std::fs::File::create(&path).unwrap()).unwrap();
    while let Some(mut w) = writer.next_file().unwrap() {
        let body = if w.file_name().ends_with(".xml") {
            std::fs::read(data("uwp-case5-wfpdiag.xml")).unwrap()
        } else {
            vec![0x5a; 100_000]
        };
        std::io::Write::write_all(&mut w, &body).unwrap();
    }
    writer.finish().unwrap();
    let mut m = Machine::default();
    m.read_file(&path).unwrap();
    assert!(m.files[0].name.ends_with("wfpdiag.cab:wfpdiag.xml"), "{}", m.files[0].name);
    assert_eq!(m.events.len(), 1);
    assert_eq!(m.events[0].filter, Some(121_180));
    // A cabinet without XML says what it expected.
    let empty = dir.path().join("empty.cab");
    let mut builder = cab::CabinetBuilder::new();
    builder.add_folder(cab::CompressionType::None).add_file("trace.etl");
    let mut writer = builder.build(std::fs::File::create(&empty).unwrap()).unwrap();
    while let Some(mut w) = writer.next_file().unwrap() {
        std::io::Write::write_all(&mut w, b"etl").unwrap();
    }
    writer.finish().unwrap();
    let err = Machine::default().read_file(&empty).unwrap_err().to_string();
    assert!(err.contains("holds no .xml file"), "{err}");
}
