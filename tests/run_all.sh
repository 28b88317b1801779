#!/usr/bin/env bash
# Runs every test: Criterion unit tests and the integration tests (real xmppd processes
# driven by real XMPP clients), against the normal build and the ASan+UBSan build, then
# each libFuzzer target of build-fuzz for a bounded time (tests/fuzz/run.sh).
# Ends with one line: "N passed, N failed".
# A suite that ran nothing, or fewer than expected, fails: every unit test binary of
# tests/unit/test_*.c must exist in each build and report at least one test, every
# fuzz target of tests/fuzz/fuzz_*.c must exist in build-fuzz, and the integration run
# must run every test it discovered, and no fewer than the test methods in its files.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
log_dir=$(mktemp -d /tmp/xmppd-tests.XXXXXX)
# Every failing line is repeated just above the final count, with its details, so a CI log
# that keeps only the tail still names what failed.
recap=""
note_failure() { recap+="$1"$'\n'; }

count_criterion() { # file -> "passing failing"
  awk -F'|' '/Synthesis: Tested/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /Passing/) { split($i, a, ":"); p = a[2] + 0 }
        if ($i ~ /Failing/) { split($i, a, ":"); f = a[2] + 0 }
        if ($i ~ /Crashing/) { split($i, a, ":"); c = a[2] + 0 }
      }
    } END { print p + 0, f + c + 0 }' "$1"
}

# what must run: derived from the sources, not from what the build happens to hold
mapfile -t unit_tests < <(for f in tests/unit/test_*.c; do basename "$f" .c; done)
mapfile -t fuzz_targets < <(for f in tests/fuzz/fuzz_*.c; do basename "$f" .c | sed 's/^fuzz_//'; done)
# integration test methods written in the files (a lower bound: subclasses run their
# parent's tests again)
it_methods=$(cat tests/integration/test_*.py | grep -cE '^    (async )?def test_')

for build in build build-asan; do
  [ -d "$build" ] || { echo "missing $build: run make test"; exit 1; }
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  for name in "${unit_tests[@]}"; do
    t="$build/$name"
    if [ ! -x "$t" ]; then
      printf '%-12s %-22s    0 passed, 1 failed   (no binary: Criterion missing, or not built)\n' "$build" "$name"
      note_failure "FAILED $build/$name: the binary is missing (tests/unit/$name.c exists)"
      failed=$((failed + 1))
      continue
    fi
    out="$log_dir/$build-$name.log"
    "$t" --jobs 2 >"$out" 2>&1
    rc=$?
    read -r p f < <(count_criterion "$out")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
      f=1 # ran nothing
      echo "ran no test" >>"$out"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    printf '%-12s %-22s %4d passed, %d failed\n' "$build" "$name" "$p" "$f"
    if [ "$f" -ne 0 ]; then
      details=$(grep -E 'FAIL|CRASH|ERROR|Assertion|runtime error|\[----\]|^ran no test' "$out" | head -20)
      echo "$details"
      note_failure "FAILED $build/$name (log $out):"$'\n'"$details"
    fi
  done
  out="$log_dir/$build-integration.log"
  XMPPD_BUILD="$PWD/$build" /usr/bin/python3 tests/integration/run.py >"$out" 2>&1
  rc=$?
  line=$(grep -E '^INTEGRATION: [0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
  p=$(echo "$line" | awk '{print $2 + 0}')
  f=$(echo "$line" | awk '{print $4 + 0}')
  if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
  if [ "$(( ${p:-0} + ${f:-0} ))" -lt "$it_methods" ]; then
    # fewer tests ran than the files define: a module that failed to load, a crash
    echo "ran $(( ${p:-0} + ${f:-0} )) integration tests, the files define at least $it_methods" | tee -a "$out"
    f=$(( ${f:-0} + 1 ))
  fi
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  printf '%-12s %-22s %4d passed, %d failed\n' "$build" "integration" "${p:-0}" "${f:-0}"
  if [ "${f:-0}" -ne 0 ]; then
    # each failure's block as unittest prints it (header, traceback, message, and a
    # node's log where a test puts it in the message), 40 lines at most per block
    details=$(awk '/^==========+$/ {inblk = 1; n = 0; next}
                   /^----------+$/ && inblk && n > 1 {next}
                   /^(Ran [0-9]+ tests? in|INTEGRATION:)/ {inblk = 0}
                   inblk && n++ < 40 {print}' "$out" | head -160; grep -E '^ran [0-9]+ integration' "$out")
    echo "$details"; echo "(full log: $out)"
    note_failure "FAILED $build/integration (log $out):"$'\n'"$details"
  fi
done

# libFuzzer targets (build-fuzz, clang, ASan+UBSan): each replays its crash reproducers
# (tests/fuzz/regress/<target>/) and then fuzzes from its seeds for a bounded time
# (FUZZ_TEST_SECONDS, default 25): one pass or fail per target.
if [ -d build-fuzz ]; then
  for t in "${fuzz_targets[@]}"; do
    # run.sh fails a target whose binary is missing
    line=$(bash tests/fuzz/run.sh -s "${FUZZ_TEST_SECONDS:-25}" -o "$log_dir/fuzz" "$t" 2>&1)
    if [ $? -eq 0 ]; then p=1 f=0; else p=0 f=1; fi
    passed=$((passed + p))
    failed=$((failed + f))
    printf '%-12s %-22s %4d passed, %d failed   %s\n' "build-fuzz" "fuzz_$t" "$p" "$f" \
      "$(echo "$line" | head -1 | sed -E 's/^FUZZ [a-z_]+ (PASS|FAIL) //')"
    if [ "$f" -ne 0 ]; then
      echo "$line" | tail -n +2
      note_failure "FAILED build-fuzz/fuzz_$t:"$'\n'"$(echo "$line" | head -12)"
    fi
  done
else
  echo "missing build-fuzz: run make test"
  note_failure "FAILED build-fuzz: directory missing"
  failed=$((failed + 1))
fi

# Mutants (tests/mutants/, docs/testing.md): the fast ones, each a planted bug that a
# listed test must catch; one pass per mutant killed, one failure per survivor.
out="$log_dir/mutants.log"
bash tests/mutants/run.sh --ci >"$out" 2>&1
line=$(grep -E '^MUTANTS: [0-9]+ killed, [0-9]+ survived' "$out" | tail -1)
k=$(echo "$line" | awk '{print $2 + 0}')
sv=$(echo "$line" | awk '{print $4 + 0}')
[ -n "$line" ] || sv=1
passed=$((passed + k))
failed=$((failed + sv))
printf '%-12s %-22s %4d passed, %d failed\n' "mutants" "tests/mutants (ci)" "$k" "$sv"
if [ "$sv" -ne 0 ]; then
  grep -v '^mutant .* killed by' "$out" | tail -60
  note_failure "FAILED mutants (log $out):"$'\n'"$(grep -E 'SURVIVED|does not apply|unmutated' "$out")"
fi

if [ -n "$recap" ]; then printf '\n--- failures ---\n%s\n' "$recap"; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
