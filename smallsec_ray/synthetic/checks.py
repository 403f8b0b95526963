"""Is a generated artifact usable? One check per artifact type; a rejected candidate gets one reason.

HTML is parsed with selectolax (Lexbor, an HTML5 parser: it reads any page the way a browser would, so
"does it parse" means "does it have a document body with elements", not "is it strict XML"). A page of a
phishing family must hold what makes it phishing: a form that asks for a password or a payment card.
Every page needs enough visible text (scripts and styles do not count) and no leftover template markers.
A command line must split into shell words; a URL must have a host.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit

from selectolax.parser import HTMLParser

# What a template or a model leaves behind when a slot was not filled: template syntax, filler text, and
# the bracketed placeholders small models write ("[Your Shop Name]").
MARKERS = re.compile(r"\{\{|\}\}|\{%|%\}|\[\[|\]\]|<slot\b|\blorem ipsum\b"
                     r"|\[(?:your|insert|product|brand|shop|store|company|name)\b[^\]]{0,40}\]", re.IGNORECASE)
# Input names, ids, placeholders and autocomplete values of payment card fields.
CARD_FIELD = re.compile(r"card|cc-?(number|num|csc|exp)|cvv|cvc|security.?code|expir", re.IGNORECASE)
HIDDEN = "script, style, noscript, template, head"

REASONS = {
    "empty": "no text",
    "unparseable": "no document body with elements",
    "template_marker": "a leftover template marker ({{ }}, [[ ]], lorem ipsum, [Your Shop Name])",
    "too_little_text": "less visible text than the minimum",
    "no_credential_form": "a phishing page without a password or payment-card form",
    "does_not_tokenise": "not a shell command line (unbalanced quotes, or no words)",
    "not_a_url": "no host",
}


def without_code(html: str) -> str:
    """The markup without scripts, styles and templates (real pages hold `{{` and `]]` in their scripts)."""
    tree = HTMLParser(html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    return tree.html or ""


def visible_text(html: str) -> str:
    """The text a reader of the page sees: body text without scripts, styles and templates, spaces collapsed."""
    tree = HTMLParser(html)
    for node in tree.css(HIDDEN):
        node.decompose()
    body = tree.body
    return " ".join(body.text(separator=" ").split()) if body is not None else ""


def has_credential_form(html: str) -> bool:
    """A <form> holding a password field or a payment-card field."""
    return any(_asks_for_credentials(form) for form in HTMLParser(html).css("form"))


def without_credential_forms(html: str) -> str:
    """The page with every form that asks for a password or a payment card taken out (the rest untouched)."""
    tree = HTMLParser(html)
    for form in tree.css("form"):
        if _asks_for_credentials(form):
            form.decompose()
    return tree.html or ""


def _asks_for_credentials(form) -> bool:
    for field in form.css("input, select"):
        attrs = field.attributes
        if (attrs.get("type") or "").lower() == "password":
            return True
        described = " ".join(attrs.get(k) or "" for k in ("name", "id", "placeholder", "autocomplete"))
        if CARD_FIELD.search(described):
            return True
    return False


def check_html(html: str, phishing: bool, min_text_chars: int = 200) -> str | None:
    """None if the page is usable, else the reason (a key of REASONS)."""
    if not html.strip():
        return "empty"
    tree = HTMLParser(html)
    if tree.body is None or not tree.body.css_first("*"):
        return "unparseable"
    if MARKERS.search(without_code(html)):
        return "template_marker"
    if len(visible_text(html)) < min_text_chars:
        return "too_little_text"
    if phishing and not has_credential_form(html):
        return "no_credential_form"
    return None


def check_cmdline(text: str) -> str | None:
    if not text.strip():
        return "empty"
    if MARKERS.search(text):
        return "template_marker"
    try:
        words = shlex.split(text)
    except ValueError:
        return "does_not_tokenise"
    return None if words else "does_not_tokenise"


def check_url(text: str) -> str | None:
    if not text.strip():
        return "empty"
    if MARKERS.search(text):
        return "template_marker"
    url = text.strip()
    try:
        host = urlsplit(url if "://" in url else "http://" + url).hostname
    except ValueError:
        return "not_a_url"
    return None if host and " " not in url and ("." in host or host == "localhost") else "not_a_url"


def check(artifact: str, text: str, phishing: bool, min_text_chars: int = 200) -> str | None:
    """The check of an artifact type (html, cmdline, url): None if usable, else the reason."""
    if artifact == "html":
        return check_html(text, phishing, min_text_chars)
    if artifact == "cmdline":
        return check_cmdline(text)
    if artifact == "url":
        return check_url(text)
    raise ValueError(f"artifact {artifact!r}: expected html, cmdline or url")
