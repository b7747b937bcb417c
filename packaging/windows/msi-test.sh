#!/bin/sh
# Tests the agent MSI built by build-msi.sh: its tables (msiinfo), then install, reinstall and
# uninstall under wine in a throwaway prefix.
#
#   packaging/windows/msi-test.sh [path/to/tcpulse-agent-X.Y.Z-x64.msi]
#
# Needs msitools (msiinfo), wine64 and gcc-mingw-w64-x86-64 (wine-agent.sh runs the installed
# exe to compare the shipped reference config with what it prints). Exits non-zero with a
# "FAIL:" line on the first failed check. What wine cannot show is checked in the tables
# only: wine 8 ignores the MsiServiceConfig* tables (recovery actions, delayed start) and its
# icacls.exe is a stub that changes no ACL; the test checks that those custom actions ran
# and succeeded.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml")
msi=${1:-$target/x86_64-pc-windows-gnu/agent/tcpulse-agent-$version-x64.msi}

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }
[ -f "$msi" ] || { echo "no $msi; build it with packaging/windows/build-msi.sh" >&2; exit 2; }
for tool in msiinfo wine wineboot wineserver x86_64-w64-mingw32-gcc; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y --no-install-recommends msitools wine wine64 gcc-mingw-w64-x86-64" >&2; exit 2; }
done

work=$(mktemp -d)
export WINEDEBUG=-all WINEPREFIX="$work/wineprefix"
trap 'wineserver -k 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$msi" "$work/agent.msi"

# ---- tables ------------------------------------------------------------------------------
# The data row of TABLE whose first column is KEY, exactly as msiinfo exports it.
row() { msiinfo export "$work/agent.msi" "$1" | tr -d '\r' | awk -F '\t' -v k="$2" 'NR > 3 && $1 == k'; }
expect_row() { # TABLE KEY EXPECTED-ROW (tab-separated)
  got=$(row "$1" "$2")
  [ "$got" = "$3" ] || fail "$1 row $2 is
  '$got'
expected
  '$3'"
}
T=$(printf '\t')
tables=$(msiinfo tables "$work/agent.msi")
for t in ServiceInstall ServiceControl MsiServiceConfig MsiServiceConfigFailureActions CustomAction; do
  echo "$tables" | grep -qx "$t" || fail "table $t missing from the MSI (tables: $(echo $tables))"
done
# Own process (16), automatic start (2), normal error control (1), LocalSystem.
expect_row ServiceInstall AgentService "AgentService${T}tcpulse-agent${T}tcpulse agent (Teams Connector telemetry)${T}16${T}2${T}1${T}${T}${T}LocalSystem${T}${T}service --config \"[DATADIR]agent.toml\"${T}AgentExe${T}Publishes Teams Connector call counts and health to Azure Event Hubs"
# Event 162 = stop on install (0x2) + stop on uninstall (0x20) + delete on uninstall (0x80).
expect_row ServiceControl AgentServiceControl "AgentServiceControl${T}tcpulse-agent${T}162${T}${T}1${T}AgentExe"
expect_row MsiServiceConfig DelayedStart "DelayedStart${T}tcpulse-agent${T}5${T}3${T}1${T}AgentExe"
expect_row MsiServiceConfig FailureOnErrorExit "FailureOnErrorExit${T}tcpulse-agent${T}5${T}4${T}1${T}AgentExe"
expect_row MsiServiceConfigFailureActions RestartOnFailure "RestartOnFailure${T}tcpulse-agent${T}5${T}86400${T}${T}${T}1[~]1[~]1${T}5000[~]30000[~]60000${T}AgentExe"
sequence_of() { row InstallExecuteSequence "$1" | cut -f3; }
[ -n "$(sequence_of MsiConfigureServices)" ] \
  && [ "$(sequence_of InstallServices)" -lt "$(sequence_of MsiConfigureServices)" ] \
  && [ "$(sequence_of MsiConfigureServices)" -lt "$(sequence_of StartServices)" ] \
  || fail "MsiConfigureServices is not sequenced between InstallServices and StartServices"
# 3122 = run the exe named by a property (50), deferred (0x400), not impersonated (0x800).
expect_row CustomAction LockDataDir "LockDataDir${T}3122${T}ICACLS_EXE${T}\"[DATADIR].\" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F /Q${T}"
expect_row CustomAction LockSecret "LockSecret${T}3122${T}ICACLS_EXE${T}\"[DATADIR]eventhub-connection-string.txt\" /inheritance:r /grant:r *S-1-5-18:F *S-1-5-32-544:F /Q${T}"
attrs=$(row Component SpoolDir | cut -f4)
[ $((attrs & 16)) = 16 ] || fail "component SpoolDir is not permanent (Attributes $attrs): uninstall would delete the spool"
row Property SecureCustomProperties | grep -q 'CONNECTION_STRING_FILE' \
  || fail "CONNECTION_STRING_FILE is not in SecureCustomProperties"
# The event source (agent/src/event_log.rs): REG_EXPAND_SZ ("#%"), key without a trailing
# backslash (build-msi.sh fixes both after wixl), in the exe's component.
evkey='SYSTEM\CurrentControlSet\Services\EventLog\Application\tcpulse-agent'
evrow() { msiinfo export "$work/agent.msi" Registry | tr -d '\r' | awk -F '\t' -v n="$1" 'NR > 3 && $4 == n { print $2 FS $3 FS $5 FS $6 }'; }
[ "$(evrow EventMessageFile)" = "2${T}${evkey}${T}#%%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll${T}AgentExe" ] \
  || fail "Registry row EventMessageFile is '$(evrow EventMessageFile)'"
[ "$(evrow TypesSupported)" = "2${T}${evkey}${T}#7${T}AgentExe" ] \
  || fail "Registry row TypesSupported is '$(evrow TypesSupported)'"
# The reference config (issue 13): a file of the MSI (its long name after the "|"), in the data
# folder, in a component uninstall removes.
reffile=$(msiinfo export "$work/agent.msi" File | tr -d '\r' \
  | awk -F '\t' 'NR > 3 && ($3 == "reference.toml" || $3 ~ /[|]reference[.]toml$/)')
[ -n "$reffile" ] || fail "reference.toml is not in the File table"
refcomp=$(printf '%s\n' "$reffile" | cut -f2)
[ "$(row Component "$refcomp" | cut -f3)" = DATADIR ] \
  || fail "reference.toml's component $refcomp is not in DATADIR: '$(row Component "$refcomp")'"
attrs=$(row Component "$refcomp" | cut -f4)
[ $((attrs & 16)) = 0 ] || fail "component $refcomp of reference.toml is permanent (Attributes $attrs): uninstall would keep it"
ok "tables: service, control, recovery, delayed start, ACL actions, kept config and spool, event source, reference config"

# ---- wine --------------------------------------------------------------------------------
wineboot -i >/dev/null 2>&1 || fail "wineboot could not create the prefix $WINEPREFIX"
c="$WINEPREFIX/drive_c"
exe="$c/Program Files/tcpulse/tcpulse-agent.exe"
data="$c/ProgramData/tcpulse-agent"
key='HKLM\System\CurrentControlSet\Services\tcpulse-agent'
winpath() { printf 'Z:%s\n' "$1" | tr / '\\'; }
run_msiexec() { # ACTION LOG [PROPERTY=VALUE]...
  action=$1 log=$2; shift 2
  rc=0
  wine msiexec "$action" "$(winpath "$work/agent.msi")" /qn /l*v "$(winpath "$work/$log")" "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 40 "$work/$log" 2>/dev/null | tr -d '\r' >&2
    fail "msiexec $action exited with $rc (log above)"
  fi
}
reg_value() { wine reg query "$key" /v "$1" 2>/dev/null | tr -d '\r' | awk -v n="$1" '$1 == n { sub(/^ *[^ ]+ +[^ ]+ +/, ""); print }'; }
ran_ok() { # LOG ACTION: the action ran and returned success (1)
  tr -d '\r' < "$work/$1" | grep -q "Action ended .*: $2\. Return value 1\." || fail "$2 did not run successfully (see $1)"
}

# A custom action that fails fails the install and rolls it back: here, a connection string
# file that does not exist.
rc=0
wine msiexec /i "$(winpath "$work/agent.msi")" /qn /l*v "$(winpath "$work/failed.log")" \
  "CONNECTION_STRING_FILE=$(winpath "$work/missing.txt")" || rc=$?
[ "$rc" != 0 ] || fail "install with a missing CONNECTION_STRING_FILE succeeded"
wine reg query "$key" >/dev/null 2>&1 && fail "a failed install left the service registered"
[ ! -e "$exe" ] || fail "a failed install left $exe"
ok "a failing custom action (missing CONNECTION_STRING_FILE) fails the install (exit $rc) and rolls back"

printf 'Endpoint=sb://test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=not-a-key;EntityPath=tcpulse' > "$work/cs.txt"
run_msiexec /i install.log "CONNECTION_STRING_FILE=$(winpath "$work/cs.txt")"
[ "$(reg_value Start)" = 0x2 ] || fail "service start type is '$(reg_value Start)', expected 0x2 (automatic)"
[ "$(reg_value Type)" = 0x10 ] || fail "service type is '$(reg_value Type)', expected 0x10 (own process)"
[ "$(reg_value ObjectName)" = LocalSystem ] || fail "service account is '$(reg_value ObjectName)', expected LocalSystem"
# Windows quotes the exe path in ImagePath, wine 8 does not: accept both, nothing else.
image=$(reg_value ImagePath | sed 's/^"\([^"]*\)"/\1/')
want='C:\Program Files\tcpulse\tcpulse-agent.exe service --config "C:\ProgramData\tcpulse-agent\agent.toml"'
[ "$image" = "$want" ] || fail "service command line is '$image', expected '$want'"
[ -f "$exe" ] || fail "no $exe after install"
cmp -s "$data/agent.toml.example" "$here/agent.toml" || fail "installed agent.toml.example differs from packaging/windows/agent.toml"
cmp -s "$data/agent.toml" "$here/agent.toml" || fail "agent.toml was not created from the example"
[ -d "$data/spool" ] || fail "no spool folder after install"
cmp -s "$data/eventhub-connection-string.txt" "$work/cs.txt" || fail "the secret file does not hold CONNECTION_STRING_FILE's content"
for a in CreateConfig LockDataDir CopySecret EnsureSecret LockSecret InstallServices; do ran_ok install.log $a; done
# The installed reference config is what the installed exe prints (line endings aside).
[ -f "$data/reference.toml" ] || fail "no reference.toml in $data after install"
"$here/wine-agent.sh" "$exe" config > "$work/printed.toml" 2> "$work/printed.log" \
  || { cat "$work/printed.log" >&2; fail "wine tcpulse-agent.exe config failed (its output above)"; }
[ -s "$work/printed.toml" ] || fail "wine tcpulse-agent.exe config printed nothing"
same_reference() { tr -d '\r' < "$data/reference.toml" | cmp -s - "$work/printed.lf"; }
tr -d '\r' < "$work/printed.toml" > "$work/printed.lf"
same_reference || fail "installed reference.toml differs from what the installed exe's \`config\` prints"
evreg="HKLM\\$evkey"
wine reg query "$evreg" /v EventMessageFile 2>/dev/null | tr -d '\r' \
  | grep -q 'EventMessageFile *REG_EXPAND_SZ *%SystemRoot%\\Microsoft.NET\\Framework64\\v4.0.30319\\EventLogMessages.dll$' \
  || fail "event source not registered: $(wine reg query "$evreg" 2>&1 | tr -d '\r')"
ok "install: service tcpulse-agent (automatic, LocalSystem, '$image'), event source, exe, config, reference config, spool, secret"

# The site edits the config and the agent spools a report; a reinstall without a connection
# string keeps all three as they are.
echo '# edited on site' >> "$data/agent.toml"
echo 'unsent report' > "$data/spool/00000001.report"
cp "$data/agent.toml" "$work/edited.toml"
run_msiexec /x uninstall.log
wine reg query "$key" >/dev/null 2>&1 && fail "service tcpulse-agent still registered after uninstall"
[ ! -e "$exe" ] || fail "$exe still there after uninstall"
[ ! -e "$c/Program Files/tcpulse" ] || fail "C:\\Program Files\\tcpulse still there after uninstall"
[ ! -e "$data/reference.toml" ] || fail "reference.toml still there after uninstall"
[ ! -e "$data/agent.toml.example" ] || fail "agent.toml.example still there after uninstall"
cmp -s "$data/agent.toml" "$work/edited.toml" || fail "uninstall did not keep the edited agent.toml"
[ -f "$data/spool/00000001.report" ] || fail "uninstall did not keep the spool"
cmp -s "$data/eventhub-connection-string.txt" "$work/cs.txt" || fail "uninstall did not keep the secret file"
ran_ok uninstall.log DeleteServices
wine reg query "$evreg" >/dev/null 2>&1 && fail "event source $evreg still registered after uninstall"
ok "uninstall: service, event source, exe, example and reference config removed; edited config, spool and secret kept"

run_msiexec /i reinstall.log
[ "$(reg_value Start)" = 0x2 ] || fail "reinstall did not register the service again"
cmp -s "$data/agent.toml" "$work/edited.toml" || fail "reinstall overwrote the edited agent.toml"
cmp -s "$data/eventhub-connection-string.txt" "$work/cs.txt" || fail "reinstall changed the secret file"
[ -f "$data/reference.toml" ] && same_reference || fail "reinstall did not put reference.toml back as the exe prints it"
ok "reinstall: service and reference config back; edited config and secret untouched"
echo "msi test OK: $msi"
