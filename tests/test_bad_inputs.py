"""The bad-input corpus (issue 14): every file under tests/bad_inputs/ runs through the entry point a user would
hand it to (`smallsec validate`, `smallsec run --until prepare`, `smallsec score`) and gets the outcome
EXPECTED.yaml names for it: an error naming the file, rows quarantined with their reasons and every row
counted, or a clean read. A file without an entry fails the last test."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from smallsec_ray.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
EXPECTED = yaml.safe_load((CORPUS / "EXPECTED.yaml").read_text())
OUTCOMES = ("error", "quarantine", "ok")


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """`smallsec ARGS`: (exit status, stdout, stderr); a traceback fails the test where it is raised."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def messages(case: dict) -> list[str]:
    message = case["message"]
    return message if isinstance(message, list) else [message]


def check_error(err: str, file: str, case: dict) -> None:
    """One `error:` line naming the file, then one indented line per further problem (a spec's keys)."""
    first, *rest = err.strip().splitlines()
    assert first.startswith(f"error: {file}: "), err
    assert all(line.startswith("  ") for line in rest), err
    assert "Traceback" not in err and "\x1b[" not in err
    for text in messages(case):
        assert text in err, f"{text!r} not in {err!r}"


# ------------------------------------------------------------------------------------------------------ specs

@pytest.mark.parametrize("name", sorted(EXPECTED["specs"]))
def test_spec(name, monkeypatch):
    case = EXPECTED["specs"][name]
    monkeypatch.chdir(CORPUS / "specs")
    monkeypatch.delenv("SMALLSEC_CORPUS_UNSET", raising=False)
    for key, value in case.get("env", {}).items():
        monkeypatch.setenv(key, value)
    status, out, err = run_cli(["validate", name])
    if case["outcome"] == "ok":
        assert status == 0, err
        assert json.loads(out)["name"] == "corpus"
    else:
        assert (status, out) == (2, ""), err
        check_error(err, name, case)
    if "secret" in case:
        assert case["secret"] not in out + err


# ------------------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    """Every data file as one shard of its part in one prepare run: (run folder, the prepare result, the
    console)."""
    run = tmp_path_factory.mktemp("corpus") / "run"
    spec = run.parent / "job.yaml"
    spec.write_text(json.dumps({
        "name": "corpus", "workload": "distill", "artifact": "cmdline", "output": str(run),
        "data": {**{part: [str(CORPUS / "data" / name) for name in names] for part, names in PARTS.items()},
                 "on_bad_file": "skip", "max_text_bytes": 2000}}))
    status, out, err = run_cli(["run", str(spec), "--until", "prepare"])
    assert status == 0, out + err
    result = json.loads((run / "prepare" / "manifest.json").read_text())["result"]
    return run, result, out


PARTS = {part: sorted(name for name, case in EXPECTED["data"].items() if case.get("part", "labelled") == part)
         for part in ("labelled", "test")}


def _rows(folder: Path, pattern: str) -> list[dict]:
    return [row for path in sorted(folder.glob(pattern)) for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("name", sorted(EXPECTED["data"]))
def test_data(name, prepared):
    case = EXPECTED["data"][name]
    run, result, _ = prepared
    path = str(CORPUS / "data" / name)
    skipped = {s["file"]: s["reason"] for s in result["files_skipped"]}
    part = case.get("part", "labelled")
    shard = f"{part}-{PARTS[part].index(name):05d}-*.parquet"  # prepare names a shard by its position in the part
    good = _rows(run / "prepare" / part, shard)
    quarantined = _rows(run / "prepare" / "quarantine" / part, shard) + \
        _rows(run / "prepare" / "quarantine" / part, "duplicate-ids-" + shard)
    if case["outcome"] == "error":
        assert path in skipped and not good and not quarantined
        check_error("error: " + skipped[path], path, case)
        return
    assert path not in skipped, skipped.get(path)
    assert len(good) + len(quarantined) == case["rows"]  # every row of the file, good or set aside
    assert len(quarantined) == case.get("quarantined", 0)
    reasons = [row["reason"] for row in quarantined]
    for reason in case.get("reasons", []):
        assert any(reason in r for r in reasons), f"{reason!r} not in {reasons}"
    for column in case.get("columns", []):
        assert all(column in row for row in good + quarantined), column


def test_prepare_counts_every_row_it_read_and_names_the_skipped_files(prepared):
    _, result, console = prepared
    cases = EXPECTED["data"].values()
    rows = result["rows"]
    assert rows["rows_in"] == rows["rows_out"] + rows["rows_quarantined"]
    assert rows["rows_in"] == sum(c["rows"] for c in cases if c["outcome"] != "error")
    assert rows["rows_quarantined"] == sum(c.get("quarantined", 0) for c in cases)
    errors = sum(c["outcome"] == "error" for c in cases)
    assert len(result["files_skipped"]) == errors
    assert f"{errors} file(s) skipped as unreadable" in console


# ------------------------------------------------------------------------------------------------------ score

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny char CNN exported as `smallsec score` reads it (untrained: only the plumbing is checked)."""
    from smallsec_ray.export import export_onnx
    from smallsec_ray.students import build_student, student_config
    from smallsec_ray.students.folder import Lineage, ModelConfig

    student, encoder = build_student("char_cnn", "tiny", 2)
    config = ModelConfig(student_config(student), encoder.config(), ["benign", "malicious"],
                         Lineage(job="bad-inputs"), thresholds={"malicious": 0.5})
    folder = tmp_path_factory.mktemp("exported") / "model"
    export_onnx(student, config, folder, ["ls -la", "whoami"])
    return folder


def _merged(base: dict, patch: dict) -> dict:
    return {key: _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value for key, value in {**base, **patch}.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED["score"]))
def test_score(name, exported, tmp_path):
    case = EXPECTED["score"][name]
    model, scored = exported, CORPUS / "score" / name
    if "as" in case:  # the file damages a copy of the model folder, which scores a one-line file
        model = Path(shutil.copytree(exported, tmp_path / "model"))
        if case["as"] == "config.json patch":
            config = json.loads((model / "config.json").read_text())
            (model / "config.json").write_text(json.dumps(_merged(config, json.loads(scored.read_text()))))
        else:
            shutil.copyfile(scored, model / case["as"])
        scored = tmp_path / "one.txt"
        scored.write_text("ls -la\n")
    status, out, err = run_cli(["score", str(model), str(scored)])
    if case["outcome"] == "error":
        assert (status, out) == (2, ""), err
        named = model / case["as"].split()[0] if "as" in case else scored  # a patch: config.json
        check_error(err, str(named), case)
        assert len(err.strip().splitlines()) == 1
        return
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    failed = [line for line in lines if "error" in line]
    assert len(lines) == case["rows"] and len(failed) == case.get("quarantined", 0)  # a line per row
    assert f"scored {case['rows'] - len(failed)} rows" in err
    for reason in case.get("reasons", []):
        assert any(reason in line["error"] for line in failed), f"{reason!r} not in {failed}"
    if "texts" in case:
        assert [line["text"] for line in lines] == case["texts"]


# ----------------------------------------------------------------------------------------------------- corpus

def test_every_corpus_file_has_an_expected_outcome():
    for folder in ("specs", "data", "score"):
        files = sorted(p.name for p in (CORPUS / folder).iterdir())
        assert files == sorted(EXPECTED[folder]), f"{folder}/: files and EXPECTED.yaml entries differ"
        for name, case in EXPECTED[folder].items():
            assert case["outcome"] in OUTCOMES, name
            assert ("message" in case) == (case["outcome"] == "error"), name
            if folder != "specs":
                assert ("rows" in case) == (case["outcome"] != "error"), name
    assert sorted(p.name for p in CORPUS.iterdir()) == ["EXPECTED.yaml", "data", "score", "specs"]
    counts = {folder: len(EXPECTED[folder]) for folder in ("specs", "data", "score")}
    outcomes = {o: sum(c["outcome"] == o for cases in EXPECTED.values() for c in cases.values()) for o in OUTCOMES}
    assert counts == {"specs": 41, "data": 30, "score": 22}
    assert outcomes == {"error": 67, "quarantine": 14, "ok": 12}
