#!/usr/bin/env bash
# Runs the libFuzzer targets of build-fuzz/ (see docs/fuzzing.md).
#
#   tests/fuzz/run.sh [-s SECONDS] [-o OUTDIR] [TARGET...]
#
# For each target (default: every build-fuzz/fuzz_*): first replays every file of
# tests/fuzz/regress/<target>/ (crash reproducers: any crash, leak, sanitizer report or
# broken invariant fails the target), then fuzzes for SECONDS (default $FUZZ_SECONDS or
# 25) from the seed corpus tests/fuzz/corpus/<target>/ with the dictionary
# tests/fuzz/<target>.dict when there is one. New corpus entries go to a scratch
# directory, never into the committed corpus; crash reproducers are kept in OUTDIR
# (default: a fresh /tmp directory) and named in the output.
# Prints one line per target, "FUZZ <target> PASS|FAIL ...", and exits non-zero when
# any target failed.
#
# Algorithmic cost is checked too (issue 9: a quadratic path is a denial of service
# before authentication): an input that runs longer than $FUZZ_TIMEOUT seconds (default
# 5) is a finding (libFuzzer's -timeout), and so is one that takes $FUZZ_SLOW seconds
# (default 1, whole seconds as libFuzzer counts them; -report_slow_units writes it as a
# slow-unit-* artifact). Every target handles an input in milliseconds.
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-25}
timeout=${FUZZ_TIMEOUT:-5}
slow=${FUZZ_SLOW:-1}
outdir=""
while getopts "s:o:" o; do
  case $o in
    s) seconds=$OPTARG ;;
    o) outdir=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$outdir" ] || outdir=$(mktemp -d /tmp/xmppd-fuzz.XXXXXX)
mkdir -p "$outdir"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for b in build-fuzz/fuzz_*; do [ -x "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')"); done
fi
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets in build-fuzz/: run make build-fuzz"; exit 1; }

# Leaks count as findings; every sanitizer report stops the run.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

failed=0
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz_$t
  log="$outdir/$t.log"
  : >"$log"
  if [ ! -x "$bin" ]; then
    echo "FUZZ $t FAIL (no $bin)"
    failed=$((failed + 1))
    continue
  fi
  ok=1
  why=""
  # 1. crash reproducers: each must run clean
  nreg=0
  if [ -d "tests/fuzz/regress/$t" ]; then
    mapfile -t reg < <(find "tests/fuzz/regress/$t" -type f ! -name '*.md' | sort)
    nreg=${#reg[@]}
    if [ "$nreg" -gt 0 ] && ! "$bin" -runs=1 -timeout="$timeout" "${reg[@]}" >>"$log" 2>&1; then
      ok=0
      why="a regression input of tests/fuzz/regress/$t crashes again (or times out); "
    fi
  fi
  # 2. bounded fuzzing from the seeds
  stats=""
  if [ "$ok" -eq 1 ] && [ "$seconds" -gt 0 ]; then
    work="$outdir/$t.corpus"
    mkdir -p "$work" "$outdir/$t.artifacts"
    dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    if ! "$bin" "${dict[@]}" -max_total_time="$seconds" -timeout="$timeout" -report_slow_units="$slow" \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$outdir/$t.artifacts/" \
        "$work" "tests/fuzz/corpus/$t" >>"$log" 2>&1; then
      ok=0
    fi
    # a slow unit does not stop libFuzzer: it is reported and written, and fails here
    slow_units=$(find "$outdir/$t.artifacts" -name 'slow-unit-*' | wc -l)
    if [ "$slow_units" -gt 0 ]; then
      ok=0
      why="$slow_units input(s) took ${slow} s or more: $outdir/$t.artifacts/slow-unit-*; "
    fi
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    execs=$(echo "$last" | sed -E 's/^#([0-9]+).*/\1/')
    cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | awk '{print $2}')
    ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | awk '{print $2}')
    stats="${seconds}s, ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}"
  fi
  if [ "$ok" -eq 1 ]; then
    echo "FUZZ $t PASS (${nreg} regress; ${stats:-no fuzzing})"
  else
    failed=$((failed + 1))
    echo "FUZZ $t FAIL (${why}log: $log)"
    grep -E 'INVARIANT|ERROR: |SUMMARY|runtime error|Test unit written|crashes again|Slowest unit' "$log" | head -10 | sed 's/^/    /'
  fi
done
[ "$failed" -eq 0 ]
