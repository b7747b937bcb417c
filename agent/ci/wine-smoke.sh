#!/bin/sh
# Smoke-test the cross-built Windows agent under wine (issue 4, "Windows").
#
#   cargo build --profile agent -p tcpulse-agent --target x86_64-pc-windows-gnu
#   agent/ci/wine-smoke.sh [path/to/tcpulse-agent.exe]
#
# Needs: gcc-mingw-w64-x86-64, wine64, openssl (see /work/notes/ci-packages.txt).
# Runs `--help` and `check-cert` on a PFX made here with openssl (a private root, an
# intermediate, and a leaf with serverAuth+clientAuth for tc-eu.example.com): the good
# certificate must pass (exit 0) and a wrong FQDN must fail (exit 1). Then installs the
# service with a bad config, starts it, and checks that the config error's reason reaches
# the event log (see the comment there), and that uninstall removes the event source.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
exe=${1:-${CARGO_TARGET_DIR:-$root/target}/x86_64-pc-windows-gnu/agent/tcpulse-agent.exe}
[ -f "$exe" ] || { echo "no $exe; build it first" >&2; exit 2; }
for tool in x86_64-w64-mingw32-gcc wine openssl; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y gcc-mingw-w64-x86-64 wine64 openssl" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'WINEPREFIX="$work/wineprefix" wineserver -k 2>/dev/null; rm -rf "$work"' EXIT
cp "$exe" "$work/tcpulse-agent.exe"
# wine 8.0 lacks bcryptprimitives.dll (ProcessPrng), which Rust's std needs; see the .c file.
x86_64-w64-mingw32-gcc -shared -O2 -Wl,--kill-at -o "$work/bcryptprimitives.dll" "$here/wine-bcryptprimitives.c" -ladvapi32
export WINEDEBUG=-all WINEPREFIX="$work/wineprefix"

cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -keyout root.key -out root.pem -days 3650 -subj "/CN=Smoke Root" \
  -addext basicConstraints=critical,CA:true -addext keyUsage=keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout int.key -out int.csr -subj "/CN=Smoke Intermediate" 2>/dev/null
printf 'basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=keyCertSign,cRLSign\n' > int.ext
openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -out int.pem -days 3650 -extfile int.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout tc.key -out tc.csr -subj "/CN=tc-eu.example.com" 2>/dev/null
printf 'extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:tc-eu.example.com\n' > tc.ext
openssl x509 -req -in tc.csr -CA int.pem -CAkey int.key -CAcreateserial -out tc.pem -days 365 -extfile tc.ext 2>/dev/null
openssl pkcs12 -export -inkey tc.key -in tc.pem -certfile int.pem -passout pass:smoke -out tc.pfx

wine tcpulse-agent.exe --help | grep -q "check-cert" || { echo "FAIL: --help" >&2; exit 1; }
wine tcpulse-agent.exe --version
TCPULSE_CERT_PASSWORD=smoke WINEDEBUG=-all wine tcpulse-agent.exe check-cert --cert tc.pfx --fqdn tc-eu.example.com
set +e
TCPULSE_CERT_PASSWORD=smoke wine tcpulse-agent.exe check-cert --cert tc.pfx --fqdn other.example.com > wrong.txt
rc=$?
set -e
[ "$rc" = 1 ] || { cat wrong.txt; echo "FAIL: wrong FQDN gave exit $rc, expected 1" >&2; exit 1; }
grep -q "FAIL  name" wrong.txt

# The service and its event log entries (issue 13). `install` registers the service and the
# event source; the service, started by wine's service manager, fails on the config's
# unknown key and writes the reason to the event log as an Error entry; `uninstall` removes
# both. Wine has no event log: its ReportEventW prints each Error entry's text on the
# eventlog debug channel (err:eventlog), which goes to the stderr of the process that
# started wine's services.exe. So restart wine with that channel on and stderr in a file.
printf '[identity]\nconnector = "tc-eu.example.com"\ncolour = "blue"\n' > bad.toml
evkey='HKLM\System\CurrentControlSet\Services\EventLog\Application\tcpulse-agent'
wineserver -k 2>/dev/null || true
wineserver -w
export WINEDEBUG=-all,err+eventlog
: > service.log
wine tcpulse-agent.exe install --config bad.toml 2>> service.log \
  || { cat service.log >&2; echo "FAIL: install" >&2; exit 1; }
wine reg query "$evkey" /v EventMessageFile | tr -d '\r' | grep -q 'REG_EXPAND_SZ.*EventLogMessages.dll' \
  || { printf "FAIL: install did not register the event source %s\n" "$evkey" >&2; exit 1; }
wine tcpulse-agent.exe start 2>> service.log || true
reason='unknown field `colour`'
for _ in $(seq 1 30); do
  grep -q "stopped on a configuration error (exit 78).*$reason" service.log && break
  sleep 1
done
grep "eventlog" service.log | grep -q "stopped on a configuration error (exit 78).*$reason" \
  || { cat service.log >&2; echo "FAIL: no event log Error entry with the config error's reason" >&2; exit 1; }
wine tcpulse-agent.exe uninstall 2>> service.log >/dev/null \
  || { cat service.log >&2; echo "FAIL: uninstall" >&2; exit 1; }
if wine reg query "$evkey" >/dev/null 2>&1; then
  printf "FAIL: uninstall left the event source %s\n" "$evkey" >&2; exit 1
fi
export WINEDEBUG=-all
echo "wine smoke test OK"
