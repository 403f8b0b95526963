"""Templated pages written by a generative teacher: seeded, independent of the rest of the run, and every
layout a page that passes the checks once its slots are filled."""

from __future__ import annotations

import pytest

from smallsec_ray.synthetic.checks import check_html
from smallsec_ray.synthetic.generate import Family, generate_pages
from smallsec_ray.synthetic.templates import FIRST_PASS, SECOND_PASS, clean_slot, fill, layouts, slot_problem
from smallsec_ray.teachers.backends import make_teacher

TEA = Family("tea", "loose-leaf tea", "phishing")
BAGS = Family("bags", "leather handbags", "phishing")


def test_every_layout_filled_is_a_phishing_page_that_passes_the_checks_and_unfilled_is_rejected():
    kinds = {x.kind for x in layouts()}
    assert kinds == {"storefront", "social_login", "checkout"} and len(layouts()) == 9
    for layout in layouts():
        model_slots = set(layout.slots()) - {"action"} - {f"price_{i}" for i in range(1, 5)}
        assert model_slots <= set(FIRST_PASS) | set(SECOND_PASS), layout.template
        values = {slot: f"Plain words written for the {slot} slot of this page" for slot in layout.slots()}
        assert check_html(fill(layout.html, values), phishing=True) is None, layout.template
        values.pop("shop_name")
        assert check_html(fill(layout.html, values), phishing=True) == "template_marker"
    assert layouts(["checkout"]) == [x for x in layouts() if x.kind == "checkout"]
    with pytest.raises(ValueError, match="unknown layouts"):
        layouts(["storefront/nope"])


def test_model_answers_become_clean_slot_content():
    assert clean_slot('\n"Leaf & Kettle"\nA shop for tea lovers', 40) == "Leaf & Kettle"
    assert clean_slot("**Shop name:** Leaf & Kettle Tea Company", 40) == "Leaf & Kettle Tea Company"
    assert clean_slot("word " * 30, 20) == "word word word word"
    assert clean_slot("  \n ", 40) == ""
    # Names and labels: the first clause only.
    assert clean_slot("Petal Post! Available in various", 40, name=True) == "Petal Post"
    assert clean_slot("Amber Necklace, Crystal Case, Spring Tulip Bunch.", 60, name=True) == "Amber Necklace"
    assert clean_slot("Your password.", 30, name=True) == "Your password"
    assert clean_slot("Leaf & Kettle - fine teas", 40, name=True) == "Leaf & Kettle"
    assert fill("<b>{{shop_name}}</b>", {"shop_name": "<Tea & Co>"}) == "<b>&lt;Tea &amp; Co&gt;</b>"


def test_answers_that_cannot_fill_a_slot_are_named():
    # Answers SmolLM2-135M gave in a trial run: talk about the task instead of the content.
    assert slot_problem("email_label", "I'm ready to help. How can I") == "too_long"
    assert slot_problem("shop_name", "Hello, I'm thrilled to assist") == "assistant_talk"
    assert slot_problem("blurb_3", "SmolLM, a helpful AI assistant, is a kind AI") == "assistant_talk"
    assert slot_problem("shop_name", "") == "empty"
    assert slot_problem("shop_name", "Leaf & Kettle") is None
    # A name copied from the prompt's examples (other shops') is asked again; labels may match theirs.
    prompt = FIRST_PASS["product_1"].format(family="tea")
    assert slot_problem("product_1", "Amber Soy Candle", prompt) == "copied_example"
    assert slot_problem("product_1", "Jasmine Pearls", prompt) is None
    assert slot_problem("email_label", "Email address", SECOND_PASS["email_label"]) is None
    assert slot_problem("about", "Leaf & Kettle blends tea by hand in small batches. It ships in a day.") is None


@pytest.mark.timeout(300)
def test_pages_are_seeded_and_do_not_depend_on_the_other_families(tiny_causal_lm):
    teacher = make_teacher("generative", "hf", str(tiny_causal_lm), ["benign", "malicious"], artifact="html")
    grid = layouts(["storefront/grid", "checkout/steps"])
    both = generate_pages(teacher, [TEA, BAGS], grid, per_family=2, seed=0, max_tokens=6)
    again = generate_pages(teacher, [TEA, BAGS], grid, per_family=2, seed=0, max_tokens=6)
    tea_alone = generate_pages(teacher, [TEA], grid, per_family=2, seed=0, max_tokens=6)
    other_seed = generate_pages(teacher, [TEA], grid, per_family=2, seed=1, max_tokens=6)
    assert [c.text for c in both.candidates] == [c.text for c in again.candidates]
    assert [c.text for c in both.candidates[:2]] == [c.text for c in tea_alone.candidates]
    assert [c.text for c in other_seed.candidates] != [c.text for c in tea_alone.candidates]
    assert [(c.family, c.template, c.label) for c in both.candidates] == [
        ("tea", "storefront/grid", "phishing"), ("tea", "checkout/steps", "phishing"),
        ("bags", "storefront/grid", "phishing"), ("bags", "checkout/steps", "phishing")]
    for c in both.candidates:  # every slot of the page was filled, or is named with its problem
        assert set(c.slots) | set(c.unfilled) >= {"shop_name", "product_1"} and not set(c.slots) & set(c.unfilled)
    assert both.prompts >= 4 * 5  # shop name and products of four pages, retries on top
