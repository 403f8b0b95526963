"""Job spec errors name the key path, what is wrong and what is allowed; one broken spec of each kind a user
writes is in the bad-input corpus (tests/bad_inputs/specs, test_bad_inputs.py)."""

from pathlib import Path

import pytest
import yaml

from smallsec_ray.cli import main
from smallsec_ray.errors import SpecError
from smallsec_ray.job import check_inputs, load_job
from smallsec_ray.spec import load_spec, parse_spec, spec_reference


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "ls -la", "label": "benign"}\n')
    return path


def minimal(shard: Path, **overrides) -> dict:
    spec = {"name": "t", "workload": "distill", "artifact": "cmdline",
            "data": {"labelled": [str(shard)]}, "output": "runs/t"}
    spec.update(overrides)
    return spec


def errors_of(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        check_inputs(parse_spec(raw, "job.yaml"), "job.yaml")
    return str(err.value)


def test_minimal_spec_fills_documented_defaults(shard):
    spec = parse_spec(minimal(shard))
    assert spec.training.scaling.strategy == "deepspeed"
    assert spec.teacher.finetune.learning_rate == 5e-5 and spec.teacher.finetune.schedule == "linear"
    assert spec.teacher.model == "bundled:all-minilm-l6-v2"
    assert spec.classes == ["benign", "malicious"]


def test_replicas_take_a_count_or_a_min_max_pair(shard):
    assert parse_spec(minimal(shard, labeling={"replicas": [1, 3]})).labeling.replicas == (1, 3)
    assert "replicas" in errors_of(minimal(shard, labeling={"replicas": [3, 1]}))


def test_environment_variables_expand_with_defaults(shard, monkeypatch):
    raw = minimal(shard, output="${RUNS_DIR:-runs}/job")
    assert parse_spec(raw).output == "runs/job"
    monkeypatch.setenv("RUNS_DIR", "/tmp/elsewhere")
    assert parse_spec(raw).output == "/tmp/elsewhere/job"


def test_validate_command_prints_errors_and_exits_2(tmp_path, shard, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal(shard, student={"modle": "char_cnn"})))
    assert main(["validate", str(path)]) == 2
    assert "student.modle: unknown key" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(minimal(shard)))
    assert main(["validate", str(path)]) == 0
    assert '"zero_stage": 1' in capsys.readouterr().out


def test_every_key_has_a_description():
    ref = spec_reference()
    entries = ref.split("\n")
    keys = [e for e in entries if not e.startswith("    ")]
    descriptions = [e for e in entries if e.startswith("    ")]
    assert len(keys) == len(descriptions) > 60
    assert all(d.strip() for d in descriptions), "a key has an empty description"
    assert "training.scaling.zero_stage" in ref and "teacher.finetune.scaling.zero_stage" in ref
    assert "(int or null; default null)" in ref and "optional" not in ref


def test_shipped_job_specs_are_valid(tmp_path, monkeypatch):
    from smallsec_ray.data.demo import write_demo_data

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    write_demo_data(tmp_path / "demo-data", scale=0.05)
    local = load_job(repo / "jobs" / "local" / "distill.yaml")
    assert local.workload == "distill" and local.output == "runs/distill-local"
    cluster = load_spec(repo / "jobs" / "cluster" / "distill.yaml")
    assert cluster.training.scaling.gpus_per_worker == 1 and cluster.labeling.replicas == (1, 8)
    assert cluster.teacher.finetune.scaling.zero_stage == 3 and cluster.training.scaling.strategy == "ddp"
    local = load_job(repo / "jobs" / "local" / "semi_supervised.yaml")
    assert local.workload == "semi_supervised" and local.semi_supervised.rounds == 2
    cluster = load_spec(repo / "jobs" / "cluster" / "semi_supervised.yaml")
    assert cluster.classes == ["benign", "phishing", "malware"] and cluster.semi_supervised.added_rows[-1] == -1
    local = load_job(repo / "jobs" / "local" / "synthetic.yaml")
    assert local.workload == "synthetic" and len(local.synthetic.families) == 7 and local.student.init_from is None
    cluster = load_spec(repo / "jobs" / "cluster" / "synthetic.yaml")
    assert cluster.synthetic.training.learning_rate < cluster.training.learning_rate and cluster.student.init_from
    for path in (repo / "jobs").rglob("*.yaml"):
        assert path.read_text().startswith("# "), f"{path} must open with a comment saying what it does"


def test_teacher_fine_tuning_and_student_training_have_their_own_scaling(shard):
    spec = parse_spec(minimal(shard, training={"scaling": {"workers": 4}},
                              teacher={"finetune": {"scaling": {"zero_stage": 3, "precision": "bf16"}}}))
    assert spec.training.scaling.workers == 4 and spec.teacher.finetune.scaling.workers == 2
    assert spec.teacher.finetune.scaling.zero_stage == 3 and spec.training.scaling.zero_stage == 1
    assert "offload needs" in errors_of(minimal(shard, training={"scaling": {"strategy": "ddp",
                                                                             "offload": "optimizer"}}))


def test_semi_supervised_keys_are_checked(shard):
    assert "needs data.unlabelled" in errors_of(minimal(shard, workload="semi_supervised"))
    semi = minimal(shard, workload="semi_supervised", data={"labelled": [str(shard)], "unlabelled": [str(shard)]})
    assert parse_spec(semi).semi_supervised.ratios == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "ratios must be distinct shares" in errors_of({**semi, "semi_supervised": {"ratios": [0.5, 1.5]}})
    assert "added_rows must be distinct" in errors_of({**semi, "semi_supervised": {"added_rows": [-2]}})
    assert parse_spec({**semi, "semi_supervised": {"balance": True}}).semi_supervised.balance == "even"
    assert parse_spec({**semi, "semi_supervised": {"balance": "labelled"}}).semi_supervised.balance == "labelled"
    assert "balance" in errors_of({**semi, "semi_supervised": {"balance": "uniform"}})
    assert "needs a classifier teacher" in errors_of({**semi, "semi_supervised": {"rounds": 2},
                                                      "teacher": {"finetune": {"enabled": False}}})


def test_importing_the_spec_imports_no_data_module():
    import subprocess
    import sys

    code = "import sys, smallsec_ray.spec; print(sorted(m for m in sys.modules if m.startswith('smallsec_ray')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "smallsec_ray.data" not in loaded and "smallsec_ray.spec" in loaded


def test_synthetic_keys_are_checked(shard, tmp_path):
    families = [{"name": "tea", "description": "loose-leaf tea"}, {"name": "bags", "description": "handbags"}]
    syn = minimal(shard, workload="synthetic", artifact="html", classes=["benign", "phishing"],
                  positive_class="phishing", teacher={"kind": "generative", "model": "bundled:smollm2-135m-instruct"},
                  student={"model": "html_hier", "init_from": str(tmp_path)},
                  synthetic={"families": families, "train_families": ["tea"], "holdout_layouts": ["checkout"]})
    spec = parse_spec(syn)
    assert spec.synthetic.per_family == 40 and spec.synthetic.tolerance == 0.005
    assert "at least two synthetic.families" in errors_of({**syn, "synthetic": {"families": families[:1]}})
    assert "unknown families ['cushions']" in errors_of(
        {**syn, "synthetic": {"families": families, "train_families": ["cushions"]}})
    assert "must leave at least one family out" in errors_of(
        {**syn, "synthetic": {"families": families, "train_families": ["tea", "bags"]}})
    assert "family names must be distinct" in errors_of({**syn, "synthetic": {"families": families * 2}})
    assert "synthetic.holdout_layouts: unknown layouts" in errors_of(
        {**syn, "synthetic": {"families": families, "holdout_layouts": ["checkout/nope"]}})
    assert "share templates" in errors_of(
        {**syn, "synthetic": {"families": families, "layouts": ["checkout"], "holdout_layouts": ["checkout/steps"]}})
    assert "no template is left" in errors_of(
        {**syn, "synthetic": {"families": families, "holdout_layouts": ["storefront", "social_login", "checkout"]}})
    assert "needs a generative teacher" in errors_of({**syn, "teacher": {"model": "bundled:all-minilm-l6-v2"}})
    assert parse_spec({**syn, "student": {"model": "html_hier"}}).student.init_from is None  # trained here
    assert "label is not one of classes" in errors_of(
        {**syn, "synthetic": {"families": [*families, {"name": "x", "description": "y", "label": "malware"}]}})
    assert parse_spec({**syn, "synthetic": {"families": families, "counterpart_class": "benign"}})
    assert "counterpart_class 'clean' is not one of classes" in errors_of(
        {**syn, "synthetic": {"families": families, "counterpart_class": "clean"}})
    assert "counterpart_class works on HTML pages" in errors_of(
        {**syn, "artifact": "url", "student": {"model": "char_cnn"},
         "synthetic": {"families": families, "counterpart_class": "benign"}})


def test_a_whole_variable_reference_takes_the_type_of_its_value(shard, monkeypatch):
    """Counts and switches come from the environment too (jobs/cluster/distill.yaml's GPUS_PER_WORKER...)."""
    monkeypatch.setenv("SMALLSEC_TEST_GPUS", "0")
    monkeypatch.delenv("SMALLSEC_TEST_UNSET", raising=False)
    raw = minimal(shard, output="runs/${SMALLSEC_TEST_GPUS}",
                  training={"scaling": {"workers": "${SMALLSEC_TEST_UNSET:-3}",
                                        "gpus_per_worker": "${SMALLSEC_TEST_GPUS}",
                                        "cpus_per_worker": "${SMALLSEC_TEST_UNSET:-0.5}"},
                            "materialize": "${SMALLSEC_TEST_UNSET:-false}"})
    spec = parse_spec(raw)
    assert spec.training.scaling.workers == 3 and spec.training.scaling.gpus_per_worker == 0.0
    assert spec.training.scaling.cpus_per_worker == 0.5 and spec.training.materialize is False
    assert spec.output == "runs/0"  # a reference inside a longer string stays text
    monkeypatch.setenv("SMALLSEC_TEST_GPUS", "one")
    assert "training.scaling.gpus_per_worker" in errors_of(raw)


def test_secret_variables_are_masked_in_what_validate_prints_and_the_run_writes(tmp_path, shard, monkeypatch, capsys):
    monkeypatch.setenv("SMALLSEC_TEST_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("SMALLSEC_TEST_BUCKET", "my-bucket")
    raw = minimal(shard, output="runs/t", data={"labelled": ["s3://${SMALLSEC_TEST_BUCKET}/x.jsonl?token=${SMALLSEC_TEST_TOKEN}"]})
    spec = parse_spec(raw)
    assert spec.data.labelled == ["s3://my-bucket/x.jsonl?token=s3cr3t-value"]  # the run uses the value
    assert spec.public_dump()["data"]["labelled"] == ["s3://my-bucket/x.jsonl?token=${SMALLSEC_TEST_TOKEN}"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path), "--skip-file-checks"]) == 0
    out = capsys.readouterr()
    assert "s3cr3t-value" not in out.out + out.err and "${SMALLSEC_TEST_TOKEN}" in out.out
    bad = dict(raw, training={"epochs": "${SMALLSEC_TEST_TOKEN}"})
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    assert "s3cr3t-value" not in str(err.value) and "${SMALLSEC_TEST_TOKEN}" in str(err.value)


def test_overrides_set_dotted_keys_as_if_the_file_said_so(tmp_path, shard, capsys):
    """An experiment's configurations are one spec file and a few overrides each (load_spec, smallsec --set)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal(shard, training={"epochs": 7, "learning_rate": 0.01})))
    spec = load_spec(path, {"training.epochs": 3, "data.noise": {"mode": "groups", "flip_rates": {"malicious": 0.3}},
                            "teacher.finetune.seed": 2})
    assert spec.training.epochs == 3 and spec.training.learning_rate == 0.01  # the rest of the section stays
    assert spec.data.noise.mode == "groups" and spec.data.noise.flip_rates == {"malicious": 0.3}
    assert spec.teacher.finetune.seed == 2  # sections the file does not have are made on the way
    assert load_spec(path, {"data.noise": None}).data.noise is None
    with pytest.raises(SpecError, match=r"training\.epochz: unknown key"):
        load_spec(path, {"training.epochz": 3})  # a misspelt override is caught by the schema, by name
    with pytest.raises(SpecError, match="training.epochs is a value, not a section"):
        load_spec(path, {"training.epochs.max": 3})
    with pytest.raises(SpecError, match="not a dotted key"):
        load_spec(path, {"training..epochs": 3})
    # The command line: --set KEY=VALUE, the value read as YAML.
    assert main(["validate", str(path), "--skip-file-checks", "--set", "training.epochs=2", "--set",
                 "evaluation.fprs=[0.05]", "--set", "distillation={alpha: 0.2}"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["training"]["epochs"] == 2 and resolved["evaluation"]["fprs"] == [0.05]
    assert resolved["distillation"]["alpha"] == 0.2
    assert main(["validate", str(path), "--skip-file-checks", "--set", "training.epochs"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err
