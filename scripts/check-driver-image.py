#!/usr/bin/env python3
"""Checks a linked kernel image of the arbiter driver (see check-driver.sh).

Usage: check-driver-image.py IMAGE MAP INX MINGW_LIB_DIR

- PE32+ AMD64, native subsystem, entry point = the exported DriverEntry;
- imports only from the allowed kernel modules, no delay-load imports,
  no symbol imported twice;
- every ntoskrnl.exe / hal.dll / netio.sys / ksecdd.sys import is in
  MinGW-w64's export list for that module (libntoskrnl.a, libhal.a,
  libnetio.a, libksecdd.a, read with nm),
  except a short allow-list of newer exports, each with its documentation
  page and minimum Windows version; the INF targets the newest of those;
- every fwpkclnt.sys import is a documented WFP kernel routine;
- kernel stack: the frame of every function (from its prologue) and the
  deepest call chain from each classifyFn, which must stay under 2 KiB
  (the whole path; outside the compiled rule matcher on its own, and above
  the glob matcher within GLOB_ENTRY_BUDGET, so a regression names the part
  that grew).
"""

import re
import struct
import subprocess
import sys

# ksecdd.sys: BCryptGenRandom for the hash seed (bcrypt.h: kernel-mode
# callers link Ksecdd.lib; the routine is ksecdd.sys's export).
ALLOWED_MODULES = {"ntoskrnl.exe", "hal.dll", "fwpkclnt.sys", "netio.sys", "ksecdd.sys"}
REQUIRED_MODULES = {"ntoskrnl.exe", "fwpkclnt.sys"}

# ntoskrnl exports newer than MinGW-w64 10's libntoskrnl.a:
# name -> (DDI page under learn.microsoft.com/windows-hardware/drivers/ddi/,
#          minimum Windows version, its build number).
NEWER_EXPORTS = {
    "ExAllocatePool2": ("wdm/nf-wdm-exallocatepool2", "Windows 10 version 2004", 19041),
    "KeQueryInterruptTimePrecise": ("wdm/nf-wdm-kequeryinterrupttimeprecise", "Windows 8.1", 9600),
    "IoOpenDriverRegistryKey": ("wdm/nf-wdm-ioopendriverregistrykey", "Windows 10 version 2004", 19041),
}

# Documented WFP kernel routines exported by fwpkclnt.sys: name -> DDI page.
WFP_ROUTINES = {
    name: f"{header}/nf-{header}-{name.lower()}"
    for header, names in {
        "fwpsk": [
            "FwpsCalloutRegister3", "FwpsCalloutUnregisterById0", "FwpsCalloutUnregisterByKey0",
            "FwpsRedirectHandleCreate0", "FwpsRedirectHandleDestroy0",
            "FwpsQueryConnectionRedirectState0", "FwpsAcquireClassifyHandle0",
            "FwpsReleaseClassifyHandle0", "FwpsAcquireWritableLayerDataPointer0",
            "FwpsApplyModifiedLayerData0", "FwpsPendClassify0", "FwpsCompleteClassify0",
        ],
        "fwpmk": [
            "FwpmEngineOpen0", "FwpmEngineClose0", "FwpmTransactionBegin0",
            "FwpmTransactionCommit0", "FwpmTransactionAbort0", "FwpmProviderAdd0",
            "FwpmSubLayerAdd0", "FwpmCalloutAdd0", "FwpmFilterAdd0", "FwpmFilterDeleteById0",
            "FwpmBfeStateGet0", "FwpmBfeStateSubscribeChanges0", "FwpmBfeStateUnsubscribeChanges0",
        ],
    }.items()
    for name in names
}

# Routines of the WDK's static libraries the driver must contain.
STATIC_ROUTINES = ["WdmlibIoCreateDeviceSecure"]

STACK_LIMIT = 2048
# The whole classify path is held to the limit; so is everything outside the
# rule matcher, and the frames above the glob matcher to GLOB_ENTRY_BUDGET,
# so that a regression names the part that grew.
ENFORCE_STACK = True
# How deep the classify path may be where it enters the glob matcher: the
# classifyFn, the adapter, the decision and the rule walk above it (1,344 B
# today). What is left of the limit is the glob matcher's share.
GLOB_ENTRY_BUDGET = 1376

# The classifyFn entry points the driver registers (driver/src/lib.rs).
CLASSIFY_ROOTS = re.compile(r"^arbiter_driver::classify_(cr|ac|ec)[46]$")

# Where the classify path enters the compiled rule matcher (src/compiled*):
# reported apart, so that the matcher's share of the limit is known.
RULE_MATCHER = re.compile(r"CompiledRules as arbiter::policy::Policy>::first_match$|^arbiter::compiled::globs::GlobIndex::any_match$")

# The glob matcher inside it (src/compiled/globs.rs, and its trait impls).
GLOB_MATCHER = re.compile(r"^arbiter::compiled::globs::|^_<\S+ as arbiter::compiled::globs::")


def fail_list():
    fails = []
    return fails, fails.append


def pe_info(path):
    data = open(path, "rb").read()
    u16 = lambda o: struct.unpack_from("<H", data, o)[0]
    u32 = lambda o: struct.unpack_from("<I", data, o)[0]
    u64 = lambda o: struct.unpack_from("<Q", data, o)[0]

    def cstr(o):
        return data[o:data.index(b"\0", o)].decode("ascii")

    if data[:2] != b"MZ":
        sys.exit(f"{path}: not an MZ image")
    pe = u32(0x3C)
    if data[pe:pe + 4] != b"PE\0\0":
        sys.exit(f"{path}: no PE signature")
    coff = pe + 4
    opt = coff + 20
    info = {
        "machine": u16(coff),
        "magic": u16(opt),
        "entry": u32(opt + 16),
        "subsystem": u16(opt + 68),
        "image_base": u64(opt + 24),
    }
    ndirs = u32(opt + 108)
    dirs = opt + 112

    def directory(i):
        return (u32(dirs + 8 * i), u32(dirs + 8 * i + 4)) if i < ndirs else (0, 0)

    sections = []
    sh = opt + u16(coff + 16)
    for i in range(u16(coff + 2)):
        s = sh + 40 * i
        name = data[s:s + 8].rstrip(b"\0").decode("ascii", "replace")
        sections.append((name, u32(s + 12), max(u32(s + 8), u32(s + 16)), u32(s + 20)))
    info["sections"] = sections

    def off(rva):
        for _, va, size, raw in sections:
            if va <= rva < va + size:
                return raw + rva - va
        raise ValueError(f"rva 0x{rva:x} outside every section")

    imports = []  # (module, name) in table order
    irva, _ = directory(1)
    if irva:
        d = off(irva)
        while u32(d + 12):
            module = cstr(off(u32(d + 12)))
            t = off(u32(d) or u32(d + 16))
            while u64(t):
                e = u64(t)
                imports.append((module, f"#{e & 0xFFFF}" if e >> 63 else cstr(off(e & 0x7FFFFFFF) + 2)))
                t += 8
            d += 20
    info["imports"] = imports
    info["delay_imports"] = directory(13)[0] != 0

    exports = {}
    erva, _ = directory(0)
    if erva:
        e = off(erva)
        n_names, funcs, names, ords = u32(e + 24), u32(e + 28), u32(e + 32), u32(e + 36)
        for i in range(n_names):
            name = cstr(off(u32(off(names) + 4 * i)))
            ordinal = u16(off(ords) + 2 * i)
            exports[name] = u32(off(funcs) + 4 * ordinal)
    info["exports"] = exports
    return info


def nm_exports(lib):
    out = subprocess.run(["nm", "-g", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            names.add(parts[2].removeprefix("__imp_"))
    return names


def demangle(sym):
    """Rust legacy mangling (_ZN...E) to a path without the hash."""
    if not sym.startswith("_ZN"):
        return sym
    i, parts = 3, []
    while i < len(sym) and sym[i].isdigit():
        j = i
        while sym[j].isdigit():
            j += 1
        n = int(sym[i:j])
        parts.append(sym[j:j + n])
        i = j + n
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    path = "::".join(parts)
    for esc, ch in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","),
                    ("$u7b$", "{"), ("$u7d$", "}"), ("..", "::"), ("$BP$", "*")):
        path = path.replace(esc, ch)
    return path


def read_map(path, image_base):
    """(rva, name) of every public symbol, from lld-link's /MAP file."""
    syms = []
    for line in open(path):
        m = re.match(r"^\s*[0-9a-f]{4}:[0-9a-f]{8}\s+(\S+)\s+([0-9a-f]{16})\s", line)
        if m:
            syms.append((int(m.group(2), 16) - image_base, m.group(1)))
    return sorted(set(syms))


def stack_report(image, info, syms, say, fail):
    text = [s for s in info["sections"] if s[0] == ".text"]
    if not text:
        fail("no .text section")
        return
    _, text_va, text_size, _ = text[0]
    base = info["image_base"]
    funcs = [(rva, name) for rva, name in syms if text_va <= rva < text_va + text_size]
    starts = {rva: name for rva, name in funcs}
    imp = {rva: name.removeprefix("__imp_") for rva, name in syms if name.startswith("__imp_")}
    asm = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", image],
                         capture_output=True, text=True, check=True).stdout
    bounds = [rva for rva, _ in funcs] + [text_va + text_size]
    frames, calls, indirect, imports_called = {}, {}, {}, {}
    current, prologue, pushes, size, probe = None, False, 0, 0, 0
    for line in asm.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        rva = int(m.group(1), 16) - base
        op, args = m.group(2), m.group(3)
        if rva in starts:
            if current is not None:
                frames[current] = 8 + 8 * pushes + size
            current, prologue, pushes, size, probe = starts[rva], True, 0, 0, 0
            calls[current], indirect[current], imports_called[current] = set(), 0, set()
        if current is None:
            continue
        if prologue:
            if op == "pushq":
                pushes += 1
                continue
            # `movl $N, %eax; callq __chkstk; subq %rax, %rsp` for frames of a page or more.
            if op == "movl" and (mm := re.match(r"\$(\d+), %eax", args)):
                probe = int(mm.group(1))
                continue
            if op == "callq" and probe:
                size, probe = probe, 0
                continue
            if op == "subq" and args.startswith("%rax, %rsp"):
                prologue = False
                continue
            if op == "subq" and (mm := re.match(r"\$(\d+), %rsp", args)):
                size = int(mm.group(1))
            prologue = False
        if op in ("callq", "jmp", "jmpq"):
            if mm := re.match(r"0x([0-9a-f]+)", args):
                target = int(mm.group(1), 16) - base
                if target in starts and starts[target] != current:
                    calls[current].add(starts[target])
            elif mm := re.search(r"# 0x([0-9a-f]+)", args):
                target = int(mm.group(1), 16) - base
                if target in imp:
                    imports_called[current].add(imp[target])
            elif op == "callq":
                indirect[current] += 1
    if current is not None:
        frames[current] = 8 + 8 * pushes + size

    biggest = sorted(frames.items(), key=lambda kv: -kv[1])[:5]
    say("largest stack frames in the image:")
    for name, b in biggest:
        say(f"  {b:6} B  {demangle(name)}")

    memo = {}

    def deepest(f, seen):
        if f in memo:
            return memo[f]
        if f in seen:
            return (0, [f + " (recursion)"])
        best = (0, [])
        for g in calls.get(f, ()):
            d = deepest(g, seen | {f})
            if d[0] > best[0]:
                best = d
        r = (frames.get(f, 0) + best[0], [f] + best[1])
        memo[f] = r
        return r

    roots = [name for _, name in funcs if CLASSIFY_ROOTS.match(demangle(name))]
    if not roots:
        fail("no classifyFn found in the map (arbiter_driver::classify_*)")
        return
    worst = max((deepest(r, frozenset()) + (r,) for r in roots), key=lambda x: x[0])
    total, chain, _ = worst
    reach = set()
    stack = list(roots)
    while stack:
        f = stack.pop()
        if f in reach:
            continue
        reach.add(f)
        stack.extend(calls.get(f, ()))
    n_indirect = sum(indirect.get(f, 0) for f in reach)
    kernel = sorted(set().union(*(imports_called.get(f, set()) for f in reach)))
    say(f"classify path: deepest chain {total} B over {len(chain)} frames "
        f"(largest frame on it {max(frames.get(f, 0) for f in chain)} B), limit {STACK_LIMIT} B:")
    for f in chain:
        say(f"  {frames.get(f, 0):6} B  {demangle(f)}")
    say(f"  (+ the kernel routines it calls: {', '.join(kernel) or 'none'}; "
        f"{n_indirect} indirect call sites on the path, not followed)")

    # The same walk with a matcher cut off: how deep the path is where it
    # enters the matcher, and how deep it goes elsewhere.
    def split(f, seen, matcher):
        """(deepest entry into the matcher, deepest chain avoiding it) from f."""
        if f in seen:
            return (None, 0)
        entry, other = None, 0
        for g in calls.get(f, ()):
            if matcher.search(demangle(g)):
                entry = max(entry or 0, 0)
                continue
            e, o = split(g, seen | {f}, matcher)
            if e is not None:
                entry = max(entry or 0, e)
            other = max(other, o)
        here = frames.get(f, 0)
        return (None if entry is None else here + entry, here + other)

    parts = [split(r, frozenset(), RULE_MATCHER) for r in roots]
    entry = max((e for e, _ in parts if e is not None), default=None)
    other = max(o for _, o in parts)
    if entry is not None:
        say(f"  rule matcher entered {entry} B deep (its share of the limit: {STACK_LIMIT - entry} B); "
            f"deepest chain outside it: {other} B")
    if other >= STACK_LIMIT:
        fail(f"classify path outside the rule matcher needs {other} B of stack, limit {STACK_LIMIT} B")
    glob_entry = max((e for e, _ in (split(r, frozenset(), GLOB_MATCHER) for r in roots) if e is not None),
                     default=None)
    if glob_entry is None:
        # Renamed or inlined away: the budget would hold nothing.
        fail("no glob matcher function (src/compiled/globs.rs) found on the classify path; "
             "its entry budget cannot be checked")
    else:
        say(f"  glob matcher entered {glob_entry} B deep, budget {GLOB_ENTRY_BUDGET} B "
            f"(its share of the limit: {STACK_LIMIT - glob_entry} B)")
        if glob_entry > GLOB_ENTRY_BUDGET:
            fail(f"classify path enters the glob matcher {glob_entry} B deep, budget {GLOB_ENTRY_BUDGET} B")
    if total >= STACK_LIMIT:
        msg = f"classify path needs {total} B of stack, limit {STACK_LIMIT} B"
        if ENFORCE_STACK:
            fail(msg)
        else:
            say(f"OVER LIMIT (reported, not yet enforced): {msg}")


def inf_target_build(inx):
    raw = open(inx, "rb").read()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8")
    builds = [int(b) for b in re.findall(r"NTamd64\.10\.0\.\.\.(\d+)", text)]
    return min(builds) if builds else None


def main():
    image, map_path, inx, libdir = sys.argv[1:5]
    fails, fail = fail_list()
    say = print
    info = pe_info(image)
    if info["machine"] != 0x8664:
        fail(f"machine 0x{info['machine']:x}, want 0x8664 (AMD64)")
    if info["magic"] != 0x20B:
        fail(f"optional header magic 0x{info['magic']:x}, want 0x20b (PE32+)")
    if info["subsystem"] != 1:
        fail(f"subsystem {info['subsystem']}, want 1 (IMAGE_SUBSYSTEM_NATIVE)")
    entry_export = info["exports"].get("DriverEntry")
    if entry_export is None or entry_export != info["entry"]:
        fail(f"entry point 0x{info['entry']:x} is not DriverEntry ({entry_export})")
    if info["delay_imports"]:
        fail("delay-load imports present")
    say(f"{image}: PE32+ AMD64, subsystem {info['subsystem']} (native), entry DriverEntry (rva 0x{info['entry']:x})")

    by_module = {}
    for module, name in info["imports"]:
        by_module.setdefault(module.lower(), []).append(name)
    say("imports:")
    for module, names in by_module.items():
        say(f"  {module} ({len(names)}): {', '.join(names)}")

    for module in sorted(set(by_module) - ALLOWED_MODULES):
        fail(f"imports from {module}: only {', '.join(sorted(ALLOWED_MODULES))} are allowed")
    for module in sorted(REQUIRED_MODULES - set(by_module)):
        fail(f"no imports from {module}")
    seen = {}
    for module, name in info["imports"]:
        if name in seen:
            fail(f"{name} imported twice ({seen[name]} and {module})")
        seen[name] = module

    for module, lib in (("ntoskrnl.exe", "libntoskrnl.a"), ("hal.dll", "libhal.a"), ("netio.sys", "libnetio.a"),
                        ("ksecdd.sys", "libksecdd.a")):
        if module not in by_module:
            continue
        exported = nm_exports(f"{libdir}/{lib}")
        for name in by_module[module]:
            if name in exported:
                continue
            if module == "ntoskrnl.exe" and name in NEWER_EXPORTS:
                page, version, _ = NEWER_EXPORTS[name]
                say(f"  {name}: not in {lib}; allowed: {page}, {version}")
                continue
            fail(f"{module}!{name} is not in MinGW-w64's {lib} export list (nor in the allow-list)")
    for name in by_module.get("fwpkclnt.sys", []):
        if name not in WFP_ROUTINES:
            fail(f"fwpkclnt.sys!{name} is not a documented WFP kernel routine this check knows")

    used_newer = [n for n in by_module.get("ntoskrnl.exe", []) if n in NEWER_EXPORTS]
    if used_newer:
        need = max(NEWER_EXPORTS[n][2] for n in used_newer)
        target = inf_target_build(inx)
        if target != need:
            fail(f"{inx}: targets build {target}, but the newest import needs {need}")
        else:
            say(f"INF target OS: NTamd64.10.0...{target} (newest import needs build {need})")

    syms = read_map(map_path, info["image_base"])
    # Static libraries of the WDK: linked into the image, never imported.
    for name in STATIC_ROUTINES:
        if name in seen:
            fail(f"{name} is imported; it comes from a static library and must be linked in")
        elif not any(sym == name for _, sym in syms):
            fail(f"{name} is not in the image (wdmsec.lib not linked?)")
        else:
            say(f"{name}: linked in statically (wdmsec.lib)")
    stack_report(image, info, syms, say, fail)

    if fails:
        for f in fails:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
    say("OK: native kernel image, DriverEntry, kernel-only imports, each known and imported once")


if __name__ == "__main__":
    main()
