#!/usr/bin/env bash
# Runs test sets for the Windows target (x86_64-pc-windows-gnu) under Wine,
# with Wine as the cargo runner (scripts/wine/runner.sh):
#
#   scripts/windows-tests.sh              # the default sets below
#   scripts/windows-tests.sh -p arbiter   # any cargo test arguments instead
#
# Needs what scripts/windows-smoke.sh installs (MinGW-w64, wine64, the
# rustup target); run that first, or on a machine that has them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=x86_64-pc-windows-gnu
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$ROOT/scripts/wine/runner.sh"
export ARBITER_WINE_SHIM="$ROOT/target/wine/bcryptprimitives.dll"
mkdir -p "$ROOT/target/wine"
x86_64-w64-mingw32-gcc -shared -O2 -o "$ARBITER_WINE_SHIM" scripts/wine/bcryptprimitives.c -ladvapi32

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/arbiter-wine-tests.XXXXXX")
export WINEPREFIX="$SCRATCH/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
trap '/usr/lib/wine/wineserver -k 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
/usr/lib/wine/wine64 cmd /c exit 0 >/dev/null 2>&1 || true

run_set() {
  local started=$SECONDS
  printf -- '--- cargo test --target %s %s\n' "$TARGET" "$*"
  cargo test --locked --target "$TARGET" "$@" 2>&1 | grep -E '^(test result|running|     Running|error|failures:|    [a-z_:]+$|---- |thread .* panicked)' || true
  local rc=${PIPESTATUS[0]}
  printf -- '--- %s: exit %s in %s s\n' "$*" "$rc" "$((SECONDS - started))"
  return "$rc"
}

if (($#)); then
  run_set "$@"
  exit
fi
failed=0
run_set -p arbiter-proxy || failed=1
echo
if ((failed)); then
  echo "windows tests: some sets failed"
  exit 1
fi
echo "windows tests: all sets passed in $SECONDS s"
