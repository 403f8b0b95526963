"""Student models and encoders: sizes, shapes, rebuild from config, and encoders that never crash."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from smallsec_ray.students import build_from_config, build_student, student_config
from smallsec_ray.students.encoders import CharEncoder, HtmlTokenEncoder, encoder_from_config

PARAMETER_RANGES = {"default": (2_500_000, 3_500_000), "small": (100_000, 300_000), "tiny": (1_000, 10_000)}


def texts_for(model: str, cmdlines: list[str], pages: list[str]) -> list[str]:
    return cmdlines if model == "char_cnn" else pages


@pytest.mark.parametrize("preset", ["default", "small", "tiny"])
@pytest.mark.parametrize("model", ["char_cnn", "html_hier"])
def test_preset_size_and_forward_shape(model, preset, cmdlines, pages):
    student, encoder = build_student(model, preset, num_classes=3)
    low, high = PARAMETER_RANGES[preset]
    assert low <= sum(p.numel() for p in student.parameters()) <= high
    texts = texts_for(model, cmdlines, pages)[:4]
    with torch.no_grad():
        logits = student.eval()(torch.from_numpy(encoder.encode(texts)))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()


def test_max_length_overrides_preset():
    student, encoder = build_student("char_cnn", "tiny", 2, max_length=100)
    assert encoder.encode(["x"]).shape == (1, 100)
    assert student(torch.from_numpy(encoder.encode(["x"]))).shape == (1, 2)


def test_unknown_model_or_preset_is_named():
    with pytest.raises(ValueError, match="unknown model 'lstm'"):
        build_student("lstm", "tiny", 2)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_student("char_cnn", "huge", 2)


@pytest.mark.parametrize("model", ["char_cnn", "html_hier"])
def test_score_does_not_depend_on_padding(model, cmdlines, pages):
    """Padding is no evidence: the same rows padded further give the same logits."""
    student, encoder = build_student(model, "tiny", 2)
    ids = torch.from_numpy(encoder.encode(texts_for(model, cmdlines, pages)))
    if model == "char_cnn":  # a row that fills max_length would gain windows running into the new padding
        ids = ids[ids[:, -1] == 0]
    padded = torch.cat([ids, torch.zeros(ids.shape[0], 50, dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(ids), student(padded))


@pytest.mark.parametrize("model", ["char_cnn", "html_hier"])
def test_rebuild_from_json_config_gives_same_model(model, cmdlines, pages):
    student, encoder = build_student(model, "tiny", 2, max_length=80)
    rebuilt, rebuilt_encoder = build_from_config(json.loads(json.dumps(student_config(student))))
    rebuilt.load_state_dict(student.state_dict())
    texts = texts_for(model, cmdlines, pages)[:5]
    ids = torch.from_numpy(encoder.encode(texts))
    assert np.array_equal(rebuilt_encoder.encode(texts), ids.numpy())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(ids), student.eval()(ids))


def test_char_encoder_maps_bytes_and_keeps_the_head():
    ids = CharEncoder(4).encode(["ab", "", "héllo", "a\x00b"])
    assert ids.dtype == np.int64 and ids.shape == (4, 4)
    assert ids[0].tolist() == [ord("a") + 1, ord("b") + 1, 0, 0]
    assert ids[1].tolist() == [0, 0, 0, 0]
    assert ids[2].tolist() == [b + 1 for b in "héllo".encode()[:4]]
    assert ids[3].tolist() == [ord("a") + 1, 1, ord("b") + 1, 0]  # NUL is a real byte, not padding


@pytest.mark.parametrize("encoder", [CharEncoder(256), HtmlTokenEncoder(512, 1024)], ids=["char", "html"])
def test_encoders_survive_bad_input(encoder):
    huge = "<div class=x>" + "A" * (5 << 20)
    texts = ["", huge, "\x00\x00\x00", "日本語 <b>ünïcödé</b> 🙂", "\ud800 lone surrogate", " " * 1000]
    ids = encoder.encode(texts)
    assert ids.shape[0] == len(texts) and ids.dtype == np.int64
    assert (ids[0] == 0).all() and (ids[1] != 0).any() and (ids[3] != 0).any()
    assert encoder.encode([]).shape == (0, ids.shape[1])


def test_encoders_name_a_row_that_is_not_text():
    with pytest.raises(TypeError, match="row 1 is NoneType"):
        CharEncoder(8).encode(["ok", None])


def test_html_tokens_are_tags_attributes_and_words_hashed_stably():
    encoder = HtmlTokenEncoder(max_tokens=16, hash_buckets=1000)
    page = '<FORM action="/Login.php">Sign in</form>'
    tokens = ["<form", "action=", "login", "php", "sign", "in", "</form"]
    assert encoder.tokens(page) == tokens
    expected = [zlib.crc32(t.encode()) % 999 + 1 for t in tokens]
    assert encoder.encode([page])[0].tolist() == expected + [0] * 9


def test_html_head_window_gives_the_same_tokens_as_the_whole_page(pages):
    whole = HtmlTokenEncoder(max_tokens=10**7, hash_buckets=2)
    for n in (1, 100, 1000, 5000):
        for page in pages:
            assert HtmlTokenEncoder(n, 2).tokens(page) == whole.tokens(page)[:n]


@pytest.mark.parametrize("encoder", [CharEncoder(33), HtmlTokenEncoder(64, 4096)], ids=["char", "html"])
def test_encoder_config_round_trip(encoder, pages):
    rebuilt = encoder_from_config(json.loads(json.dumps(encoder.config())))
    assert np.array_equal(rebuilt.encode(pages[:3]), encoder.encode(pages[:3]))
