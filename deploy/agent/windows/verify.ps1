<#
.SYNOPSIS
    Checks a Ruse agent on this Windows host end to end and prints a
    pass/fail report.

.DESCRIPTION
    Run it in an elevated PowerShell on a test machine, after installing
    ruse-agent.msi and applying a campaign that plants at least one whole-file
    lure on it (a honeyfile such as patient-csv, or rdp-credentials). It
    checks, in order:

      1. the RuseAgent service: running, started automatically, as LocalSystem;
      2. the agent: enrolled, connected to its controller, no problems in its
         heartbeats (`ruse-agent.exe status`);
      3. the audit policy: success auditing of the File System and Registry
         subcategories (what turns a lure's audit SACL into events);
      4. a planted lure: present, with its audit SACL (Everyone, read data);
      5. a read of it with Get-Content: logged by Windows as event 4663 naming
         this PowerShell process;
      6. that read's event acknowledged by the controller (stored there),
         within -TimeoutSeconds, as the agent's status lists it.

    It changes nothing but reading the lure, which raises a real incident on
    the controller: tell the security team first, or resolve it afterwards
    (its process is this PowerShell, its user you).

    Exit code: 0 when every check passed, 1 when one failed, 2 when the
    script could not run (not elevated, agent not installed).

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File verify.ps1
#>
[CmdletBinding()]
param(
    # Where the MSI installed ruse-agent.exe.
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'Ruse'),
    # The agent's state directory.
    [string]$StateDir = (Join-Path $env:ProgramData 'Ruse\agent'),
    # How long to wait for Windows to log the read and the controller to
    # acknowledge it.
    [int]$TimeoutSeconds = 60
)

Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'

$results = [System.Collections.Generic.List[object]]::new()
function Add-Result([string]$Check, [bool]$Ok, [string]$Detail) {
    $results.Add([pscustomobject]@{
        Check  = $Check
        Result = $(if ($Ok) { 'PASS' } else { 'FAIL' })
        Detail = $Detail
    })
    $mark = $(if ($Ok) { 'PASS' } else { 'FAIL' })
    Write-Host ("[{0}] {1}: {2}" -f $mark, $Check, $Detail)
}

function Get-AgentStatus {
    # Windows PowerShell turns a native command's stderr into errors, which
    # 'Stop' would make fatal: the agent's own message is not needed here.
    $ErrorActionPreference = 'Continue'
    $json = & $agentExe status --state-dir $StateDir --json 2>$null
    if (-not $json) { return $null }
    return ($json -join "`n") | ConvertFrom-Json
}

function Stop-Unrunnable([string]$Message) {
    [Console]::Error.WriteLine("verify.ps1: $Message")
    exit 2
}

# 0. Preconditions.
$principal = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Stop-Unrunnable 'run it in an elevated PowerShell (Run as administrator): the agent''s state, the audit policy and the Security log are readable by administrators only.'
}
$agentExe = Join-Path $InstallDir 'ruse-agent.exe'
if (-not (Test-Path -LiteralPath $agentExe)) {
    Stop-Unrunnable "ruse-agent.exe is not at $agentExe; install ruse-agent.msi or give -InstallDir."
}

# 1. The service.
$service = Get-CimInstance -ClassName Win32_Service -Filter "Name='RuseAgent'" -ErrorAction SilentlyContinue
if (-not $service) {
    Add-Result 'service' $false 'the RuseAgent service is not installed'
} else {
    $ok = $service.State -eq 'Running' -and $service.StartMode -eq 'Auto' -and $service.StartName -eq 'LocalSystem'
    Add-Result 'service' $ok ("state {0}, start {1}, account {2} (wanted Running, Auto, LocalSystem)" -f $service.State, $service.StartMode, $service.StartName)
}

# 2. The agent.
$status = Get-AgentStatus
if (-not $status) {
    Add-Result 'agent' $false "no status from '$agentExe status' (is the service running with state directory $StateDir?)"
} else {
    $problems = @($status.problems)
    $ok = $status.connected -and $problems.Count -eq 0
    $detail = "agent {0}, controller {1}, connected {2}, {3} lures" -f $status.agent_id, $status.controller, $status.connected, $status.lures
    if ($problems.Count -gt 0) { $detail += '; problems: ' + ($problems -join ' | ') }
    Add-Result 'agent' $ok $detail
}

# 3. The audit policy ("Setting Value": 1 success, 2 failure, 3 both).
foreach ($sub in @(
        @{ Name = 'File System'; Guid = '{0CCE921D-69AE-11D9-BED3-505054503030}' },
        @{ Name = 'Registry'; Guid = '{0CCE921E-69AE-11D9-BED3-505054503030}' })) {
    try {
        # The report starts with an empty line in some Windows versions.
        $row = auditpol /get /subcategory:$($sub.Guid) /r | Where-Object { $_ -ne '' } |
            ConvertFrom-Csv | Select-Object -First 1
        $value = [int]$row.'Setting Value'
        Add-Result "audit policy: $($sub.Name)" (($value -band 1) -ne 0) "setting value $value (success auditing needs bit 1; a group policy may override what the agent sets)"
    } catch {
        Add-Result "audit policy: $($sub.Name)" $false "auditpol failed: $_"
    }
}

# 4. A planted lure, with its audit SACL.
$lure = $null
$statePath = Join-Path $StateDir 'lures.json'
if (Test-Path -LiteralPath $statePath) {
    $state = Get-Content -LiteralPath $statePath -Raw | ConvertFrom-Json
    foreach ($entry in $state.lures.PSObject.Properties) {
        foreach ($file in @($entry.Value.files)) {
            if ($file.kind -eq 'whole' -and (Test-Path -LiteralPath $file.path)) {
                $lure = [pscustomobject]@{ Id = $entry.Name; Template = $entry.Value.template; Path = $file.path }
                break
            }
        }
        if ($lure) { break }
    }
}
if (-not $lure) {
    Add-Result 'planted lure' $false "no whole-file lure found in $statePath; apply a campaign with a honeyfile (patient-csv) to this host"
} else {
    $everyone = 'S-1-1-0'
    $audit = @((Get-Acl -LiteralPath $lure.Path -Audit).Audit | Where-Object {
            $_.IdentityReference.Translate([Security.Principal.SecurityIdentifier]).Value -eq $everyone -and
            ($_.FileSystemRights -band [Security.AccessControl.FileSystemRights]::ReadData) -and
            ($_.AuditFlags -band [Security.AccessControl.AuditFlags]::Success)
        })
    Add-Result 'planted lure' ($audit.Count -gt 0) ("{0} ({1}, lure {2}); audit entry for reads by Everyone: {3}" -f $lure.Path, $lure.Template, $lure.Id, $(if ($audit.Count -gt 0) { 'present' } else { 'missing' }))
}

# 5 and 6. Read it; Windows logs it; the controller acknowledges it.
if ($lure -and $status) {
    $start = (Get-Date).AddSeconds(-1)
    $startMs = ([DateTimeOffset]$start).ToUnixTimeMilliseconds()
    Get-Content -LiteralPath $lure.Path -TotalCount 1 | Out-Null
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)

    $logged = $null
    while (-not $logged -and (Get-Date) -lt $deadline) {
        Start-Sleep -Seconds 1
        $logged = Get-WinEvent -FilterHashtable @{ LogName = 'Security'; Id = 4663; StartTime = $start } -ErrorAction SilentlyContinue |
            Where-Object {
                $data = @{}
                foreach ($d in ([xml]$_.ToXml()).Event.EventData.Data) { $data[$d.Name] = $d.InnerText }
                $data['ObjectName'] -eq $lure.Path -and [Convert]::ToInt64($data['ProcessId'], 16) -eq $PID
            } | Select-Object -First 1
    }
    Add-Result 'read logged by Windows' ([bool]$logged) $(if ($logged) { "event 4663 at $($logged.TimeCreated) names this PowerShell (pid $PID)" } else { "no event 4663 for $($lure.Path) from pid $PID within $TimeoutSeconds s" })

    # The agent's status lists the last events the controller acknowledged
    # (stored): the read's is a `touch` of this lure, observed after it.
    $acked = $null
    $now = $status
    while (-not $acked -and (Get-Date) -lt $deadline) {
        Start-Sleep -Seconds 1
        $now = Get-AgentStatus
        if ($now) {
            $acked = @($now.recent_acked) | Where-Object {
                $_.lure_id -eq $lure.Id -and $_.kind -eq 'touch' -and $_.path -eq $lure.Path -and [int64]$_.observed_ms -ge $startMs
            } | Select-Object -First 1
        }
    }
    $detail = $(if ($acked) {
            "event $($acked.id) (touch of $($lure.Path)) acknowledged by the controller; there: rusectl get events --lure $($lure.Id)"
        } else {
            "no acknowledged touch of $($lure.Path) within $TimeoutSeconds s ($(if ($now) { "$($now.outbox_depth) events waiting, last error: $($now.last_error)" } else { 'no status' }))"
        })
    Add-Result 'event reached the controller' ([bool]$acked) $detail
}

# The report.
Write-Host ''
$results | Format-Table -AutoSize -Wrap | Out-String -Width 200 | Write-Host
$failed = @($results | Where-Object { $_.Result -eq 'FAIL' }).Count
if ($failed -eq 0) {
    Write-Host "verify.ps1: PASS ($($results.Count) checks)"
    exit 0
}
Write-Host "verify.ps1: FAIL ($failed of $($results.Count) checks failed)"
exit 1
