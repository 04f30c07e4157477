#!/usr/bin/env bash
# Windows smoke test, from Linux: cross-builds arbiter.exe and
# arbiter-proxy.exe (release, x86_64-pc-windows-gnu), runs them under Wine
# and compares every output with the Linux build's (timings masked).
#
#   scripts/windows-smoke.sh            # install what is missing, build, run
#   SMOKE_KEEP=1 scripts/windows-smoke.sh   # keep the scratch folder and Wine prefix
#
# Installs its own Debian packages (gcc-mingw-w64-x86-64, mingw-w64-x86-64-dev,
# wine64) and the rustup target, skipping what is present. Rust's std imports
# ProcessPrng from bcryptprimitives.dll, which Wine 8.0 lacks: a test-only
# shim built from scripts/wine/bcryptprimitives.c sits beside the .exe files
# (it never ships; scripts/package-windows.sh leaves it out).
#
# Exits 0 when every check passes, 1 otherwise. The last line of output is
# the path of arbiter.exe.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TARGET=x86_64-pc-windows-gnu
WINE=${WINE:-/usr/lib/wine/wine64}
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

say() { printf -- '--- %s\n' "$*"; }

# --- what this needs ----------------------------------------------------------
missing=()
for pkg in gcc-mingw-w64-x86-64 mingw-w64-x86-64-dev wine64; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
  apt_get update -qq
  DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi

# --- builds -------------------------------------------------------------------
say "cross-build (release, $TARGET)"
cargo build --release --locked -q -p arbiter-cli -p arbiter-proxy --target "$TARGET"
say "Linux build (release), for comparison"
cargo build --release --locked -q -p arbiter-cli -p arbiter-proxy
WIN_DIR="$ROOT/target/$TARGET/release"
LINUX_DIR="$ROOT/target/release"
x86_64-w64-mingw32-gcc -shared -O2 -o "$WIN_DIR/bcryptprimitives.dll" scripts/wine/bcryptprimitives.c -ladvapi32

# --- scratch space and a throwaway Wine prefix --------------------------------
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/arbiter-wine.XXXXXX")
export WINEPREFIX="$SCRATCH/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
if [ -z "${SMOKE_KEEP:-}" ]; then
  trap '"${WINE%64}server" -k 2>/dev/null || wineserver -k 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
fi
say "Wine prefix $WINEPREFIX"
"$WINE" cmd /c exit 0 >/dev/null 2>&1 || true

failures=0
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
pass() { printf 'ok:   %s\n' "$*"; }

# Masks what legitimately differs between the two builds: durations, rates
# and the path separator (Windows prints the paths it walks with `\`; JSON
# escapes it as `\\`). What is left must be the same, byte for byte.
mask() {
  sed -E \
    -e 's/\\\\/\//g' -e 's/\\/\//g' \
    -e 's/[0-9]+(\.[0-9]+)? ?(s|ms|µs|us|ns)\b/<time>/g' \
    -e 's/[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)? ([a-z]+)\/s\b/<rate> \3\/s/g' \
    -e 's/"([a-z_]*seconds|[a-z_]*per_second)": ?[0-9.e+-]+/"\1": <n>/g'
}

# win_path /abs/unix/path -> Z:\abs\unix\path (Wine maps / to Z:).
win_path() { printf 'Z:%s' "${1//\//\\}"; }

# compare NAME "LINUX ARGS" "WINDOWS ARGS" [PATH...]: runs both builds, then
# compares exit code, stdout and stderr. Each absolute PATH was given to the
# Windows build as Z:\PATH: the Linux output gets the drive letter too.
compare() {
  local name=$1 largs=$2 wargs=$3
  shift 3
  local out="$SCRATCH/out/$name"
  mkdir -p "$out"
  local lrc=0 wrc=0 started=$SECONDS
  eval "\"$LINUX_DIR/arbiter\" $largs" >"$out/linux.stdout" 2>"$out/linux.stderr" || lrc=$?
  eval "\"$WINE\" \"$WIN_DIR/arbiter.exe\" $wargs" >"$out/wine.stdout" 2>"$out/wine.stderr" || wrc=$?
  local f
  for f in stdout stderr; do
    local sub
    mask <"$out/linux.$f" >"$out/linux.$f.masked"
    for sub in "$@"; do
      FROM=$sub perl -pi -e 's/\Q$ENV{FROM}\E/Z:$ENV{FROM}/g' "$out/linux.$f.masked"
    done
    mask <"$out/wine.$f" >"$out/wine.$f.masked"
  done
  if [ "$lrc" != "$wrc" ]; then
    fail "$name: exit $wrc under Wine, $lrc on Linux"
    head -n 20 "$out/wine.stderr"
    return
  fi
  for f in stdout stderr; do
    if ! cmp -s "$out/linux.$f.masked" "$out/wine.$f.masked"; then
      fail "$name: $f differs (exit $lrc both)"
      { diff -u "$out/linux.$f.masked" "$out/wine.$f.masked" || true; } | head -n 30 | cut -c1-200
      return
    fi
  done
  pass "$name (exit $lrc, $(wc -l <"$out/linux.stdout") lines, $((SECONDS - started)) s)"
}

say "arbiter.exe under Wine vs Linux"
compare version "--version" "--version"
compare lab "lab" "lab"
compare lab-json "lab --json" "lab --json"
compare replay "replay fixtures" "replay fixtures"
compare replay-json "replay --json fixtures/table" "replay --json fixtures/table"
compare rules-check-good "rules check rules/default.toml rules/examples" "rules check rules/default.toml rules/examples"

# A broken rules file: an unknown action on line 3, and a duplicated key.
mkdir -p "$SCRATCH/rules"
cat >"$SCRATCH/rules/broken.toml" <<'EOF'
[[rule]]
name = "nonsense"
action = "teleport"
action = "proxy"
EOF
cp "$SCRATCH/rules/broken.toml" "$ROOT/target/wine-broken.toml"
compare rules-check-broken "rules check target/wine-broken.toml" "rules check target/wine-broken.toml"
compare rules-check-broken-json "rules check --json target/wine-broken.toml" "rules check --json target/wine-broken.toml"

# Paths with drive letters and backslashes.
compare drive-letter-rules "rules check '$ROOT/rules/default.toml'" "rules check '$(win_path "$ROOT/rules/default.toml")'" "$ROOT/rules/default.toml"
compare drive-letter-broken "rules check '$SCRATCH/rules/broken.toml'" "rules check '$(win_path "$SCRATCH/rules/broken.toml")'" "$SCRATCH/rules/broken.toml"
compare backslash-replay "replay fixtures/table" "replay 'fixtures\\table'"
compare drive-letter-replay "replay '$ROOT/fixtures/cases'" "replay '$(win_path "$ROOT/fixtures/cases")'" "$ROOT/fixtures/cases"
compare lab-rules-drive-letter "lab --rules '$ROOT/rules/examples/strict.toml'" \
  "lab --rules '$(win_path "$ROOT/rules/examples/strict.toml")'" "$ROOT/rules/examples/strict.toml"

# An audit log: written by the lab when it can (`lab --audit`), else the sample.
AUDIT="$SCRATCH/audit.bin"
if "$LINUX_DIR/arbiter" lab --help 2>/dev/null | grep -q -- '--audit'; then
  "$LINUX_DIR/arbiter" lab --audit "$AUDIT" >/dev/null || true
fi
[ -s "$AUDIT" ] || cp scripts/wine/sample-audit.bin "$AUDIT"
compare audit "audit '$AUDIT'" "audit '$(win_path "$AUDIT")'" "$AUDIT"
compare audit-check "audit --check '$AUDIT'" "audit --check '$(win_path "$AUDIT")'" "$AUDIT"
compare audit-json "audit --json '$AUDIT'" "audit --json '$(win_path "$AUDIT")'" "$AUDIT"

# `arbiter wfpdiag`, once the command exists: every committed XML sample.
if "$LINUX_DIR/arbiter" --help 2>/dev/null | grep -qw wfpdiag; then
  n=0
  while IFS= read -r xml; do
    n=$((n + 1))
    compare "wfpdiag-$n" "wfpdiag '$xml'" "wfpdiag '${xml//\//\\}'"
  done < <(git ls-files '*.xml' | grep -v '^driver/')
  ((n)) || say "wfpdiag: no XML samples committed yet"
else
  say "wfpdiag: not in this build yet (skipped)"
fi

say "arbiter-proxy.exe under Wine"
PROXY="$WIN_DIR/arbiter-proxy.exe"
rc=0
"$WINE" "$PROXY" --help >"$SCRATCH/proxy-help.txt" 2>&1 || rc=$?
if [ "$rc" = 0 ] && grep -q '^exit codes:' "$SCRATCH/proxy-help.txt"; then
  pass "arbiter-proxy.exe --help (exit 0, documents the exit codes)"
else
  fail "arbiter-proxy.exe --help exited $rc"
  head -n 5 "$SCRATCH/proxy-help.txt"
fi
# No driver under Wine: the control device \\.\ArbiterControl does not exist.
rc=0
timeout 60 "$WINE" "$PROXY" --v4 127.0.0.1:0 --v6 none --no-udp --audit-dir "$(win_path "$SCRATCH/audit")" \
  >"$SCRATCH/proxy.out" 2>"$SCRATCH/proxy.err" || rc=$?
if [ "$rc" = 3 ] && grep -q 'ArbiterControl' "$SCRATCH/proxy.err" && grep -q 'not installed or not started' "$SCRATCH/proxy.err"; then
  pass "arbiter-proxy.exe without the driver: exit 3, $(head -n 1 "$SCRATCH/proxy.err")"
else
  fail "arbiter-proxy.exe without the driver: exit $rc (3 expected)"
  head -n 5 "$SCRATCH/proxy.err"
fi
rc=0
"$WINE" "$PROXY" --v4 nowhere >/dev/null 2>"$SCRATCH/proxy-usage.err" || rc=$?
if [ "$rc" = 2 ]; then pass "arbiter-proxy.exe bad argument: exit 2"; else fail "arbiter-proxy.exe bad argument: exit $rc"; fi

echo
if ((failures)); then
  echo "windows smoke: $failures check(s) failed (outputs in $SCRATCH/out; SMOKE_KEEP=1 keeps them)"
  echo "$WIN_DIR/arbiter.exe"
  exit 1
fi
echo "windows smoke: all checks passed in $SECONDS s"
echo "$WIN_DIR/arbiter.exe"
