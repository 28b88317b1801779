#!/usr/bin/env bash
# Tests the tests: each mutant (tests/mutants/*.patch) is a small, plausible bug in the
# server; applied to a copy of the tree, it must make at least one of the tests listed for
# it in tests/mutants/mutants.txt fail. A mutant that survives is a guarantee no test
# holds the server to, and fails this run.
#
#   bash tests/mutants/run.sh [--ci] [NAME...]
#     --ci   only the mutants marked "ci" in mutants.txt (the fast ones; run by
#            tests/run_all.sh)
#     NAME   only these mutants (patch names without .patch)
# Ends with one line: "MUTANTS: N killed, N survived".
set -uo pipefail
cd "$(dirname "$0")/../.."
top=$PWD
ci=0
only=()
for a in "$@"; do
  case "$a" in
    --ci) ci=1 ;;
    *) only+=("$a") ;;
  esac
done

# The copy: the working tree as it is (committed or not), never the tree itself, so an
# interrupted run leaves no mutant behind.
work=$(mktemp -d /tmp/xmppd-mutants.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src" 2>/dev/null
build="$src/build"
if ! cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXMPP_WERROR=ON -DXMPP_TESTS=ON \
    >"$work/cmake.log" 2>&1 || ! cmake --build "$build" -j "$(nproc)" >"$work/build.log" 2>&1; then
  echo "mutants: the unmutated copy does not build"; tail -20 "$work/build.log"
  echo "MUTANTS: 0 killed, 1 survived"
  exit 1
fi

# mutants.txt: "NAME ci|- TEST..." per line; TEST is an integration test id
# (module.Class[.method]) or unit:BINARY[:SUITE/TEST] for a Criterion binary.
run_test() { # test -> 0 when it passed
  local t=$1
  if [[ "$t" == unit:* ]]; then
    local rest=${t#unit:} bin filter
    bin=${rest%%:*}
    filter=${rest#"$bin"}; filter=${filter#:}
    if [ -n "$filter" ]; then
      timeout 300 "$build/$bin" --filter "$filter" >>"$log" 2>&1
    else
      timeout 300 "$build/$bin" >>"$log" 2>&1
    fi
  else
    (cd "$src/tests/integration" && XMPPD_BUILD="$build" timeout 600 /usr/bin/python3 -m unittest "$t") >>"$log" 2>&1
  fi
}

killed=0
survived=0
while read -r name mark tests; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
  [ "$ci" = 1 ] && [ "$mark" != ci ] && continue
  patch_file="$top/tests/mutants/$name.patch"
  log="$work/$name.log"
  start=$(date +%s)
  if ! (cd "$src" && git apply "$patch_file") >"$log" 2>&1; then
    echo "mutant $name: does not apply (update the patch)"; cat "$log"
    survived=$((survived + 1))
    continue
  fi
  verdict=survived
  if ! cmake --build "$build" -j "$(nproc)" >>"$log" 2>&1; then
    verdict="did not build"
  else
    for t in $tests; do
      if ! run_test "$t"; then
        verdict="killed by $t"
        break
      fi
    done
  fi
  (cd "$src" && git apply -R "$patch_file") >>"$log" 2>&1
  secs=$(( $(date +%s) - start ))
  if [[ "$verdict" == killed* ]]; then
    killed=$((killed + 1))
    printf 'mutant %-28s %s (%ds)\n' "$name" "$verdict" "$secs"
  else
    survived=$((survived + 1))
    printf 'mutant %-28s SURVIVED: %s (%ds; log below)\n' "$name" "$verdict" "$secs"
    tail -30 "$log"
  fi
done <"$top/tests/mutants/mutants.txt"
echo "MUTANTS: $killed killed, $survived survived"
[ "$survived" -eq 0 ] && [ "$killed" -gt 0 ]
