"""The launcher configs in cluster/ pass the schema shipped in the Ray package (and Ray's own validation after
its defaults), cluster/kuberay.yaml uses only fields of KubeRay's CRDs (a hand-made subset of them, offline), and
every resource the cluster specs ask for is offered by some node group of each config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from smallsec_ray.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ["aws.yaml", "gcp.yaml"]
SPECS = ["distill.yaml", "semi_supervised.yaml", "synthetic.yaml"]


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_schema_and_validation(name):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config(name), schema)
    validate_config(prepare_config(config(name)))  # what `ray up` runs before it starts anything


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_keeps_the_dashboard_local_and_the_venv_home(name):
    text = (ROOT / "cluster" / name).read_text()
    assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text
    cfg = config(name)
    assert ".venv" in cfg["rsync_exclude"] and "runs" in cfg["rsync_exclude"]
    # Token authentication on every node, with the token generated on the launching machine.
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")  # the versions pyproject pins
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("GPU" not in t["resources"] and t.get("max_workers", 0) > 0 for t in types.values())  # CPU group


def requests(spec) -> list[tuple[str, dict[str, float]]]:
    """(what, resources one replica or worker asks for) of a cluster spec."""
    label = spec.labeling
    out = [("labeling", {"CPU": label.cpus_per_replica, "GPU": label.gpus_per_replica, **label.resources})]
    for what, scaling in (("teacher.finetune", spec.teacher.finetune.scaling), ("training", spec.training.scaling)):
        if what == "teacher.finetune" and not spec.teacher.finetune.enabled:
            continue
        out.append((what, {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker, **scaling.resources}))
    return out


@pytest.mark.parametrize("launcher", LAUNCHER)
@pytest.mark.parametrize("spec_name", SPECS)
def test_every_request_of_a_cluster_spec_fits_a_node_group_that_offers_it(launcher, spec_name):
    spec = load_spec(ROOT / "jobs" / "cluster" / spec_name)
    groups = config(launcher)["available_node_types"]
    for what, wanted in requests(spec):
        custom = {k for k in wanted if k not in ("CPU", "GPU")}
        assert custom, f"{spec_name}: {what} names no custom resource, so any node group could start for it"
        fitting = [name for name, group in groups.items()
                   if all(group["resources"].get(k, 0) >= v for k, v in wanted.items() if v)]
        assert fitting, f"{spec_name}: {what} asks for {wanted}; no node group of {launcher} offers it"
        assert all(custom <= set(groups[name]["resources"]) for name in fitting)


def kuberay() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "cluster" / "kuberay.yaml").read_text())}


def test_kuberay_cluster_autoscales_shares_a_volume_and_runs_a_job_on_itself():
    docs = kuberay()
    cluster, job, claim = docs["RayCluster"]["spec"], docs["RayJob"]["spec"], docs["PersistentVolumeClaim"]
    assert cluster["enableInTreeAutoscaling"] and cluster["rayVersion"] == "2.60.0"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert job["clusterSelector"] == {"ray.io/cluster": docs["RayCluster"]["metadata"]["name"]}
    assert job["entrypoint"].endswith("run jobs/cluster/distill.yaml")
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    image = next(line.split()[-1] for line in (ROOT / "cluster" / "Dockerfile").read_text().splitlines()
                 if line.startswith("FROM"))
    assert image == "rayproject/ray:2.60.0-py311-gpu"
    for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                                 for g in cluster["workerGroupSpecs"]]:
        [container] = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]
        if "nvidia.com/gpu" in container["resources"]["limits"]:
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


@pytest.mark.parametrize("spec_name", SPECS)
def test_every_request_of_a_cluster_spec_fits_a_kuberay_group(spec_name):
    spec = load_spec(ROOT / "jobs" / "cluster" / spec_name)
    groups = {}
    for group in kuberay()["RayCluster"]["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        custom = json.loads(json.loads(group["rayStartParams"]["resources"])) if "resources" in group[
            "rayStartParams"] else {}
        groups[group["groupName"]] = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0)),
                                      **custom}
    for what, wanted in requests(spec):
        fitting = [g for g, offered in groups.items() if all(offered.get(k, 0) >= v for k, v in wanted.items() if v)]
        assert fitting, f"{spec_name}: {what} asks for {wanted}; no KubeRay group offers it"


def crd_validator(kind: str):
    """Validates one kind against tests/kuberay_crd_subset.yaml, hand-made from KubeRay's CRDs (see its header)."""
    import jsonschema

    schema = yaml.safe_load((ROOT / "tests" / "kuberay_crd_subset.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_uses_only_fields_of_the_crds(kind):
    crd_validator(kind).validate(kuberay()[kind])


# (kind, path to a mapping, key taken out, key put in (or None), its value, what the refusal names)
BROKEN = [
    ("RayCluster", ["spec", "headGroupSpec"], "rayStartParams", "rayStartParam", {}, "'rayStartParam' was unexpected"),
    ("RayCluster", ["spec"], "enableInTreeAutoscaling", "enableInTreeAutoscaling", "true", "is not of type 'boolean'"),
    ("RayCluster", ["spec", "autoscalerOptions"], None, "upscalingMode", "Fast", "'Fast' is not one of"),
    ("RayCluster", ["spec", "workerGroupSpecs", 1, "template", "spec", "containers", 0], "volumeMounts", "volumeMount",
     [], "'volumeMount' was unexpected"),
    ("RayCluster", ["spec", "workerGroupSpecs", 0], "minReplicas", None, None, "'minReplicas' is a required"),
    ("RayJob", ["spec"], "runtimeEnvYAML", "runtimeEnvYaml", "", "'runtimeEnvYaml' was unexpected"),
]


@pytest.mark.parametrize(("kind", "path", "old", "new", "value", "message"), BROKEN)
def test_crd_subset_refuses_a_misspelt_or_mistyped_field(kind, path, old, new, value, message):
    import jsonschema

    doc = kuberay()[kind]
    parent = doc
    for step in path:
        parent = parent[step]
    parent.pop(old, None)
    if new is not None:
        parent[new] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        crd_validator(kind).validate(doc)
