"""Page templates of the synthetic HTML families: the structure is ours, the content is the model's.

A 135M model cannot write a whole convincing page unaided, so each page is a layout (markup, styles and
the form) with `{{slot}}` markers, and the generative teacher writes each slot's content from a short
instruction: the shop's name, its slogan, product names and descriptions, the sign-in wording and the
form labels. Three kinds of phishing page, as phishing kits for storefronts come:

* storefront: a landing page with a product catalogue and a "sign in to buy" login form;
* social_login: a page that asks the shop's customers to log in with a social account's password;
* checkout: an order summary with a payment-card form.

Each kind has three layouts (different markup, class names, order and styles), so a model can be tested
on layouts it never saw in training. A slot the model left empty keeps its marker, and the page is then
rejected by the checks (checks.MARKERS): nothing half-filled reaches training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SLOT = re.compile(r"\{\{(\w+)\}\}")

# What the model is asked for each slot; {family} is the family's description ("tea"), {shop_name} and
# {product_N} are the slots written in the first pass. Second-pass slots name first-pass ones.
FIRST_PASS = {
    "shop_name": "Shop names: Wick & Glow sells candles; Petal Post sells flowers; Grind House sells coffee. "
                 "Invent the name of a small online shop that sells {family}. Reply with the name only.",
    **{f"product_{i}": f"Catalogue entries: 'Amber Soy Candle', 'Spring Tulip Bunch', 'Dark Roast Beans'. Name "
       f"product number {i} in the catalogue of an online shop that sells {{family}}. Reply with the product "
       "name only." for i in range(1, 5)},
}
SECOND_PASS = {
    "tagline": "Write a short slogan for {shop_name}, an online shop that sells {family}.",
    "about": "Write two sentences about {shop_name}, an online shop that sells {family}: its story and its "
             "promise to customers.",
    **{f"blurb_{i}": f"Write one sentence that describes {{product_{i}}}, sold by {{shop_name}}."
       for i in range(1, 5)},
    "signin_text": "Write one sentence asking a customer of {shop_name} to sign in to see their orders and "
                   "rewards.",
    "social_text": "Write one sentence asking a customer of {shop_name} to log in with their social media "
                   "account to claim a discount on {family}.",
    "checkout_text": "Write two sentences telling a customer of {shop_name} that their order of {product_1} "
                     "is almost complete and that they need to confirm their card details.",
    "email_label": "Email field labels: 'Email address', 'Your e-mail', 'Login email'. Write the label of the "
                   "email field on the login form of {shop_name}. Reply with the label only.",
    "password_label": "Password field labels: 'Password', 'Your password', 'Secret code'. Write the label of "
                      "the password field on the login form of {shop_name}. Reply with the label only.",
    "button_text": "Sign-in buttons: 'Sign in', 'Log in now', 'Continue'. Write the text of the sign-in button "
                   "of {shop_name}. Reply with the text only.",
}
# Longest usable answer per slot, in characters and in words (others: 300 characters, any words).
SLOT_CHARS = {"shop_name": 40, "email_label": 30, "password_label": 30, "button_text": 30,
              **{f"product_{i}": 60 for i in range(1, 5)}}
SLOT_WORDS = {"shop_name": 6, "email_label": 4, "password_label": 3, "button_text": 4,
              **{f"product_{i}": 8 for i in range(1, 5)}}
# Answers that talk about the task instead of doing it ("I'm ready to help", "As an AI").
ASSISTANT_TALK = re.compile(r"\b(I|I'm|I am|I'll|I've|me|my|you're|hello|hi|sorry|assist\w*|assistant|AI|"
                            r"SmolLM|here is|here's|sure|certainly|question|answer|example|reply|"
                            r"catalogue entr\w*)\b", re.IGNORECASE)
KINDS = ("storefront", "social_login", "checkout")

_CATALOGUE_CARDS = "".join(f'<div class="card"><h3>{{{{product_{i}}}}}</h3><p>{{{{blurb_{i}}}}}</p>'
                           f'<span class="price">{{{{price_{i}}}}}</span></div>' for i in range(1, 5))
_CATALOGUE_ROWS = "".join(f"<tr><td>{{{{product_{i}}}}}</td><td>{{{{blurb_{i}}}}}</td><td>{{{{price_{i}}}}}</td></tr>"
                          for i in range(1, 5))
_CATALOGUE_LIST = "".join(f'<li class="item"><b>{{{{product_{i}}}}}</b> &mdash; {{{{blurb_{i}}}}} '
                          f'<em>{{{{price_{i}}}}}</em></li>' for i in range(1, 5))
_LOGIN_FORM = ('<form action="{{{{action}}}}" method="post" class="{cls}"><label>{{{{email_label}}}}'
               '<input type="email" name="email"></label><label>{{{{password_label}}}}'
               '<input type="password" name="password"></label><button type="submit">{{{{button_text}}}}</button>'
               '</form>')
_CARD_FORM = ('<form action="{{{{action}}}}" method="post" class="{cls}"><input name="cardholder" placeholder="Name">'
              '<input name="cardnumber" autocomplete="cc-number" placeholder="Card number">'
              '<input name="exp" autocomplete="cc-exp" placeholder="MM/YY"><input name="cvc" placeholder="CVC">'
              '<button type="submit">Pay {{{{price_1}}}}</button></form>')


def _page(title: str, style: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head><body>{body}</body></html>")


LAYOUTS: dict[str, dict[str, str]] = {
    "storefront": {
        "grid": _page("{{shop_name}}", "body{font-family:sans-serif}.grid{display:flex;gap:1em}.card{padding:1em}",
                      '<header><h1>{{shop_name}}</h1><p class="tag">{{tagline}}</p></header>'
                      f'<main class="grid">{_CATALOGUE_CARDS}</main><aside><p>{{{{signin_text}}}}</p>'
                      f'{_LOGIN_FORM.format(cls="login")}</aside><footer><p>{{{{about}}}}</p></footer>'),
        "table": _page("{{shop_name}} | {{tagline}}", "table{border-collapse:collapse}td{padding:4px}",
                       '<div id="top"><span class="logo">{{shop_name}}</span></div><div id="account">'
                       f'<p>{{{{signin_text}}}}</p>{_LOGIN_FORM.format(cls="account-form")}</div>'
                       f'<table class="products">{_CATALOGUE_ROWS}</table><p id="story">{{{{about}}}}</p>'),
        "list": _page("Shop {{shop_name}}", "ul.items{list-style:none}.item{margin:.5em 0}",
                      '<nav><a href="#">{{shop_name}}</a></nav><section class="hero"><h2>{{tagline}}</h2>'
                      f'<p>{{{{about}}}}</p></section><ul class="items">{_CATALOGUE_LIST}</ul>'
                      f'<section class="signin"><h3>{{{{signin_text}}}}</h3>{_LOGIN_FORM.format(cls="s")}'
                      "</section>"),
    },
    "social_login": {
        "centered": _page("{{shop_name}} - Log in", ".box{margin:auto;width:360px;text-align:center}",
                          '<div class="box"><h1>{{shop_name}}</h1><p>{{social_text}}</p>'
                          f'{_LOGIN_FORM.format(cls="social")}<p class="small">{{{{about}}}}</p></div>'),
        "split": _page("Log in to {{shop_name}}", ".left,.right{width:50%;float:left}",
                       '<div class="left"><h2>{{tagline}}</h2><p>{{about}}</p><p>{{product_1}}: {{blurb_1}}</p>'
                       f'</div><div class="right"><p>{{{{social_text}}}}</p>{_LOGIN_FORM.format(cls="panel")}'
                       "</div>"),
        "modal": _page("{{shop_name}}", ".overlay{position:fixed;inset:0}.modal{background:#fff}",
                       f'<main><h1>{{{{shop_name}}}}</h1><ul>{_CATALOGUE_LIST}</ul></main><div class="overlay">'
                       f'<div class="modal"><p>{{{{social_text}}}}</p>{_LOGIN_FORM.format(cls="modal-form")}'
                       "<p>{{tagline}}</p></div></div>"),
    },
    "checkout": {
        "summary": _page("Checkout - {{shop_name}}", ".summary{border:1px solid #ccc}",
                         '<h1>{{shop_name}}</h1><div class="summary"><p>{{checkout_text}}</p>'
                         f'<table>{_CATALOGUE_ROWS}</table></div>{_CARD_FORM.format(cls="pay")}'
                         "<footer>{{about}}</footer>"),
        "steps": _page("{{shop_name}} secure payment", "ol.steps li{display:inline;margin-right:1em}",
                       '<ol class="steps"><li>Cart</li><li>Details</li><li>Payment</li></ol><h2>{{shop_name}}</h2>'
                       f'<p>{{{{checkout_text}}}}</p><p>{{{{product_1}}}}: {{{{blurb_1}}}}</p>'
                       f'{_CARD_FORM.format(cls="step3")}<p>{{{{tagline}}}}</p>'),
        "sidebar": _page("Pay for your {{shop_name}} order", ".side{float:right;width:30%}",
                         f'<div class="side"><h3>{{{{shop_name}}}}</h3><ul>{_CATALOGUE_LIST}</ul></div>'
                         f'<div class="main"><p>{{{{checkout_text}}}}</p>{_CARD_FORM.format(cls="card-form")}'
                         "<p>{{about}}</p></div>"),
    },
}


@dataclass(frozen=True)
class Layout:
    kind: str
    name: str
    html: str

    @property
    def template(self) -> str:
        """The template's name as the shards' `template` column has it: kind/layout."""
        return f"{self.kind}/{self.name}"

    def slots(self) -> list[str]:
        return sorted(set(SLOT.findall(self.html)))


def layouts(names: list[str] | None = None) -> list[Layout]:
    """Every layout, or those named kind/layout (or a whole kind) in `names`."""
    every = [Layout(kind, name, html) for kind, by_name in LAYOUTS.items() for name, html in by_name.items()]
    if names is None:
        return every
    chosen = [x for x in every if x.template in names or x.kind in names]
    unknown = set(names) - {x.template for x in every} - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layouts {sorted(unknown)}; known: {[x.template for x in every]}")
    return chosen


def clean_slot(text: str, max_chars: int, name: bool = False) -> str:
    """A model's answer as slot content: its first non-empty line, without quotes, markdown or a leading
    "Name:"; for a name or a label (`name`) only its first clause ("Leaf & Kettle! Fine teas" -> "Leaf &
    Kettle"); cut at a word boundary. Empty if nothing usable is left."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = re.sub(r"^(#+|[-*•]|\d+[.)])\s+", "", line.replace("**", "").replace("__", ""))
    line = re.sub(r"^[A-Za-z][A-Za-z ]{0,24}:\s+", "", line)  # "Shop name: ..."
    line = line.strip(" \"'`“”‘’")
    if name:
        line = re.split(r"[:;,.!?()\[\]]|\s[-–—]\s", line, maxsplit=1)[0].strip(" \"'`“”‘’")
    if len(line) > max_chars:
        line = line[:max_chars].rsplit(" ", 1)[0].rstrip(",;:-")
    return line


def slot_problem(slot: str, value: str, prompt: str = "") -> str | None:
    """Why a cleaned answer cannot fill `slot` (None: it can): empty, too many words, assistant talk, or (for
    the names the first pass asks for) a copy of the prompt's own examples, which are other shops'."""
    if not value:
        return "empty"
    if len(value.split()) > SLOT_WORDS.get(slot, 10**6):
        return "too_long"
    if ASSISTANT_TALK.search(value):
        return "assistant_talk"
    if slot in FIRST_PASS and value.lower() in prompt.lower():
        return "copied_example"
    return None


def fill(html: str, values: dict[str, str]) -> str:
    """The page with each slot replaced by its value (HTML-escaped); a slot without a value keeps its
    marker, which the checks reject."""
    from html import escape

    return SLOT.sub(lambda m: escape(values[m.group(1)]) if values.get(m.group(1)) else m.group(0), html)
