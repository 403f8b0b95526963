"""Checks and near-duplicate removal of generated artifacts, on real pages and on hand-made broken ones."""

from __future__ import annotations

import pandas as pd
import pytest

from smallsec_ray.synthetic.checks import (
    REASONS,
    check,
    check_html,
    has_credential_form,
    visible_text,
    without_credential_forms,
)
from smallsec_ray.synthetic.dedup import drop_duplicates

LOGIN = """<html><head><title>Tea House</title><style>body {{color: red}}</style></head><body>
<h1>Tea House</h1><p>{text}</p>
<form action="/go"><input name="email" placeholder="Email"><input type="password" name="pw"></form>
<script>var hidden = "not visible text at all";</script></body></html>"""
CHECKOUT = """<html><body><p>{text}</p><form><input name="cardnumber" autocomplete="cc-number">
<input name="cvc"></form></body></html>"""
WORDS = "Our finest green and black teas, picked by hand in the hills and shipped to your door every week. "


@pytest.fixture(scope="module")
def zphisher(shared_data) -> pd.DataFrame:
    return pd.read_json(shared_data / "html" / "zphisher_pages.jsonl.gz", lines=True)


def test_real_phishing_pages_with_password_inputs_count_as_credential_forms(zphisher):
    with_password = zphisher[zphisher["n_password_inputs"] > 0]
    found = [has_credential_form(h) for h in with_password["html"]]
    assert len(found) > 20 and sum(found) / len(found) > 0.9  # a password input outside any <form> is the rest


def test_a_usable_page_passes_and_each_broken_one_gets_its_reason():
    text = WORDS * 3
    assert check_html(LOGIN.format(text=text), phishing=True) is None
    assert check_html(CHECKOUT.format(text=text), phishing=True) is None  # a payment form counts too
    assert "not visible" not in visible_text(LOGIN.format(text=text))  # scripts are not text
    assert check_html("", phishing=True) == "empty"
    assert check_html("just some words", phishing=False) == "too_little_text"
    assert check_html(LOGIN.format(text="Welcome to {{shop_name}}! " + text), phishing=True) == "template_marker"
    assert check_html(LOGIN.format(text="Lorem ipsum dolor sit amet " + text), phishing=True) == "template_marker"
    assert check_html(LOGIN.format(text="Shop at [Your Shop Name] " + text), phishing=True) == "template_marker"
    angular = "<script>var t = '{{price}}';</script>"  # real pages hold template syntax in their scripts
    assert check_html(LOGIN.format(text=text).replace("</body>", angular + "</body>"), phishing=True) is None
    assert check_html(LOGIN.format(text="Too short"), phishing=True) == "too_little_text"
    no_form = f"<html><body><p>{text}</p><a href='/login'>Sign in</a></body></html>"
    assert check_html(no_form, phishing=True) == "no_credential_form"
    assert check_html(no_form, phishing=False) is None  # a benign page needs no form


def test_a_counterpart_is_the_page_without_its_credential_forms_where_a_page_is_left(zphisher):
    import pyarrow as pa

    from smallsec_ray.workloads.synthetic import counterparts

    text = WORDS * 3
    newsletter = '<form action="/news"><input name="email" placeholder="Your email"></form>'
    login = LOGIN.format(text=text).replace("</body>", newsletter + "</body>")
    twin = without_credential_forms(login)
    assert not has_credential_form(twin) and 'type="password"' not in twin
    assert "/news" in twin and visible_text(twin) == visible_text(login)  # other forms and the text stay
    real = [h for h in zphisher["html"] if has_credential_form(h)][:5]
    assert real and not any(has_credential_form(without_credential_forms(h)) for h in real)

    pages = pa.table({"id": ["a", "b", "c"], "text": [login, CHECKOUT.format(text="Pay now"), CHECKOUT.format(
        text=text)], "label": ["phishing"] * 3})
    rows, source = counterparts(pages, "benign", min_text_chars=100)
    assert rows.column("id").to_pylist() == ["a.counterpart", "c.counterpart"]  # b: too little text is left
    assert source.tolist() == [0, 2] and set(rows.column("label").to_pylist()) == {"benign"}
    assert rows.schema == pages.schema and not any(has_credential_form(h) for h in rows.column("text").to_pylist())


def test_command_lines_and_urls():
    assert check("cmdline", "powershell -enc 'SQBFAFgA'", phishing=False) is None
    assert check("cmdline", "echo 'unclosed", phishing=False) == "does_not_tokenise"
    assert check("url", "shop-tea.example.com/login?next=/cart", phishing=True) is None
    assert check("url", "not a url at all", phishing=True) == "not_a_url"
    assert check("url", "https://{{brand}}.com", phishing=True) == "template_marker"
    with pytest.raises(ValueError, match="expected html, cmdline or url"):
        check("pdf", "x", phishing=False)
    assert set(REASONS) >= {"empty", "template_marker", "no_credential_form", "does_not_tokenise", "not_a_url"}


def test_exact_and_near_duplicates_and_copies_of_a_seed_are_dropped_first_kept():
    base = " ".join(f"word{i}" for i in range(60))
    near = base.replace("word30", "other30")  # one word of sixty changed
    different = " ".join(f"term{i}" for i in range(60))
    seed = " ".join(f"seedword{i}" for i in range(60))
    out = drop_duplicates([base, base.upper(), near, different, seed + " extra"], seeds=[seed])
    assert out.kept == [0, 3]
    assert out.dropped == {1: "exact_duplicate", 2: "near_duplicate", 4: "too_close_to_seed"}


def test_pages_are_compared_on_their_visible_text_not_their_shared_markup():
    page = "<html><body><div class='a b c'>{}</div><form><input type=password></form></body></html>"
    pages = [page.format(" ".join(f"{w}{i}" for i in range(40))) for w in ("tea", "bag", "cushion")]
    assert drop_duplicates(pages, key=visible_text).kept == [0, 1, 2]
