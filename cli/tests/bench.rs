//! `arbiter bench --quick --json` end to end: the documented keys, every
//! configuration under `runs`, and no allocation on the decision path.

use std::path::Path;
use std::process::Command;

fn bench(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .arg("bench")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (o.status.code(), v)
}

#[test]
fn quick_json_has_the_keys_and_no_allocation_per_decision() {
    let (code, v) = bench(&["--quick", "--json"]);
    assert_eq!(code, Some(0), "{v}");
    for key in ["arbiter_ns", "naive_ns", "ratio", "allocs_per_decision", "bytes_per_endpoint"] {
        assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "{key} missing: {v}");
    }
    assert!(v["arbiter_ns"].as_f64().unwrap() > 0.0 && v["naive_ns"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["counting_allocator"], true, "{v}");
    assert_eq!(v["allocs_per_decision"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["agree"], true, "{v}");
    // The top level is the largest configuration of the quick plan.
    assert_eq!((v["rules"].as_u64(), v["endpoints"].as_u64()), (Some(1_000), Some(65_536)), "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{v}");
    for run in runs {
        for column in ["arbiter", "naive", "sampler"] {
            assert_eq!(run[column]["allocs_per_decision"].as_f64(), Some(0.0), "{column}: {run}");
            assert!(run[column]["connect_ns"].as_f64().unwrap() > 0.0, "{column}: {run}");
        }
    }
}

#[test]
fn a_rules_file_replaces_the_generated_sets() {
    let (code, v) = bench(&["--quick", "--json", "--rules", "rules/default.toml"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rules_source"], "rules/default.toml");
    assert_eq!(v["rules"], 4);
    assert_eq!(v["runs"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn a_broken_rules_file_exits_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["bench", "--quick", "--rules", "no/such/rules.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("io-error"));
}
