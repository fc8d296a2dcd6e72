#!/usr/bin/env bash
# Checks the equation-to-code map (docs/equations.md) against the code.
#
# For every table row `| E<n> | … | `file` | `mod::fn`, … |`:
#   * the file must exist;
#   * each function must be defined in it (`fn NAME` followed by `(` or `<`);
#   * the `///` doc comment directly above a definition (attributes skipped)
#     must mention `E<n>`.
# Also: E1…E21 (the spec's 21 entries) must all be in the map and in README.md.
#
# Usage: scripts/check_equations.sh [MAP]   (default docs/equations.md)
# Exit status 0 when everything matches, 1 otherwise (every problem is listed).
set -euo pipefail
cd "$(dirname "$0")/.."

map="${1:-docs/equations.md}"
readme="README.md"
fail=0
entries=0
functions=0

err() {
  echo "check_equations: $*" >&2
  fail=1
}

[[ -f "$map" ]] || { err "map $map not found"; exit 1; }

# Prints the `///` lines directly above line $2 of file $1 (skipping `#[...]`).
doc_above() {
  awk -v target="$2" '
    { line[NR] = $0 }
    END {
      for (i = target - 1; i >= 1; i--) {
        s = line[i]; sub(/^[ \t]+/, "", s)
        if (s ~ /^#\[/) continue
        if (s ~ /^\/\/\//) { print s; continue }
        break
      }
    }' "$1"
}

declare -A seen=()
while IFS= read -r row; do
  # Cells, trimmed; the row starts and ends with `|`, so fields 1 and NF are empty.
  IFS='|' read -r -a cells <<<"$row"
  n=${#cells[@]}
  enum=$(echo "${cells[1]}" | tr -d ' ')
  file=$(echo "${cells[n - 2]}" | tr -d ' `')
  funcs=$(echo "${cells[n - 1]}" | grep -o '`[^`]*`' | tr -d '`' || true)
  entries=$((entries + 1))
  if [[ -n "${seen[$enum]:-}" ]]; then
    err "$enum appears twice in $map"
  fi
  seen[$enum]=1
  if [[ ! -f "$file" ]]; then
    err "$enum: file $file does not exist"
    continue
  fi
  if [[ -z "$funcs" ]]; then
    err "$enum: no function named"
    continue
  fi
  for f in $funcs; do
    name="${f##*::}"
    name="${name%()}"
    functions=$((functions + 1))
    defs=$(grep -nE "^[[:space:]]*(pub(\([^)]*\))?[[:space:]]+)?((const|unsafe|async|extern \"C\")[[:space:]]+)*fn[[:space:]]+${name}[[:space:]]*[<(]" "$file" | cut -d: -f1 || true)
    if [[ -z "$defs" ]]; then
      err "$enum: $f — no \`fn $name\` in $file"
      continue
    fi
    ok=0
    for ln in $defs; do
      if doc_above "$file" "$ln" | grep -qE "(^|[^0-9A-Za-z_])${enum}([^0-9]|$)"; then
        ok=1
      fi
    done
    if [[ $ok -eq 0 ]]; then
      err "$enum: the doc comment of \`fn $name\` ($file:$(echo "$defs" | head -1)) does not mention $enum"
    fi
  done
done < <(grep -E '^\|[[:space:]]*E[0-9]+[[:space:]]*\|' "$map")

for i in $(seq 1 21); do
  [[ -n "${seen[E$i]:-}" ]] || err "E$i is missing from $map"
  grep -qE "^\|[[:space:]]*E${i}[[:space:]]*\|" "$readme" || err "E$i is missing from the table in $readme"
done

if [[ $fail -ne 0 ]]; then
  echo "check_equations: FAILED" >&2
  exit 1
fi
echo "check_equations: $entries entries, $functions functions: files exist, functions defined, doc comments cite their E-number"
