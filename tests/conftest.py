"""Shared fixtures. Ray starts once per test session (each start costs seconds on these machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests read real data from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cmdlines(shared_data) -> list[str]:
    """200 real command lines: 100 tldr examples, 100 Atomic Red Team tests."""
    import pandas as pd

    benign = pd.read_json(shared_data / "cmdline" / "tldr.jsonl.gz", lines=True).text.head(100)
    malicious = pd.read_json(shared_data / "cmdline" / "atomic_red_team.jsonl", lines=True).text.head(100)
    return benign.tolist() + malicious.tolist()


@pytest.fixture(scope="session")
def pages(shared_data) -> list[str]:
    """40 real HTML pages: 20 phishing kit pages, 20 articles."""
    import pandas as pd

    phishing = pd.read_json(shared_data / "html" / "zphisher_pages.jsonl.gz", lines=True).html.head(20)
    benign = pd.read_json(shared_data / "html" / "readability_pages.jsonl.gz", lines=True).html.head(20)
    return phishing.tolist() + benign.tolist()


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray for the whole test session (4 logical CPUs on 2 cores, no dashboard)."""
    import ray

    from smallsec_ray.runtime import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


TINY_CLASSES = ["benign", "malicious"]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A tiny BertForSequenceClassification folder over TINY_CLASSES (see tiny_models.py); ~1 s."""
    from tiny_models import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("models") / "classifier", TINY_CLASSES)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM folder with a chat template; ' benign' and ' malicious' are single tokens."""
    from tiny_models import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("models") / "causal_lm", TINY_CLASSES)
