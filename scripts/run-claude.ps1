# Windows twin of run-claude.sh (Docker Desktop, Linux containers): Claude Code with
# --dangerously-skip-permissions on a project, inside a sandbox-init container.
#
#   scripts\run-claude.ps1 [-Project DIR] [-Allow ENTRY,...] [-Preset NAME,...] [-FreshCreds]
#                          [-Shell] [-Rebuild] [-DryRun] [-Image IMAGE] [-- COMMAND ARGS]
#
# Credentials by name only: set $env:CLAUDE_CODE_OAUTH_TOKEN or $env:ANTHROPIC_API_KEY.
# The capability set and flags are the same as run-claude.sh (see README, "Launcher flags").
param(
    [string]$Project = (Get-Location).Path,
    [string[]]$Allow = @(),
    [string[]]$Preset = @(),
    [switch]$FreshCreds,
    [switch]$Shell,
    [switch]$Rebuild,
    [switch]$DryRun,
    [string]$Image = $(if ($env:CLAUDE_SANDBOX_IMAGE) { $env:CLAUDE_SANDBOX_IMAGE } else { 'sandbox-init/claude:latest' }),
    [Parameter(ValueFromRemainingArguments = $true)][string[]]$Command = @()
)
$ErrorActionPreference = 'Stop'

$Project = (Resolve-Path $Project).Path
$base = ((Split-Path $Project -Leaf) -replace '[^a-zA-Z0-9_.-]', '-')
$sha = [System.Security.Cryptography.SHA256]::Create()
$hash = -join ($sha.ComputeHash([Text.Encoding]::UTF8.GetBytes($Project))[0..3] | ForEach-Object { $_.ToString('x2') })
$volume = "claude-config-$base-$hash"

if ($Rebuild) {
    Write-Error 'run-claude: build the image with scripts/build-images.sh --no-cache claude (WSL or Linux)'
}

$a = @('run', '--rm', '--init=false', '-it',
    '--cap-drop', 'ALL',
    '--cap-add', 'NET_ADMIN', '--cap-add', 'SETUID', '--cap-add', 'SETGID',
    '--cap-add', 'SETPCAP', '--cap-add', 'KILL', '--cap-add', 'CHOWN', '--cap-add', 'DAC_READ_SEARCH',
    '--security-opt', 'no-new-privileges', '--read-only',
    '--tmpfs', '/tmp:rw,nosuid,nodev,exec,size=2g',
    '--pids-limit', '1024', '--memory', '8g', '--hostname', 'claude-sandbox',
    '-v', "${volume}:/home/claude", '-v', "${Project}:/workspace")
if ($Allow.Count) { $a += @('-e', "SANDBOX_ALLOW=$($Allow -join ',')") }
if ($Preset.Count) { $a += @('-e', "SANDBOX_PRESETS=$($Preset -join ',')") }
if ($FreshCreds) { $a += @('-e', 'SANDBOX_FORCE_CREDENTIALS=1') }
foreach ($name in 'CLAUDE_CODE_OAUTH_TOKEN', 'ANTHROPIC_API_KEY', 'CLAUDE_CREDENTIALS') {
    if (Test-Path "env:$name") { $a += @('-e', $name) }   # by name: the value stays off argv
}
$a += $Image
if ($Shell) { $a += 'bash' } elseif ($Command.Count) { $a += $Command }

if ($DryRun) { Write-Output ("docker " + ($a -join ' ')); exit 0 }
& docker @a
exit $LASTEXITCODE
