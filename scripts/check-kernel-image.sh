#!/usr/bin/env bash
# Builds the kernel smoke image (kernel-smoke/, rust-lld, no WDK) and checks
# that it is what a WFP callout driver must be: an x64 PE32+ image for the
# native subsystem whose imports come only from ntoskrnl.exe and fwpkclnt.sys
# (hal.dll and netio.sys are also allowed), with no delay-load imports.
#
# Usage: scripts/check-kernel-image.sh [IMAGE]   (no IMAGE: build, then check)
# The PE is parsed here in Python (no objdump/llvm-readobj needed).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-}"
if [[ -z "$image" ]]; then
  (cd kernel-smoke && cargo build --release --locked)
  image=target/kernel-smoke/x86_64-pc-windows-msvc/release/arbiter_smoke.exe
fi

python3 - "$image" <<'PY'
import struct, sys

ALLOWED = {"ntoskrnl.exe", "fwpkclnt.sys", "hal.dll", "netio.sys"}
REQUIRED = {"ntoskrnl.exe", "fwpkclnt.sys"}
path = sys.argv[1]
data = open(path, "rb").read()
fail = []

def u16(o): return struct.unpack_from("<H", data, o)[0]
def u32(o): return struct.unpack_from("<I", data, o)[0]
def u64(o): return struct.unpack_from("<Q", data, o)[0]
def cstr(o):
    end = data.index(b"\0", o)
    return data[o:end].decode("ascii")

if data[:2] != b"MZ":
    sys.exit(f"{path}: not an MZ image")
pe = u32(0x3C)
if data[pe:pe + 4] != b"PE\0\0":
    sys.exit(f"{path}: no PE signature")
coff = pe + 4
machine, nsect = u16(coff), u16(coff + 2)
opt_size = u16(coff + 16)
opt = coff + 20
magic = u16(opt)
if machine != 0x8664: fail.append(f"machine 0x{machine:x}, want 0x8664 (AMD64)")
if magic != 0x20B: fail.append(f"optional header magic 0x{magic:x}, want 0x20b (PE32+)")
subsystem = u16(opt + 68)
if subsystem != 1: fail.append(f"subsystem {subsystem}, want 1 (IMAGE_SUBSYSTEM_NATIVE)")
entry = u32(opt + 16)
if entry == 0: fail.append("no entry point")
ndirs = u32(opt + 108)
dirs = opt + 112
def directory(i):
    return (u32(dirs + 8 * i), u32(dirs + 8 * i + 4)) if i < ndirs else (0, 0)

sections = []
sh = opt + opt_size
for i in range(nsect):
    s = sh + 40 * i
    vsize, va, rawsize, rawptr = u32(s + 8), u32(s + 12), u32(s + 16), u32(s + 20)
    sections.append((va, max(vsize, rawsize), rawptr))
def off(rva):
    for va, size, raw in sections:
        if va <= rva < va + size:
            return raw + rva - va
    raise ValueError(f"rva 0x{rva:x} outside every section")

imports = {}
irva, _ = directory(1)
if irva:
    d = off(irva)
    while True:
        ilt, name_rva, iat = u32(d), u32(d + 12), u32(d + 16)
        if name_rva == 0:
            break
        dll = cstr(off(name_rva))
        funcs = []
        t = off(ilt or iat)
        while True:
            entry_ = u64(t)
            if entry_ == 0:
                break
            funcs.append(f"#{entry_ & 0xFFFF}" if entry_ >> 63 else cstr(off(entry_ & 0x7FFFFFFF) + 2))
            t += 8
        imports[dll] = funcs
        d += 20
if directory(13)[0]:
    fail.append("delay-load imports present")

print(f"{path}: PE32+ AMD64, subsystem {subsystem} (native), entry 0x{entry:x}")
for dll, funcs in imports.items():
    print(f"  {dll}: {', '.join(funcs)}")
names = {d.lower() for d in imports}
for extra in sorted(names - ALLOWED):
    fail.append(f"imports from {extra}: only {', '.join(sorted(ALLOWED))} are allowed")
for missing in sorted(REQUIRED - names):
    fail.append(f"no imports from {missing}")
if fail:
    for f in fail:
        print(f"FAIL: {f}", file=sys.stderr)
    sys.exit(1)
print("OK: native-subsystem kernel image; imports only from allowed kernel modules")
PY
