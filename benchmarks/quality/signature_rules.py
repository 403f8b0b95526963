"""Signature rules: a stand-in for the regex detections a SOC already runs, used as a *labeller*.

The distillation experiment's third noise model ("rule-based") labels the noisy training rows with these
rules instead of their true labels: a row that matches any rule is "malicious", every other row is
"benign". Real signature sets are written for SOME techniques only (so they miss whole families) and
some of their rules also fire on ordinary admin commands (so they flag benign rows); this list was
written the same way, from well-known public detection ideas (Sigma-style process-creation rules), not
fitted to the data in shared/data/cmdline. Each rule is (name, compiled regex) with a one-line comment;
matching is case-insensitive, on the command line as one string (multi-line scripts joined by " ; ").

Usage:
    from signature_rules import RULES, rule_label, matching_rules
    rule_label("certutil -urlcache -split -f http://x/a.exe a.exe")  # -> "malicious"
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_F = re.IGNORECASE


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _F)


RULES: list[tuple[str, re.Pattern[str]]] = [
    # --- Windows: PowerShell ---
    # powershell with -EncodedCommand / -enc / -e followed by a base64 blob
    ("ps_encoded_command", _r(r"\b(?:powershell|pwsh)(?:\.exe)?\b.*\s-(?:e|ec|enc|encodedcommand)\s+"
                              r"[A-Za-z0-9+/=]{16,}")),
    # download cradles: Net.WebClient DownloadString/DownloadFile, Invoke-WebRequest/iwr piped or IEX'd
    ("ps_download_cradle", _r(r"(?:new-object\s+(?:system\.)?net\.webclient|\.download(?:string|file|data)\s*\(|"
                              r"\b(?:iex|invoke-expression)\b.*\b(?:iwr|invoke-webrequest|irm|invoke-restmethod)\b)")),
    # IEX on anything (fires on benign scripts that build commands too)
    ("ps_invoke_expression", _r(r"\b(?:iex|invoke-expression)\b")),
    # hidden window / bypass execution policy / no profile combos typical of droppers
    ("ps_hidden_bypass", _r(r"-(?:w|windowstyle)\s+hidden|-(?:ep|exec|executionpolicy)\s+bypass|-nop\b")),
    # FromBase64String decoding inside a script
    ("ps_frombase64", _r(r"frombase64string")),
    # Defender tampering
    ("ps_defender_tamper", _r(r"set-mppreference\b.*-(?:disable\w+|exclusion\w+)|add-mppreference\b.*-exclusion")),
    # Mimikatz / credential-dumping keywords
    ("mimikatz", _r(r"mimikatz|sekurlsa::|lsadump::|invoke-mimikatz")),
    # --- Windows: LOLBins ---
    # certutil used to download or decode
    ("certutil_download_decode", _r(r"\bcertutil(?:\.exe)?\b.*\s[-/](?:urlcache|decode|decodehex|encode)\b")),
    # regsvr32 scriptlet from a URL (squiblydoo) or scrobj.dll
    ("regsvr32_squiblydoo", _r(r"\bregsvr32(?:\.exe)?\b.*(?:/i:\s*https?:|scrobj\.dll)")),
    # mshta running a remote HTA or inline script
    ("mshta_remote_or_script", _r(r"\bmshta(?:\.exe)?\b.*(?:https?://|javascript:|vbscript:)")),
    # rundll32 running javascript: or a DLL from a share/URL
    ("rundll32_script", _r(r"\brundll32(?:\.exe)?\b.*(?:javascript:|mshtml,RunHTMLApplication|\\\\\\\\|https?://)")),
    # bitsadmin download jobs
    ("bitsadmin_transfer", _r(r"\bbitsadmin(?:\.exe)?\b.*/(?:transfer|addfile|download)")),
    # scheduled task creation (also fires on legitimate admin use)
    ("schtasks_create", _r(r"\bschtasks(?:\.exe)?\b.*/create\b")),
    # Run / RunOnce registry persistence via reg add or New-ItemProperty
    ("reg_run_key", _r(r"(?:reg(?:\.exe)?\s+add|new-itemproperty|"
                       r"set-itemproperty).*\\(?:currentversion\\run(?:once)?)\b")),
    # shadow-copy deletion (ransomware)
    ("shadow_copy_delete", _r(r"vssadmin(?:\.exe)?\b.*delete\s+shadows|wmic(?:\.exe)?\b.*shadowcopy\s+delete|"
                              r"wbadmin\b.*delete\s+catalog")),
    # event-log clearing
    ("eventlog_clear", _r(r"\bwevtutil(?:\.exe)?\b\s+(?:cl|clear-log)\b|clear-eventlog\b")),
    # boot recovery tampering
    ("bcdedit_recovery_off", _r(r"bcdedit(?:\.exe)?\b.*(?:recoveryenabled\s+no|bootstatuspolicy\s+ignoreallfailures)")),
    # LSASS memory dump via comsvcs MiniDump or procdump
    ("lsass_dump", _r(r"comsvcs(?:\.dll)?\W+minidump|procdump(?:64)?(?:\.exe)?\b.*lsass")),
    # registry hive saving of SAM / SYSTEM / SECURITY
    ("reg_save_hive", _r(r"\breg(?:\.exe)?\s+save\s+hklm\\(?:sam|system|security)\b")),
    # wmic process call create (remote/local execution)
    ("wmic_process_create", _r(r"\bwmic(?:\.exe)?\b.*process\s+call\s+create")),
    # new local user added to administrators, or net user /add (fires on admin scripts too)
    ("net_user_add", _r(r"\bnet1?(?:\.exe)?\s+(?:user|localgroup)\b.*\s/add\b")),
    # firewall disabled
    ("firewall_off", _r(r"netsh(?:\.exe)?\b.*(?:firewall\s+set\s+opmode\s+disable|"
                        r"advfirewall\s+set\s+\w+\s+state\s+off)")),
    # --- Linux / macOS ---
    # netcat with -e / -c (reverse or bind shell)
    ("nc_exec", _r(r"\b(?:nc|ncat|netcat)\b[^;|]*\s-[a-z]*[ec]\s*\S*(?:sh|cmd)")),
    # bash/sh reverse shell over /dev/tcp or /dev/udp
    ("dev_tcp_shell", _r(r"/dev/(?:tcp|udp)/")),
    # base64 decode piped into a shell
    ("base64_to_shell", _r(r"base64\s+(?:-d|--decode|-D)\b.*\|\s*(?:ba|z|da)?sh\b")),
    # curl/wget output piped straight into a shell (also common in benign install one-liners)
    ("download_pipe_shell", _r(r"\b(?:curl|wget)\b[^|;]*\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b")),
    # setuid bit set on a file
    ("chmod_setuid", _r(r"\bchmod\s+(?:[ugoa]*\+[a-z]*s|[0-7]?[4-7][0-7]{3})\b")),
    # python / perl / ruby spawning a pty or shell
    ("script_spawn_shell", _r(r"import\s+pty|pty\.spawn|os\.system\(\s*['\"]/bin/(?:ba)?sh|"
                              r"exec\s*[\"']/bin/(?:ba)?sh|subprocess\.call\(\[?\s*['\"]/bin/(?:ba)?sh")),
    # find -exec a shell (GTFOBins-style escape)
    ("find_exec_shell", _r(r"\bfind\b.*-exec\s+/?(?:bin/)?(?:ba)?sh\b")),
    # interactive shell spawned from an editor/pager/tool (vim -c ':!sh', less !sh, awk system)
    ("tool_shell_escape", _r(r":!\s*/bin/(?:ba)?sh|:shell\b|system\(\s*['\"]/bin/(?:ba)?sh|"
                             r"-c\s+['\"]?!?/bin/(?:ba)?sh\b")),
    # reads of shadow/passwd-style secrets
    ("read_shadow", _r(r"/etc/shadow\b|/etc/sudoers\b")),
    # cron persistence written by echo/redirect
    ("cron_persistence", _r(r"(?:echo|printf)\b.*>>?\s*/etc/cron|crontab\s+-l.*\|\s*crontab\s+-|/var/spool/cron")),
    # history tampering / log wiping
    ("history_wipe", _r(r"history\s+-c\b|unset\s+histfile|histfile=/dev/null|rm\s+(?:-\w+\s+)*~?/?\.?bash_history|"
                       r">\s*/var/log/(?:auth|secure|syslog|wtmp|btmp)")),
    # LD_PRELOAD injection
    ("ld_preload", _r(r"\bLD_PRELOAD=")),
    # SSH authorized_keys tampering
    ("ssh_authorized_keys", _r(r">>?\s*\S*\.ssh/authorized_keys")),
    # macOS: osascript / launchctl load of a user plist (persistence, also admin use)
    ("macos_persistence", _r(r"launchctl\s+load\b|osascript\s+-e\b.*do\s+shell\s+script")),
    # known offensive tools by name
    ("offensive_tool_name", _r(r"\b(?:msfvenom|msfconsole|meterpreter|cobaltstrike|bloodhound|sharphound|rubeus|"
                               r"impacket|psexec(?:\.py)?|crackmapexec|lazagne|hashcat|john\s+--|hydra\s+-)")),
    # --- broader rules: better coverage, more false alarms on admin commands ---
    # discovery commands typical of hands-on-keyboard recon (also run by admins every day)
    ("windows_recon", _r(r"\b(?:whoami(?:\.exe)?(?:\s+/(?:all|priv|groups))?|nltest(?:\.exe)?\s+/\w+|systeminfo|"
                         r"net(?:\.exe)?\s+(?:group|localgroup)\s+\"?(?:domain\s+admins|administrators)|quser|qwinsta|"
                         r"cmdkey\s+/list|arp\s+-a)\b")),
    # PowerShell offensive framework function names (PowerSploit, Empire, Nishang, PowerView)
    ("ps_offensive_function", _r(r"\b(?:invoke-(?:shellcode|dllinjection|reflectivepeinjection|kerberoast|bloodhound|"
                                 r"sharefinder|userhunter|tokenmanipulation|powershelltcp|portscan|smbexec|wmiexec|"
                                 r"ninjacopy|credentialinjection)|get-(?:gpppassword|keystrokes|timedscreenshot|"
                                 r"domaincontroller|netuser|netgroup|netcomputer|domainuser|domaingroup)|"
                                 r"find-localadminaccess|powerup|powerview)\b")),
    # executable/script dropped into or run from a user-writable staging folder
    ("staged_in_writable_dir", _r(r"(?:\$env:(?:temp|tmp|public|appdata)|%(?:temp|tmp|public|appdata)%|\\users\\public|"
                                  r"\\appdata\\local\\temp|\\programdata)\\[^\s\"']+\.(?:exe|dll|ps1|bat|vbs|js|"
                                  r"hta|scr)\b")),
    # service created or re-pointed at a binary
    ("service_binpath", _r(r"\bsc(?:\.exe)?\s+(?:\\\\\S+\s+)?(?:create|config)\b.*binpath|"
                           r"new-service\b.*-binarypathname")),
    # reflection / P/Invoke from PowerShell (Add-Type with DllImport, Assembly::Load)
    ("ps_reflection", _r(r"dllimport|\[(?:system\.)?reflection\.assembly\]::load|virtualalloc|getprocaddress")),
    # credential hunting in files/registry
    ("credential_search", _r(r"(?:findstr|select-string|grep)\b.*\b(?:password|passwd|pwd|credential)s?\b|"
                             r"reg(?:\.exe)?\s+query\b.*/f\s+password")),
    # hidden files/attributes or timestamp tampering
    ("hide_or_timestomp", _r(r"\battrib(?:\.exe)?\s+\+h|touch\s+-[a-z]*[rt]\b|\.(?:creationtime|lastwritetime|"
                             r"lastaccesstime)\s*=")),
    # security tooling disabled on Linux
    ("linux_defense_off", _r(r"setenforce\s+0|iptables\s+-F\b|ufw\s+disable|systemctl\s+(?:stop|"
                             r"disable)\s+\S*(?:auditd|apparmor|firewalld|falcon|osquery)|auditctl\s+-D")),
    # a literal interactive shell path in the command (GTFOBins-style escapes; also in admin scripts)
    ("shell_path_literal", _r(r"(?<![\w/])/bin/(?:ba|da|z)?sh\b")),
    # kernel module or privileged container tricks
    ("kernel_or_container_escape", _r(r"\binsmod\b|--privileged|-v\s+/:/|nsenter\b.*--target\s+1\b|chroot\s+/host")),
    # cloud credential / persistence API calls
    ("cloud_credential_abuse", _r(r"aws\s+iam\s+(?:create-access-key|create-user|attach-user-policy)|"
                                  r"aws\s+(?:cloudtrail\s+(?:stop-logging|delete-trail)|guardduty\s+delete)|"
                                  r"az\s+ad\s+(?:sp|app)\s+credential\s+reset|"
                                  r"gcloud\s+iam\s+service-accounts\s+keys\s+create")),
]


def matching_rules(text: str) -> list[str]:
    """Names of the rules that fire on `text`."""
    return [name for name, pattern in RULES if pattern.search(text)]


def rule_label(text: str) -> str:
    """"malicious" if any rule fires on `text`, else "benign"."""
    return "malicious" if any(pattern.search(text) for _, pattern in RULES) else "benign"


def rule_labels(texts: Iterable[str]) -> list[str]:
    return [rule_label(t) for t in texts]
