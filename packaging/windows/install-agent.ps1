#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs, upgrades or removes tcpulse-agent as a Windows service on a Teams Connector VM.

.DESCRIPTION
    Install    Copies tcpulse-agent.exe to "$env:ProgramFiles\tcpulse", writes the config to
               "$env:ProgramData\tcpulse-agent\agent.toml" (an existing one is kept), stores
               the Event Hubs connection string in a file only SYSTEM and Administrators can
               read, checks the config with `tcpulse-agent check-config`, registers the
               service with the agent's own `install` subcommand (LocalSystem, automatic
               start, runs `tcpulse-agent service --config <agent.toml>`), sets recovery
               actions with sc.exe and starts it. Run again, it converges: an installed
               service is upgraded in place.
    Upgrade    Stops the service (the agent flushes its spool, up to publish.shutdown_flush),
               replaces the exe (the previous one is kept as tcpulse-agent.exe.previous),
               re-checks the config and starts the service. Falls back to Install when the
               service is missing.
    Uninstall  Stops and removes the service and the exe. The data folder (config, secret,
               spool with any unsent reports, log) is kept unless -RemoveData is given.
               Running it when nothing is installed is not an error.

    The connection string is never a parameter value: it would be visible in the process
    list and the shell history. Give it as a file (-ConnectionStringFile, which you delete
    afterwards) or type it at the prompt. On Upgrade the stored one is kept unless a new
    one is given. A config with an Entra ID method in [publish] (auth = "managed_identity",
    the VM's identity with the role "Azure Event Hubs Data Sender") needs no connection
    string, and none is asked for.

.PARAMETER Action
    Install, Upgrade or Uninstall.

.PARAMETER SourceExe
    The new tcpulse-agent.exe. Default: tcpulse-agent.exe beside this script.

.PARAMETER ConfigFile
    The config to install when none is installed yet. Default: agent.toml beside this
    script. Ignored when "$env:ProgramData\tcpulse-agent\agent.toml" exists (edit that file
    instead), unless -ReplaceConfig is given.

.PARAMETER ReplaceConfig
    Overwrite an installed agent.toml with -ConfigFile (the old one is kept as
    agent.toml.previous).

.PARAMETER ConnectionStringFile
    A file whose content is the Event Hubs connection string (a Send-only policy, with
    EntityPath). Read once and stored protected; delete the original afterwards.

.PARAMETER RemoveData
    With Uninstall: also delete "$env:ProgramData\tcpulse-agent" (spool, log, config,
    secret). Unsent reports in the spool are lost.

.EXAMPLE
    .\install-agent.ps1 -Action Install -ConnectionStringFile D:\eventhub.txt

.EXAMPLE
    .\install-agent.ps1 -Action Upgrade -SourceExe D:\tcpulse-0.2.0\tcpulse-agent.exe

.EXAMPLE
    .\install-agent.ps1 -Action Uninstall -RemoveData
#>
[CmdletBinding(SupportsShouldProcess = $false)]
param(
    [Parameter(Mandatory = $true)]
    [ValidateSet('Install', 'Upgrade', 'Uninstall')]
    [string] $Action,

    [string] $SourceExe = (Join-Path $PSScriptRoot 'tcpulse-agent.exe'),

    [string] $ConfigFile = (Join-Path $PSScriptRoot 'agent.toml'),

    [switch] $ReplaceConfig,

    [string] $ConnectionStringFile,

    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# ---- Fixed locations (the agent's own defaults use the same data folder) ----------------
$ServiceName = 'tcpulse-agent'                       # SERVICE_NAME in agent/src/windows_service.rs
$InstallDir  = Join-Path $env:ProgramFiles 'tcpulse'
$InstalledExe = Join-Path $InstallDir 'tcpulse-agent.exe'
$DataDir     = Join-Path $env:ProgramData 'tcpulse-agent'
$ConfigPath  = Join-Path $DataDir 'agent.toml'
$SecretPath  = Join-Path $DataDir 'eventhub-connection-string.txt'
$StopTimeout = [TimeSpan]::FromSeconds(30)           # > publish.shutdown_flush (5 s) + closing

# Well-known SIDs, so the ACLs do not depend on the system language.
$SidSystem = '*S-1-5-18'                             # NT AUTHORITY\SYSTEM
$SidAdmins = '*S-1-5-32-544'                         # BUILTIN\Administrators

function Write-Step([string] $Message) {
    Write-Host "tcpulse: $Message"
}

# Runs a native program and stops the script when it fails (native programs do not throw).
function Invoke-Native {
    param([string] $FilePath, [string[]] $Arguments)
    & $FilePath @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "$FilePath $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

function Get-AgentService {
    Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
}

function Stop-AgentService {
    $svc = Get-AgentService
    if ($null -eq $svc -or $svc.Status -eq 'Stopped') { return }
    Write-Step "stopping $ServiceName (the agent flushes its spool first)"
    Stop-Service -Name $ServiceName -ErrorAction SilentlyContinue
    try {
        $svc.WaitForStatus('Stopped', $StopTimeout)
    } catch {
        throw "$ServiceName did not stop within $($StopTimeout.TotalSeconds) s; check $DataDir\agent.log"
    }
}

# Restricts a folder or file to SYSTEM and Administrators (no inherited entries, so the
# default "Users: read" of ProgramData does not apply). Folders pass the rule on to
# everything created in them.
function Set-AdminOnlyAcl([string] $Path) {
    $inherit = if (Test-Path -LiteralPath $Path -PathType Container) { '(OI)(CI)' } else { '' }
    Invoke-Native 'icacls.exe' @($Path, '/inheritance:r', '/grant:r',
        "${SidSystem}:${inherit}F", "${SidAdmins}:${inherit}F", '/Q')
}

# True unless the config (installed, else the one to install) names an Entra ID method:
# `auth = "managed_identity"` and the like in [publish] need no secret on the VM.
function Test-UsesConnectionString {
    $path = if (Test-Path -LiteralPath $ConfigPath) { $ConfigPath } else { $ConfigFile }
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) { return $true }
    $text = Get-Content -LiteralPath $path -Raw
    return -not ($text -match '(?m)^\s*auth\s*=\s*["'']?(managed_identity|client_secret|client_certificate|workload_identity)')
}

# The connection string: from -ConnectionStringFile, else the prompt; $null keeps the stored one.
function Read-ConnectionString([bool] $Required) {
    if ($ConnectionStringFile) {
        $value = (Get-Content -LiteralPath $ConnectionStringFile -Raw).Trim()
    } elseif ($Required) {
        $secure = Read-Host -AsSecureString 'Event Hubs connection string (Send policy, with EntityPath)'
        $value = [System.Net.NetworkCredential]::new('', $secure).Password.Trim()
    } else {
        return $null
    }
    if ($value -notmatch '(?i)(^|;)\s*Endpoint=sb://') {
        # Never echo the value: it holds the key.
        throw 'that is not an Event Hubs connection string (no Endpoint=sb://...); copy it from the Azure portal: Event Hubs namespace > Shared access policies'
    }
    return $value
}

function Save-ConnectionString([string] $Value) {
    # Create the file empty, lock it down, then write: the secret is never readable by others.
    if (-not (Test-Path -LiteralPath $SecretPath)) {
        New-Item -ItemType File -Path $SecretPath | Out-Null
    }
    Set-AdminOnlyAcl $SecretPath
    # UTF-8 without a byte-order mark: the agent reads the file as plain text.
    [System.IO.File]::WriteAllText($SecretPath, $Value, [System.Text.UTF8Encoding]::new($false))
    Write-Step "connection string stored in $SecretPath (SYSTEM and Administrators only)"
}

function Install-Files {
    if (-not (Test-Path -LiteralPath $SourceExe -PathType Leaf)) {
        throw "tcpulse-agent.exe not found at $SourceExe; pass -SourceExe"
    }
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    if (Test-Path -LiteralPath $InstalledExe) {
        Copy-Item -LiteralPath $InstalledExe -Destination "$InstalledExe.previous" -Force
    }
    Copy-Item -LiteralPath $SourceExe -Destination $InstalledExe -Force
    Write-Step "installed $InstalledExe ($((& $InstalledExe --version) -join ' '))"

    New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
    Set-AdminOnlyAcl $DataDir
    if (-not (Test-Path -LiteralPath $ConfigPath) -or $ReplaceConfig) {
        if (-not (Test-Path -LiteralPath $ConfigFile -PathType Leaf)) {
            throw "config not found at $ConfigFile; pass -ConfigFile"
        }
        if (Test-Path -LiteralPath $ConfigPath) {
            Copy-Item -LiteralPath $ConfigPath -Destination "$ConfigPath.previous" -Force
        }
        Copy-Item -LiteralPath $ConfigFile -Destination $ConfigPath -Force
        Write-Step "config written to $ConfigPath"
    } else {
        Write-Step "keeping the installed config $ConfigPath"
    }
}

function Test-AgentConfig {
    # check-config reads the secret file named in the config and prints no secret.
    Write-Step 'checking the config'
    Invoke-Native $InstalledExe @('check-config', '--config', $ConfigPath)
}

function Set-Recovery {
    # Restart after 5 s, 30 s, then every 60 s; forget failures after a day. failureflag 1
    # also applies the actions when the agent stops itself with an error (exit code != 0),
    # not only when the process crashes.
    Invoke-Native 'sc.exe' @('failure', $ServiceName, 'reset=', '86400',
        'actions=', 'restart/5000/restart/30000/restart/60000')
    Invoke-Native 'sc.exe' @('failureflag', $ServiceName, '1')
    # Start after the network stack and the Teams Connector service have come up.
    Invoke-Native 'sc.exe' @('config', $ServiceName, 'start=', 'delayed-auto')
}

function Start-AgentService {
    Write-Step "starting $ServiceName"
    Start-Service -Name $ServiceName
    (Get-AgentService).WaitForStatus('Running', [TimeSpan]::FromSeconds(30))
    Write-Step "$ServiceName is running; log: $DataDir\agent.log"
}

function Invoke-Install {
    if ($null -ne (Get-AgentService)) {
        Write-Step "$ServiceName is already installed: upgrading in place"
        Invoke-Upgrade
        return
    }
    Install-Files
    $needed = (Test-UsesConnectionString) -and -not (Test-Path -LiteralPath $SecretPath)
    $secret = Read-ConnectionString -Required $needed
    if ($null -ne $secret) { Save-ConnectionString $secret }
    Test-AgentConfig
    # The agent registers itself (LocalSystem, automatic start, no secret on its command line).
    Invoke-Native $InstalledExe @('install', '--config', $ConfigPath)
    Set-Recovery
    Start-AgentService
}

function Invoke-Upgrade {
    if ($null -eq (Get-AgentService)) {
        Write-Step "$ServiceName is not installed: installing"
        Invoke-Install
        return
    }
    $needed = (Test-UsesConnectionString) -and -not (Test-Path -LiteralPath $SecretPath)
    $secret = Read-ConnectionString -Required $needed
    Stop-AgentService
    Install-Files
    if ($null -ne $secret) { Save-ConnectionString $secret }
    try {
        Test-AgentConfig
    } catch {
        # Roll back to the previous exe so the site keeps reporting.
        if (Test-Path -LiteralPath "$InstalledExe.previous") {
            Copy-Item -LiteralPath "$InstalledExe.previous" -Destination $InstalledExe -Force
            Write-Step 'config check failed with the new exe: previous exe restored'
            Start-AgentService
        }
        throw
    }
    Set-Recovery
    Start-AgentService
}

function Invoke-Uninstall {
    if ($null -ne (Get-AgentService)) {
        Stop-AgentService
        if (Test-Path -LiteralPath $InstalledExe) {
            Invoke-Native $InstalledExe @('uninstall')
        } else {
            Invoke-Native 'sc.exe' @('delete', $ServiceName)
        }
    } else {
        Write-Step "$ServiceName is not installed"
    }
    if (Test-Path -LiteralPath $InstallDir) {
        Remove-Item -LiteralPath $InstallDir -Recurse -Force
        Write-Step "removed $InstallDir"
    }
    if ($RemoveData) {
        if (Test-Path -LiteralPath $DataDir) {
            Remove-Item -LiteralPath $DataDir -Recurse -Force
            Write-Step "removed $DataDir"
        }
    } elseif (Test-Path -LiteralPath $DataDir) {
        Write-Step "kept $DataDir (config, secret, spool); -RemoveData deletes it"
    }
}

switch ($Action) {
    'Install'   { Invoke-Install }
    'Upgrade'   { Invoke-Upgrade }
    'Uninstall' { Invoke-Uninstall }
}
