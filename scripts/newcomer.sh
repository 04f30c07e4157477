#!/usr/bin/env bash
# A newcomer's first hour, automated: clone the repository into a temporary
# folder, follow README.md word for word (install, the main command, every
# command in its ```sh blocks), check that every `arbiter SUBCOMMAND` the
# README names exists, that every relative Markdown link resolves, and that
# no subcommand panics when its output goes into `head -1` or `/dev/full`.
#
# Usage: scripts/newcomer.sh            (from anywhere inside the repository)
# Builds go to the target folder of the repository this script runs from, so
# the dependencies .ci/run already built are reused; set NEWCOMER_TARGET_DIR
# to build elsewhere.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { printf 'newcomer: FAILED: %s\n' "$*" >&2; exit 1; }
say() { printf 'newcomer: %s\n' "$*"; }

# 1. A fresh clone of what is committed.
git clone -q "$src" "$work/arbiter"
cd "$work/arbiter"
export CARGO_TARGET_DIR="${NEWCOMER_TARGET_DIR:-$src/target}"
export CARGO_INSTALL_ROOT="$work/root"
export PATH="$CARGO_INSTALL_ROOT/bin:$PATH"

# 2. README word for word: every line of every ```sh block, in order.
#    `cargo test --workspace` is the step before this one in .ci/run, on the
#    same commit; it is checked to be there, not run a second time.
mapfile -t commands < <(awk '/^```sh$/ {on=1; next} /^```/ {on=0} on && NF' README.md)
[ "${#commands[@]}" -ge 3 ] || fail "README.md has no sh block with the install and main commands"
[ "${commands[0]}" = "cargo install --locked --path cli" ] || fail "README's first command is not the install: ${commands[0]}"
for c in "${commands[@]}"; do
  if [ "$c" = "cargo test --workspace" ]; then
    grep -qx '  *cargo test --workspace --locked\|cargo test --workspace --locked' "$src/.ci/run" \
      || fail ".ci/run does not run README's test command"
    say "ok (run by .ci/run's test step): $c"
    continue
  fi
  say "running: $c"
  bash -euo pipefail -c "$c" > "$work/out.txt" 2> "$work/err.txt" \
    || { tail -n 20 "$work/out.txt" "$work/err.txt" >&2; fail "README command failed: $c"; }
  tail -n 1 "$work/out.txt"
done
command -v arbiter > /dev/null || fail "after the install, there is no arbiter command"

# 3. Every subcommand the README names exists.
mapfile -t named < <(grep -o '`arbiter [a-z][a-z-]*\( check\| compile\)\?' README.md | tr -d '`' | sort -u)
for n in "${named[@]}"; do
  read -r -a words <<< "$n"
  arbiter "${words[@]:1}" --help > /dev/null || fail "README names \`$n\`, which does not exist"
done
say "ok: ${#named[@]} subcommands named in README.md exist"

# 4. Every relative link of every Markdown file resolves inside the clone.
links=0
while IFS= read -r md; do
  dir=$(dirname "$md")
  while IFS= read -r target; do
    case "$target" in *://*|mailto:*|'#'*) continue ;; esac
    path=${target%%#*}
    [ -e "$dir/$path" ] || fail "$md links to $target, which does not exist"
    links=$((links + 1))
  done < <(awk '/^```/ {code=!code; next} !code' "$md" | grep -o '\]([^)]*)' | sed 's/^](//; s/)$//')
done < <(find . -name '*.md' -not -path './target/*' -not -path '*/corpus/*' -not -path './.git/*')
grep -rl --include='*.md' '\.\./shared\|shared/spec' . && fail "a document points outside the repository"
say "ok: $links relative links resolve"

# 5. No subcommand panics on a closed pipe or a full disk.
arbiter lab --peer compliant --no-baseline --audit "$work/audit.log" > /dev/null
checks=(
  "--help"
  "lab"
  "lab --json"
  "lab --wide"
  "replay fixtures"
  "replay --json fixtures"
  "explore --quick --peer compliant"
  "audit $work/audit.log"
  "audit --json $work/audit.log"
  "audit --check $work/audit.log"
  "rules check rules"
  "rules check --json rules"
  "rules compile rules/default.toml -o $work/rules.bin"
  "reasons"
  "reasons --json"
  "bench --quick"
)
for c in "${checks[@]}"; do
  read -r -a args <<< "$c"
  set +o pipefail
  arbiter "${args[@]}" 2> "$work/err.txt" | head -1 > /dev/null
  code=${PIPESTATUS[0]}
  set -o pipefail
  if [ "$code" = 101 ] || grep -q panicked "$work/err.txt"; then
    cat "$work/err.txt" >&2
    fail "arbiter $c | head -1 panicked"
  fi
  if [ -w /dev/full ]; then
    code=0
    arbiter "${args[@]}" > /dev/full 2> "$work/err.txt" || code=$?
    if [ "$code" != 2 ] || grep -q panicked "$work/err.txt"; then
      cat "$work/err.txt" >&2
      fail "arbiter $c > /dev/full exited $code (expected a clean exit 2)"
    fi
  fi
done
say "ok: ${#checks[@]} commands survive | head -1 and > /dev/full"
say "done: README.md works from a fresh clone"
