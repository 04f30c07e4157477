#!/usr/bin/env bash
# Cargo runner for x86_64-pc-windows-gnu: runs a test or binary under Wine.
#
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=scripts/wine/runner.sh
#
# Puts the test-only bcryptprimitives.dll shim (ARBITER_WINE_SHIM, built
# from scripts/wine/bcryptprimitives.c) beside the executable and in the
# folder above it, where cargo keeps the binaries that integration tests
# start (CARGO_BIN_EXE_*), then runs the executable with Wine.
set -euo pipefail
exe=$1
shift
shim=${ARBITER_WINE_SHIM:?"set ARBITER_WINE_SHIM to the built bcryptprimitives.dll"}
dir=$(dirname "$exe")
for d in "$dir" "$dir/.."; do
  [ -e "$d/bcryptprimitives.dll" ] || cp "$shim" "$d/bcryptprimitives.dll"
done
exec "${WINE:-/usr/lib/wine/wine64}" "$exe" "$@"
