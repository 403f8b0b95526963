"""URLs: the words and templates of benign and malicious URLs, registered_domain, and the row maker.

The group of a URL is its registered domain (or its IP), computed from the generated URL.
"""

from __future__ import annotations

import random
from urllib.parse import urlsplit

from smallsec_ray.data.demo.fill import WORDS, fill
from smallsec_ray.data.schema import GROUP, LABEL, SOURCE

# Words only URLs use; fill() finds them in WORDS once this module is imported.
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
    "news_slug": ("{headline_word}-{headline_word}-{headline_word}-{headline_word}",),
    "headline_word": ("council", "approves", "new", "budget", "storm", "hits", "coast", "researchers", "find", "rare",
                      "species", "market", "rally", "continues", "startup", "raises", "funding", "election", "results",
                      "patch", "fixes", "vulnerability", "team", "wins", "final"),
    "query": ("{tool}+install+ubuntu", "weather+{news_city}", "{pip_pkg}+dataframe+merge",
              "cheap+flights+to+{news_city}",
              "how+to+reset+router", "{app}+download"),
    "news_city": ("lisbon", "berlin", "toronto", "osaka", "nairobi", "austin"),
    "subreddit": ("sysadmin", "programming", "python", "homelab", "netsec", "cooking"),
    "club": ("{news_city}-chess-club", "{news_city}-runners", "pta-{news_city}", "{rand}-family-reunion"),
    "os_arch": ("linux-amd64", "darwin-arm64", "windows-amd64"),
    "archive": ("tar.gz", "zip"),
    "font": ("Inter", "Roboto", "Open+Sans", "Lato"),
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


def row(rng: random.Random, label: str) -> dict[str, str]:
    """A random URL of the given label, as a row with its registered domain as group."""
    url = fill(rng.choice(BENIGN_URLS if label == "benign" else MALICIOUS_URLS), rng)
    mail_share = 0.25 if label == "benign" else 0.6
    return {"text": url, LABEL: label, GROUP: registered_domain(urlsplit(url).hostname or url),
            SOURCE: "mail-gateway" if rng.random() < mail_share else "web-proxy"}
