#!/bin/sh
# Builds the agent's Windows installer on Linux with msitools' wixl (Debian: msitools, wixl).
#
#   cargo build --profile agent --locked -p tcpulse-agent --target x86_64-pc-windows-gnu
#   packaging/windows/build-msi.sh [path/to/tcpulse-agent.exe [out.msi]]
#
# Default exe: $CARGO_TARGET_DIR (or target)/x86_64-pc-windows-gnu/agent/tcpulse-agent.exe;
# default output: tcpulse-agent-<version>-x64.msi beside it. The version is the workspace's
# (Cargo.toml). Prints the path of the MSI.
#
# The MSI ships the reference config (reference.toml: every setting with its docs and
# defaults), which `tcpulse-agent.exe config` generates from the config structs, so this
# script runs the exe under wine (wine-agent.sh; needs wine64 and gcc-mingw-w64-x86-64) in
# a private prefix, $CARGO_TARGET_DIR/wineprefix-build-msi, and writes
# tcpulse-agent-reference.toml beside the exe. It keeps the exe's line endings (LF, like the
# example agent.toml).
#
# wixl 0.101 (Debian 12) writes the ServiceInstall and ServiceControl tables but has no
# element for the rest, so this script adds it to the database with msibuild afterwards:
#   - Component attribute Permanent (0x10) on the spool folder's component, so uninstall
#     keeps the spool (agent.toml is not the MSI's: it is kept anyway);
#   - CONNECTION_STRING_FILE in SecureCustomProperties, so the property reaches the
#     elevated part of the install;
#   - the Windows Installer 5 tables MsiServiceConfig (delayed automatic start; failure
#     actions also on an error exit, like `sc.exe failureflag 1`) and
#     MsiServiceConfigFailureActions (restart after 5 s, 30 s, then 60 s; reset after a
#     day, like install-agent.ps1's `sc.exe failure`), and the standard action
#     MsiConfigureServices that applies them, between InstallServices and StartServices.
#   - the event source's registry values as wixl should have written them: its Key without
#     the trailing backslash wixl appends, and EventMessageFile as REG_EXPAND_SZ (the "#%"
#     prefix, which wixl drops for Type="expandable").
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
exe=${1:-$target/x86_64-pc-windows-gnu/agent/tcpulse-agent.exe}
fail() { echo "build-msi: $*" >&2; exit 1; }

[ -f "$exe" ] || fail "no $exe; build it first: cargo build --profile agent --locked -p tcpulse-agent --target x86_64-pc-windows-gnu"
for tool in wixl msibuild msiinfo; do
  command -v $tool >/dev/null || fail "missing $tool: apt-get install -y --no-install-recommends msitools wixl"
done
for tool in wine wineserver x86_64-w64-mingw32-gcc; do
  command -v $tool >/dev/null || fail "missing $tool: apt-get install -y --no-install-recommends wine wine64 gcc-mingw-w64-x86-64"
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || fail "no version in [workspace.package] of $root/Cargo.toml"
out=${2:-$(dirname "$exe")/tcpulse-agent-$version-x64.msi}

# The reference config, as the exe prints it (under wine). Its stderr (and wine's) goes to a
# log shown only on failure.
reference=$(dirname "$exe")/tcpulse-agent-reference.toml
prefix=$target/wineprefix-build-msi
mkdir -p "$prefix"
rc=0
WINEPREFIX=$prefix "$here/wine-agent.sh" "$exe" config > "$reference" 2> "$reference.log" || rc=$?
WINEPREFIX=$prefix wineserver -k 2>/dev/null || true
no_reference() { cat "$reference.log" >&2; rm -f "$reference" "$reference.log"; fail "$@"; }
[ "$rc" = 0 ] || no_reference "wine $exe config exited with $rc (its output above)"
[ -s "$reference" ] || no_reference "wine $exe config printed nothing (its output above)"
rm -f "$reference.log"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/tcpulse-agent.exe"
cp "$here/agent.toml" "$here/tcpulse-agent.wxs" "$stage/"
cp "$reference" "$stage/reference.toml"
(cd "$stage" && wixl --arch x64 --define Version="$version" --output agent.msi tcpulse-agent.wxs) \
  || fail "wixl failed on $here/tcpulse-agent.wxs"

# One tab-separated IDT file per table: column names, column types, table name and keys.
tab=$(printf '\t')
cat > "$stage/MsiServiceConfig.idt" <<EOF
MsiServiceConfig${tab}Name${tab}Event${tab}ConfigType${tab}Argument${tab}Component_
s72${tab}s255${tab}i2${tab}i4${tab}S0${tab}s72
MsiServiceConfig${tab}MsiServiceConfig
DelayedStart${tab}tcpulse-agent${tab}5${tab}3${tab}1${tab}AgentExe
FailureOnErrorExit${tab}tcpulse-agent${tab}5${tab}4${tab}1${tab}AgentExe
EOF
# Event 5 = install (1) + reinstall (4). ConfigType 3 = SERVICE_CONFIG_DELAYED_AUTO_START_INFO,
# 4 = SERVICE_CONFIG_FAILURE_ACTIONS_FLAG. Actions 1 = restart; delays in ms; reset in s.
cat > "$stage/MsiServiceConfigFailureActions.idt" <<EOF
MsiServiceConfigFailureActions${tab}Name${tab}Event${tab}ResetPeriod${tab}RebootMessage${tab}Command${tab}Actions${tab}DelayActions${tab}Component_
s72${tab}s255${tab}i2${tab}I4${tab}S255${tab}S255${tab}S0${tab}S0${tab}s72
MsiServiceConfigFailureActions${tab}MsiServiceConfigFailureActions
RestartOnFailure${tab}tcpulse-agent${tab}5${tab}86400${tab}${tab}${tab}1[~]1[~]1${tab}5000[~]30000[~]60000${tab}AgentExe
EOF

msi="$stage/agent.msi"
# agent/src/event_log.rs: REGISTRY_KEY and MESSAGE_FILE.
eventlog_key='SYSTEM\CurrentControlSet\Services\EventLog\Application\tcpulse-agent'
message_file='%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll'
secure=$(msiinfo export "$msi" Property | awk -F '\t' '$1 == "SecureCustomProperties" { print $2 }')
secure=${secure:+$secure;}CONNECTION_STRING_FILE
(cd "$stage" && msibuild agent.msi \
  -i MsiServiceConfig.idt \
  -i MsiServiceConfigFailureActions.idt \
  -q "INSERT INTO \`InstallExecuteSequence\` (\`Action\`, \`Condition\`, \`Sequence\`) VALUES ('MsiConfigureServices', 'VersionNT', 5850)" \
  -q "UPDATE \`Component\` SET \`Attributes\` = 272 WHERE \`Component\` = 'SpoolDir'" \
  -q "UPDATE \`Property\` SET \`Value\` = '$secure' WHERE \`Property\` = 'SecureCustomProperties'" \
  -q "UPDATE \`Registry\` SET \`Key\` = '$eventlog_key' WHERE \`Component_\` = 'AgentExe'" \
  -q "UPDATE \`Registry\` SET \`Value\` = '#%$message_file' WHERE \`Name\` = 'EventMessageFile'") \
  || fail "msibuild could not add the service configuration tables"
# 272 = 0x100 (64-bit component, as wixl wrote it) + 0x10 (permanent).

mkdir -p "$(dirname "$out")"
cp "$msi" "$out"
echo "$out"
