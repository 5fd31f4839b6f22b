# Sourced by the scripts/bench-* scripts. When BENCH_SUMMARY names a file,
# `summary` appends one figure to it for scripts/bench's table, as a line of
# tab-separated fields:
#
#   id  measure  unit  svckit  baseline-name  baseline  goal
#
# svckit and baseline are comma-separated values, one per round (baseline
# and its name are `-` when nothing comparable runs); goal is `ratio>=X`,
# `ratio<=X`, `value<=X` (on the svckit median, in unit) or `-`, optionally
# followed by `;` and a note such as another system's figure.
summary() { # id measure unit svckit baseline-name baseline goal
  [ -n "${BENCH_SUMMARY:-}" ] || return 0
  [ $# = 7 ] || { echo "summary: 7 fields expected, got $#" >&2; return 1; }
  local IFS=$'\t'
  echo "$*" >>"$BENCH_SUMMARY"
}
