#!/bin/sh
# Runs the agent's Windows exe under wine, for build-msi.sh and msi-test.sh:
#
#   WINEPREFIX=/some/prefix packaging/windows/wine-agent.sh path/to/tcpulse-agent.exe ARGS...
#
# The exe's stdout and exit code are this script's; wine's own messages go to stderr. Needs
# wine64 and gcc-mingw-w64-x86-64, and WINEPREFIX set by the caller (created if missing).
# Runs a copy of the exe in a scratch folder with the test-only bcryptprimitives.dll shim
# beside it (wine 8.0 lacks ProcessPrng, which Rust's std needs: see
# agent/ci/wine-bcryptprimitives.c), so the shim never lands next to an installed exe.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "wine-agent: $*" >&2; exit 2; }

[ $# -ge 1 ] || fail "usage: wine-agent.sh path/to/tcpulse-agent.exe ARGS..."
exe=$1
shift
[ -f "$exe" ] || fail "no $exe"
[ -n "${WINEPREFIX:-}" ] || fail "set WINEPREFIX (a private prefix, created if missing)"
for tool in wine x86_64-w64-mingw32-gcc; do
  command -v $tool >/dev/null || fail "missing $tool: apt-get install -y --no-install-recommends wine wine64 gcc-mingw-w64-x86-64"
done

run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
cp "$exe" "$run/tcpulse-agent.exe"
x86_64-w64-mingw32-gcc -shared -O2 -Wl,--kill-at -o "$run/bcryptprimitives.dll" \
  "$root/agent/ci/wine-bcryptprimitives.c" -ladvapi32 \
  || fail "could not build the bcryptprimitives.dll shim"
export WINEDEBUG=-all
# A new prefix first, so that wine's set-up output never mixes with the exe's.
[ -f "$WINEPREFIX/system.reg" ] || wineboot -i >/dev/null 2>&1 || fail "wineboot could not create $WINEPREFIX"
cd "$run"
wine tcpulse-agent.exe "$@"
