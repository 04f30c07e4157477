//! Generates the stand-in's declarations with bindgen from MinGW-w64's DDK
//! headers (Debian `mingw-w64-x86-64-dev`), laid out as wdk-sys 0.5 lays out
//! its own: types and constants for the crate root, functions for `ntddk`.
//!
//! The options mirror what wdk-build 0.6 passes to bindgen for a WDM driver
//! (core types, `Default` derives, enums as modules of constants, no builtin
//! function declarations, `_KERNEL_MODE`/`_AMD64_`/`_WIN64`), so a name or
//! signature the driver uses wrongly fails here as it would on Windows.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// Where Debian's `mingw-w64-x86-64-dev` puts the headers (override with `MINGW_INCLUDE`).
const DEFAULT_INCLUDE: &str = "/usr/x86_64-w64-mingw32/include";

/// The headers wdk-sys 0.5 binds for a WDM driver that MinGW-w64 also ships.
const HEADER: &str = "#include <ntifs.h>\n#include <ntddk.h>\n";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=MINGW_INCLUDE");
    let include = env::var("MINGW_INCLUDE").map_or_else(|_| PathBuf::from(DEFAULT_INCLUDE), PathBuf::from);
    let ddk = include.join("ddk");
    if !ddk.join("wdm.h").is_file() {
        panic!(
            "{}: no MinGW-w64 DDK headers (apt-get install mingw-w64-x86-64-dev, or set MINGW_INCLUDE)",
            ddk.display()
        );
    }
    println!("cargo::rerun-if-changed={}", ddk.join("wdm.h").display());
    println!("cargo::rerun-if-changed={}", ddk.join("ntddk.h").display());
    println!("cargo::rerun-if-changed={}", ddk.join("ntifs.h").display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let builtin = clang_builtin_headers();

    generate(&include, &builtin, bindgen::CodegenConfig::TYPES | bindgen::CodegenConfig::VARS, &out.join("types.rs"));
    generate(
        &include,
        &builtin,
        (bindgen::CodegenConfig::TYPES | bindgen::CodegenConfig::VARS).complement(),
        &out.join("ntddk_raw.rs"),
    );
    status_codes(&include, &out.join("status.rs"));
    // wdk-sys links the WDK's ntoskrnl.lib; there is none here, so the
    // functions are imported from ntoskrnl.exe with raw-dylib (rust-lld then
    // writes the import table itself). scripts/check-driver.sh checks each
    // import against MinGW-w64's libntoskrnl.a export list.
    let functions = fs::read_to_string(out.join("ntddk_raw.rs")).expect("bindgen wrote ntddk_raw.rs");
    let linked = functions.replace(
        "unsafe extern \"C\" {",
        "#[link(name = \"ntoskrnl.exe\", kind = \"raw-dylib\", modifiers = \"+verbatim\")]\nunsafe extern \"C\" {",
    );
    assert!(linked != functions, "bindgen output has no extern block");
    fs::write(out.join("ntddk.rs"), linked).expect("write ntddk.rs");
}

/// `STATUS_*` from MinGW-w64's `ntstatus.h`, typed `NTSTATUS` as wdk-sys's
/// hand-kept list types them: the header's `((NTSTATUS)0x...)` casts are
/// beyond bindgen's macro evaluation.
fn status_codes(include: &Path, file: &Path) {
    let header = include.join("ntstatus.h");
    println!("cargo::rerun-if-changed={}", header.display());
    let text = fs::read_to_string(&header).unwrap_or_else(|e| panic!("{}: {e}", header.display()));
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("#define"), Some(name), Some(value)) = (words.next(), words.next(), words.next()) else { continue };
        let Some(hex) = value.strip_prefix("((NTSTATUS)0x").and_then(|v| v.strip_suffix(')')) else { continue };
        let hex = hex.trim_end_matches(['L', 'l']);
        if !name.starts_with("STATUS_") || !seen.insert(name.to_owned()) {
            continue;
        }
        let code = u32::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{name}: {value}: {e}"));
        out.push_str(&format!("pub const {name}: NTSTATUS = {code:#010x}_u32 as i32;\n"));
    }
    assert!(seen.contains("STATUS_SUCCESS"), "{}: no STATUS_SUCCESS", header.display());
    fs::write(file, out).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// clang's own headers (`mm_malloc.h`, `stddef.h`, ...), which the MinGW-w64
/// headers include: `CLANG_BUILTIN_INCLUDE`, or Debian's
/// `libclang-common-*-dev` directory.
fn clang_builtin_headers() -> PathBuf {
    println!("cargo::rerun-if-env-changed=CLANG_BUILTIN_INCLUDE");
    if let Ok(dir) = env::var("CLANG_BUILTIN_INCLUDE") {
        return PathBuf::from(dir);
    }
    let found = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .flat_map(|llvm| fs::read_dir(llvm.path().join("lib/clang")).into_iter().flatten().flatten())
        .map(|version| version.path().join("include"))
        .filter(|dir| dir.join("mm_malloc.h").is_file())
        .max();
    found.unwrap_or_else(|| {
        panic!("no clang builtin headers under /usr/lib/llvm-*/lib/clang/*/include (apt-get install libclang-common-14-dev, or set CLANG_BUILTIN_INCLUDE)")
    })
}

fn generate(include: &Path, builtin: &Path, what: bindgen::CodegenConfig, file: &Path) {
    bindgen::Builder::default()
        .header_contents("wdk-sys-standin.h", HEADER)
        .with_codegen_config(what)
        .use_core()
        .derive_default(true)
        .generate_cstr(true)
        .detect_include_paths(false)
        .layout_tests(false)
        .merge_extern_blocks(true)
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .must_use_type("NTSTATUS")
        // Deprecated allocation routines wdk-sys leaves out too.
        .blocklist_item("ExAllocatePoolWithTag")
        .blocklist_item("ExAllocatePoolWithQuotaTag")
        .blocklist_item("ExAllocatePoolWithTagPriority")
        .blocklist_item("ExAllocatePool")
        // clang's AMX intrinsics type (packed and aligned: rustc refuses it).
        .blocklist_type("__tile1024i.*")
        .clang_arg("--target=x86_64-w64-mingw32")
        .clang_arg("-fno-builtin")
        .clang_arg("-fms-extensions")
        .clang_arg(format!("-isystem{}", builtin.display()))
        .clang_arg(format!("-I{}", include.join("ddk").display()))
        .clang_arg(format!("-I{}", include.display()))
        .clang_args([
            "-D_WIN64",
            "-D_AMD64_",
            "-DAMD64",
            "-D_KERNEL_MODE",
            "-DNTDDI_VERSION=0x0A000008",
            "-D_WIN32_WINNT=0x0A00",
        ])
        .clang_arg("-Wno-everything")
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over {}: {e}", include.display()))
        .write_to_file(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}
