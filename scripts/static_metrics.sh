#!/usr/bin/env bash
# Static metrics (spec §6 "Static": SLOC, source_gzip_bytes, function_count)
# per crate and per module group of moe-core.
#
# Writes benchmarks/static.json and docs/static-metrics.md (both generated;
# edit this script, not them). Needs bash, awk, grep, gzip, wc, find, sort.
#
# Definitions (also written into the outputs):
#   SLOC            lines that are neither blank nor comment-only (`//…`, `/* … */`);
#                   doc comments are comments.
#   gzip bytes      `gzip -9 -n` of the files concatenated in path order,
#                   comments included (the spec's source_gzip_bytes).
#   function count  `fn NAME` definitions and trait-method declarations;
#                   closures are not counted.
#   Library/binary crates are counted without their inline `#[cfg(test)]`
#   modules (reported separately as test SLOC); test crates count everything.
#
# moe-core groups: forward and backward share files (one file per equation
# unit, forward and backward side by side), so the split is by function, not by
# file: every function named `backward*`, `rotate_back`, `silu_grad` or
# `aux_grad_coef` (the E7 and E22–E32 units of docs/equations.md), with its doc
# comment and attributes, is cut out of whichever file holds it (brace matching
# on the source with strings, chars and comments removed) and counted in
# `backward`; every other line stays in its file's group. The groups partition
# the crate: their SLOC and function counts add up to moe-core's.
#
# Usage: scripts/static_metrics.sh [--check]
#   --check  print the tables only, write nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

write=1
[[ "${1:-}" == "--check" ]] && write=0

json_out=benchmarks/static.json
md_out=docs/static-metrics.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

BACKWARD_FNS='backward[A-Za-z0-9_]*|rotate_back|silu_grad|aux_grad_coef'

# Tags every line of a Rust file: B (inside a backward function), T (inside a
# `#[cfg(test)]` module), F (anything else). Output: "TAG<TAB>line".
tag_lines() {
  awk -v bw="$BACKWARD_FNS" '
    function code_of(s,   t) {
      t = s
      gsub(/\\\\/, "", t)                 # escaped backslashes
      gsub(/\\"/, "", t)                  # escaped quotes
      gsub(/"[^"]*"/, "\"\"", t)          # string literals
      gsub(/'\''[^'\''\\]'\''/, "'\'''\''", t)  # char literals like '{'
      sub(/\/\/.*/, "", t)                # line comments
      return t
    }
    function flush(tag,   i) { for (i = 1; i <= np; i++) print tag "\t" pend[i]; np = 0; ptest = 0 }
    BEGIN { mode = ""; np = 0; ptest = 0; depth = 0; opened = 0
            fnre = "(^|[^A-Za-z0-9_])fn[ \t]+(" bw ")[ \t]*[<(]" }
    {
      line = $0
      if (mode == "") {
        s = line; sub(/^[ \t]+/, "", s)
        if (s ~ /^\/\/\// || s ~ /^#\[/) {
          pend[++np] = line
          if (s ~ /^#\[cfg\(test\)\]/) ptest = 1
          next
        }
        if (line ~ fnre) mode = "B"
        else if (ptest && s ~ /^(pub(\([^)]*\))?[ \t]+)?mod[ \t]/) mode = "T"
        if (mode == "") { flush("F"); print "F\t" line; next }
        flush(mode); depth = 0; opened = 0
      }
      print mode "\t" line
      c = code_of(line)
      o = gsub(/\{/, "{", c); k = gsub(/\}/, "}", c)
      if (o > 0) opened = 1
      depth += o - k
      if ((opened && depth <= 0) || (!opened && c ~ /;[ \t]*$/)) { mode = ""; depth = 0; opened = 0 }
    }
    END { flush("F") }' "$1"
}

# SLOC of the text on stdin.
sloc() {
  awk '
    {
      s = $0
      if (inblock) { if (s ~ /\*\//) { inblock = 0; sub(/.*\*\//, "", s) } else next }
      while (s ~ /\/\*/) {
        pre = s; sub(/\/\*.*/, "", pre)
        rest = s; sub(/^[^\/]*\/\*/, "", rest)
        if (rest ~ /\*\//) { sub(/^.*\*\//, "", rest); s = pre rest }
        else { s = pre; inblock = 1 }
      }
      gsub(/^[ \t]+|[ \t]+$/, "", s)
      if (s == "" || s ~ /^\/\//) next
      n++
    }
    END { print n + 0 }'
}

# Function definitions/declarations in the text on stdin.
fn_count() {
  grep -cE '^[[:space:]]*(pub(\([^)]*\))?[[:space:]]+)?((const|unsafe|async|extern "C"|default)[[:space:]]+)*fn[[:space:]]+[A-Za-z_][A-Za-z0-9_]*' || true
}

gz() { gzip -9 -n -c | wc -c | tr -d ' '; }

# Group of a moe-core file (path relative to core/src).
core_group() {
  case "$1" in
    embedding.rs | rmsnorm.rs | rope.rs | attention.rs | router.rs | swiglu.rs | moe.rs | linear.rs | model.rs) echo forward ;;
    optim.rs | train.rs | loss.rs) echo optimizer ;;
    generate.rs | sampling.rs | kv_cache.rs) echo sampling ;;
    kernels/*) echo kernels ;;
    config.rs | layout.rs | arena.rs | workspace.rs | error.rs | lib.rs) echo infrastructure ;;
    *) echo other ;;
  esac
}

rs_files() { find "$@" -type f -name '*.rs' -not -path '*/target/*' 2>/dev/null | LC_ALL=C sort; }

# --- tag every file once -------------------------------------------------------
mkdir -p "$tmp/tag"
declare -a all_files=()
while IFS= read -r f; do all_files+=("$f"); done < <(rs_files core/src bench/src bench/tests bench/build.rs tests/src tests/tests fuzz)
for f in "${all_files[@]}"; do
  out="$tmp/tag/$(echo "$f" | tr '/' '_')"
  tag_lines "$f" >"$out"
done
tagged() { cat "$tmp/tag/$(echo "$1" | tr '/' '_')"; }

# Emits "sloc gzip fns" for the lines with tags matching $1 over files $2…
measure() {
  local tags="$1"
  shift
  local text="$tmp/text"
  : >"$text"
  for f in "$@"; do tagged "$f" | awk -F'\t' -v t="$tags" 'index(t, $1) { sub(/^[^\t]*\t/, ""); print }' >>"$text"; done
  echo "$(sloc <"$text") $(gz <"$text") $(fn_count <"$text")"
}

# --- crates --------------------------------------------------------------------
declare -a crate_rows=()
crate() { # name, description, tags, files…
  local name="$1" desc="$2" tags="$3"
  shift 3
  [[ $# -gt 0 ]] || return 0
  read -r s g n <<<"$(measure "$tags" "$@")"
  read -r ts _ _ <<<"$(measure T "$@")"
  [[ "$tags" == *T* ]] && ts=0
  crate_rows+=("$name|$desc|$#|$s|$g|$n|$ts")
}
mapfile -t core_files < <(rs_files core/src)
mapfile -t bench_files < <(rs_files bench/src bench/build.rs)
mapfile -t bench_test_files < <(rs_files bench/tests)
mapfile -t tests_files < <(rs_files tests/src tests/tests)
mapfile -t fuzz_files < <(rs_files fuzz)
crate "moe-core" "core/src (no_std library)" FB "${core_files[@]}"
crate "moe-bench" "bench/src, bench/build.rs (the moe CLI)" FB "${bench_files[@]}"
crate "moe-bench tests" "bench/tests (integration tests)" FBT "${bench_test_files[@]}"
crate "moe-tests" "tests/src, tests/tests (integration tests)" FBT "${tests_files[@]}"
crate "fuzz" "fuzz (cargo-fuzz targets)" FBT "${fuzz_files[@]+"${fuzz_files[@]}"}"

# --- moe-core groups -------------------------------------------------------------
declare -a group_rows=()
declare -A group_files=()
for f in "${core_files[@]}"; do
  g=$(core_group "${f#core/src/}")
  [[ "$g" == other ]] && echo "static_metrics: $f has no group; counted as 'other'" >&2
  group_files[$g]+="$f "
done
for g in forward backward optimizer sampling kernels infrastructure other; do
  if [[ "$g" == backward ]]; then
    read -r -a files <<<"${core_files[*]}"
    tags=B
    nfiles=0
    for f in "${core_files[@]}"; do
      if grep -q '^B' "$tmp/tag/$(echo "$f" | tr '/' '_')"; then nfiles=$((nfiles + 1)); fi
    done
  else
    [[ -n "${group_files[$g]:-}" ]] || continue
    read -r -a files <<<"${group_files[$g]}"
    tags=F
    nfiles=${#files[@]}
  fi
  read -r s gzb n <<<"$(measure "$tags" "${files[@]}")"
  if [[ "$g" == backward ]]; then
    desc="functions backward*, rotate_back, silu_grad, aux_grad_coef, cut out of their files"
  else
    desc=$(for f in "${files[@]}"; do printf '%s ' "${f#core/src/}"; done | sed 's/ $//')
  fi
  group_rows+=("$g|$desc|$nfiles|$s|$gzb|$n")
done

# The backward functions, as file:name.
backward_list=$(for f in "${core_files[@]}"; do
  tagged "$f" | awk -F'\t' -v file="${f#core/src/}" -v bw="$BACKWARD_FNS" '$1 == "B" && match($2, "fn[ \t]+(" bw ")") { s = substr($2, RSTART, RLENGTH); sub(/fn[ \t]+/, "", s); print file ":" s }'
done)

# --- per-file rows of moe-core ---------------------------------------------------
declare -a file_rows=()
for f in "${core_files[@]}"; do
  read -r s gzb n <<<"$(measure FB "$f")"
  read -r bs _ bn <<<"$(measure B "$f")"
  file_rows+=("${f}|$(core_group "${f#core/src/}")|$s|$gzb|$n|$bs|$bn")
done

# --- output ------------------------------------------------------------------------
rev=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dirty=false
git diff-index --quiet HEAD -- 2>/dev/null || dirty=true
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

{
  echo "{"
  echo "  \"metadata\": { \"language\": \"rust\", \"git_rev\": $(json_str "$rev"), \"worktree_dirty\": $dirty, \"timestamp\": $(json_str "$stamp"),"
  echo "    \"generator\": \"scripts/static_metrics.sh\","
  echo "    \"definitions\": { \"sloc\": \"non-blank lines that are not comment-only (// and /* */; doc comments are comments)\","
  echo "      \"source_gzip_bytes\": \"gzip -9 -n of the files concatenated in path order, comments included\","
  echo "      \"function_count\": \"fn definitions and trait-method declarations (closures excluded)\","
  echo "      \"test_sloc\": \"SLOC of inline #[cfg(test)] modules, excluded from the library/binary crates' other numbers\","
  echo "      \"backward_group\": \"functions named backward*, rotate_back, silu_grad, aux_grad_coef, cut out of their files by brace matching; the groups partition moe-core\" } },"
  echo "  \"crates\": ["
  i=0
  for r in "${crate_rows[@]}"; do
    IFS='|' read -r name desc nf s g n ts <<<"$r"
    i=$((i + 1))
    sep=","; [[ $i -eq ${#crate_rows[@]} ]] && sep=""
    echo "    { \"name\": $(json_str "$name"), \"paths\": $(json_str "$desc"), \"files\": $nf, \"sloc\": $s, \"source_gzip_bytes\": $g, \"function_count\": $n, \"test_sloc\": $ts }$sep"
  done
  echo "  ],"
  echo "  \"core_groups\": ["
  i=0
  for r in "${group_rows[@]}"; do
    IFS='|' read -r name desc nf s g n <<<"$r"
    i=$((i + 1))
    sep=","; [[ $i -eq ${#group_rows[@]} ]] && sep=""
    echo "    { \"group\": $(json_str "$name"), \"contents\": $(json_str "$desc"), \"files\": $nf, \"sloc\": $s, \"source_gzip_bytes\": $g, \"function_count\": $n }$sep"
  done
  echo "  ],"
  echo "  \"core_backward_functions\": ["
  first=1
  while IFS= read -r b; do
    [[ -n "$b" ]] || continue
    [[ $first -eq 1 ]] || echo ","
    printf '    %s' "$(json_str "$b")"
    first=0
  done <<<"$backward_list"
  echo ""
  echo "  ],"
  echo "  \"core_files\": ["
  i=0
  for r in "${file_rows[@]}"; do
    IFS='|' read -r path group s g n bs bn <<<"$r"
    i=$((i + 1))
    sep=","; [[ $i -eq ${#file_rows[@]} ]] && sep=""
    echo "    { \"path\": $(json_str "$path"), \"group\": $(json_str "$group"), \"sloc\": $s, \"source_gzip_bytes\": $g, \"function_count\": $n, \"backward_sloc\": $bs, \"backward_function_count\": $bn }$sep"
  done
  echo "  ]"
  echo "}"
} >"$tmp/static.json"

num() { printf "%'d" "$1" 2>/dev/null || printf '%d' "$1"; }

{
  echo "# Static metrics"
  echo
  echo "Source size of the Rust track (spec §6, *Static* metrics): SLOC, gzip'd source"
  echo "bytes and function count, per crate and per module group of \`moe-core\`."
  echo "Generated by \`scripts/static_metrics.sh\` (also writes \`benchmarks/static.json\`);"
  echo "do not edit by hand — rerun the script."
  echo
  echo "Snapshot: git \`$rev\`$([[ $dirty == true ]] && echo " (with uncommitted changes)"), $stamp."
  echo
  echo "## Per crate"
  echo
  echo "| crate | paths | files | SLOC | gzip bytes | functions | inline-test SLOC |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for r in "${crate_rows[@]}"; do
    IFS='|' read -r name desc nf s g n ts <<<"$r"
    echo "| \`$name\` | $desc | $nf | $(num "$s") | $(num "$g") | $(num "$n") | $(num "$ts") |"
  done
  echo
  echo "## moe-core by module group"
  echo
  echo "| group | contents | files | SLOC | gzip bytes | functions |"
  echo "|---|---|---:|---:|---:|---:|"
  for r in "${group_rows[@]}"; do
    IFS='|' read -r name desc nf s g n <<<"$r"
    echo "| $name | $desc | $nf | $(num "$s") | $(num "$g") | $(num "$n") |"
  done
  echo
  echo "The backward functions counted above:"
  echo "$backward_list" | awk 'NF { printf "%s`%s`", (n++ ? ", " : ""), $0 } END { print "." }'
  echo
  echo "## Method"
  echo
  echo "- **SLOC**: lines that are neither blank nor comment-only (\`//\`, \`///\`, \`//!\`,"
  echo "  \`/* … */\`). A line with code and a trailing comment counts."
  echo "- **gzip bytes**: \`gzip -9 -n\` of the group's text (files concatenated in path"
  echo "  order, comments included) — a proxy for information content that is less"
  echo "  sensitive to formatting than bytes or lines."
  echo "- **functions**: \`fn NAME\` definitions, including methods, private helpers,"
  echo "  trait-method declarations and nested \`fn\`s; closures excluded."
  echo "- **Tests**: \`moe-core\` and \`moe-bench\` are measured without their inline"
  echo "  \`#[cfg(test)]\` modules (last column); the test crates count every line."
  echo "- **Forward vs backward**: moe-core keeps each unit's forward and backward in one"
  echo "  file (STYLE.md), so a split by file is impossible. The script cuts every"
  echo "  function named \`backward*\`, \`rotate_back\`, \`silu_grad\` or \`aux_grad_coef\`"
  echo "  (with its doc comment and attributes; brace matching on the source with"
  echo "  strings, char literals and comments removed) out of the file that holds it and"
  echo "  counts it as *backward*; everything else stays in its file's group. So"
  echo "  *forward* is the forward files minus their backward functions, *kernels* omits"
  echo "  the softmax backward and SiLU gradient, and *optimizer* omits the aux-loss"
  echo "  gradient. The cross-entropy gradient (E15) is computed inside"
  echo "  \`loss::cross_entropy\` together with the loss and stays in *optimizer*. The"
  echo "  groups partition the crate: their SLOC and function counts sum to moe-core's."
  echo
  echo "Groups: forward = embedding, rmsnorm, rope, attention, router, swiglu, moe,"
  echo "linear, model; optimizer = optim, train, loss; sampling = generate; kernels ="
  echo "kernels/; infrastructure = config, layout, arena, error, lib."
  echo
  echo "Per-file numbers are in \`benchmarks/static.json\` (\`core_files\`)."
} >"$tmp/static.md"

# Partition check.
core_sloc=$(IFS='|' read -r _ _ _ s _ _ _ <<<"${crate_rows[0]}"; echo "$s")
core_fns=$(IFS='|' read -r _ _ _ _ _ n _ <<<"${crate_rows[0]}"; echo "$n")
sum_sloc=0
sum_fns=0
for r in "${group_rows[@]}"; do
  IFS='|' read -r _ _ _ s _ n <<<"$r"
  sum_sloc=$((sum_sloc + s))
  sum_fns=$((sum_fns + n))
done
if [[ $sum_sloc -ne $core_sloc || $sum_fns -ne $core_fns ]]; then
  echo "static_metrics: groups do not partition moe-core (SLOC $sum_sloc vs $core_sloc, functions $sum_fns vs $core_fns)" >&2
  exit 1
fi

if [[ $write -eq 1 ]]; then
  mkdir -p benchmarks docs
  cp "$tmp/static.json" "$json_out"
  cp "$tmp/static.md" "$md_out"
  echo "wrote $json_out and $md_out"
fi
sed -n '/^## Per crate/,/^The backward functions/p' "$tmp/static.md"
