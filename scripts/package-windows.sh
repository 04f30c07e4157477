#!/usr/bin/env bash
# Makes the Windows release bundle, cross-built from Linux:
#
#   scripts/package-windows.sh [OUT_DIR]     # default OUT_DIR: target/package
#
# OUT_DIR/arbiter-windows-x64.zip holds arbiter.exe, arbiter-proxy.exe
# (release, x86_64-pc-windows-gnu), rules/, README.md and WINDOWS.md (the
# README's "Windows" section on its own). The test-only
# bcryptprimitives.dll shim is never included. The driver package is built
# on Windows (.github/workflows/driver.yml) and attached beside the zip by
# .github/workflows/windows-release.yml. Prints the zip's path last.
#
# Needs MinGW-w64 (gcc-mingw-w64-x86-64), zip, and the rustup target
# x86_64-pc-windows-gnu (scripts/windows-smoke.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$(mkdir -p "${1:-target/package}" && cd "${1:-target/package}" && pwd)
TARGET=x86_64-pc-windows-gnu
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

cargo build --release --locked -q -p arbiter-cli -p arbiter-proxy --target "$TARGET"

STAGE="$OUT/arbiter-windows-x64"
rm -rf "$STAGE" "$OUT/arbiter-windows-x64.zip"
mkdir -p "$STAGE"
cp "target/$TARGET/release/arbiter.exe" "target/$TARGET/release/arbiter-proxy.exe" "$STAGE/"
# The release profile keeps line tables for backtraces and profilers; the
# shipped binaries drop them (36 MB to 8 MB for arbiter.exe).
x86_64-w64-mingw32-strip "$STAGE/arbiter.exe" "$STAGE/arbiter-proxy.exe"
cp -r rules "$STAGE/rules"
cp README.md "$STAGE/README.md"
# The README's "## Windows" section, up to the next second-level heading.
awk '/^## Windows$/ { on = 1; print; next } on && /^## / { exit } on' README.md >"$STAGE/WINDOWS.md"
if [ ! -s "$STAGE/WINDOWS.md" ]; then
  echo "README.md has no \"## Windows\" section" >&2
  exit 1
fi
# Windows users open these in Notepad: CRLF line ends for the text files.
find "$STAGE" -name '*.md' -o -name '*.toml' | while IFS= read -r f; do sed -i 's/\r\?$/\r/' "$f"; done

(cd "$OUT" && zip -q -r -X arbiter-windows-x64.zip arbiter-windows-x64)
if unzip -l "$OUT/arbiter-windows-x64.zip" | grep -qi 'bcryptprimitives'; then
  echo "the test shim must not ship" >&2
  exit 1
fi
unzip -l "$OUT/arbiter-windows-x64.zip" | tail -n 1
echo "$OUT/arbiter-windows-x64.zip"
