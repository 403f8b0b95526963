"""Where Ray runs: an embedded Ray on this machine (dev mode), or a cluster we join or submit to."""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path

import ray
import ray.data

# Set before Ray starts, in this process and (through runtime_env) in its workers.
RUNTIME_ENV_VARS = {
    # Ray Data packs small Parquet files into 128 MiB read tasks: one task would label every shard.
    "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(1 << 20),
    # Ray 2.60's new Parquet reader (datasource V2) spends 2-3 s listing files in every read, even of one
    # local file (0.1 s with V1, measured in benchmarks/RESULTS.md): a student fit reads its rows several
    # times. "1" turns V2 back on.
    "RAY_DATA_USE_DATASOURCE_V2": "0",
    # Ray Train's controller polls its workers every 2 s by default, and a fit ends only at the next poll
    # after the workers finish: ~2 s of every fit (measured in benchmarks/RESULTS.md).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Quiet libraries: the run prints one line per stage and epoch; engine start-up chatter hides them.
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
}


# vLLM on a replica without a GPU: a bounded KV cache (the default takes 0.9 of RAM), no torch.compile
# warm-up, the engine in the calling process (starts in seconds). GPU replicas keep vLLM's defaults
# (CUDA graphs, the engine in its own process).
CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TORCH_COMPILE_DISABLE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def apply_env_defaults(device: str | None = None) -> None:
    """Sets the environment defaults above unless the user set them already; with device="cpu" also
    the CPU engine's (call before vLLM is imported: it reads them at import)."""
    for key, value in {**RUNTIME_ENV_VARS, **(CPU_ENGINE_ENV if device == "cpu" else {})}.items():
        os.environ.setdefault(key, value)


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> bool:
    """Starts an embedded Ray (address None) or joins an existing cluster; no-op if Ray is already up.
    Called by the CLI and `run_job` only: library functions use the Ray their caller started.

    The embedded Ray gets at least 4 logical CPUs: on a 2-core machine actors and train workers with
    fractional CPUs otherwise wait forever for resources (a silent hang). Returns whether this call
    started or joined Ray (False when it was up already).
    """
    apply_env_defaults()
    # Ray Data read the variable when it was imported, perhaps before the defaults were set.
    ray.data.DataContext.get_current().use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"].lower() in (
        "1", "true")
    if ray.is_initialized():
        return False
    _quiet_ray_data()
    env = {"env_vars": {k: os.environ[k] for k in RUNTIME_ENV_VARS}}
    in_ray_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or os.environ.get("RAY_JOB_ID")
    if in_ray_job or (not address and os.environ.get("RAY_ADDRESS")):
        # Running as a Ray job (`smallsec submit`; the Jobs API sets RAY_JOB_CONFIG_JSON_ENV_VAR, whatever
        # resources.address says): the job's runtime_env already holds our settings, and Ray refuses a
        # second one that repeats them.
        ray.init(log_to_driver=True)
        return True
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return True
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    private_auth_token()
    # address="local": always a new instance, never a cluster some other process started here.
    ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             runtime_env=env, log_to_driver=True, configure_logging=True, logging_level=logging.WARNING)
    return True


def private_auth_token() -> None:
    """The embedded Ray's token, readable by its owner only.

    Ray 2.60 listens on every interface (GCS, raylet, workers, dashboard agent; it has no setting to bind
    them to 127.0.0.1), and turns token authentication on for a new local cluster: a process without the
    token is refused (tests/test_local_security.py). But when no token exists it writes one to
    ~/.ray/auth_token with the default mode (0644 here: any local user could read it and run code through
    Ray). So write it first, mode 0600 in a 0700 folder, with Ray's own generator. A token the user set up
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, an existing file), or RAY_AUTH_MODE=disabled, is left as it is.
    """
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    folder = Path.home() / ".ray"
    folder.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(folder / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def _quiet_ray_data() -> None:
    """Ray Data's progress bars and tables would hide the job's own progress line; only warnings in
    the log (SMALLSEC_VERBOSE=1 keeps everything)."""
    if os.environ.get("SMALLSEC_VERBOSE") == "1":
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def submit_job(spec_path: str, address: str, working_dir: str = ".", extra_args: list[str] | None = None,
               pip: list[str] | None = None, env_vars: dict[str, str] | None = None) -> str:
    """Submits `smallsec run SPEC` as a Ray job through the Jobs API; returns the job id.

    The working dir (this checkout, without .venv, runs and .git) travels in the runtime_env, so the
    cluster runs this exact code; the cluster's Python must have the dependencies (see cluster/), or
    name them in `pip`. `env_vars` (the spec's ${VARS} as set here) go with the job, so that the cluster
    expands the spec as it was validated.
    """
    from ray.job_submission import JobSubmissionClient

    from smallsec_ray.errors import StageError

    apply_env_defaults()
    runtime_env: dict = {
        "working_dir": working_dir,
        "excludes": [".venv/", "runs/", ".git/", "demo-data/", "*.onnx", "__pycache__/"],
        "env_vars": {**{k: os.environ[k] for k in RUNTIME_ENV_VARS}, **(env_vars or {})},
    }
    if pip:
        runtime_env["pip"] = pip
    entrypoint = shlex.join(["python", "-m", "smallsec_ray.cli", "run", spec_path, *(extra_args or [])])
    try:
        client = JobSubmissionClient(address)
    except ray.exceptions.AuthenticationError:
        raise StageError(f"the Ray cluster at {address} asks for its token (token authentication); pass "
                         "--auth-token-file FILE, or put the token in ~/.ray/auth_token") from None
    except ConnectionError as err:
        raise StageError(f"cannot reach a Ray cluster's dashboard at {address} ({str(err).splitlines()[0]}); check "
                         "--address (or RAY_ADDRESS), and that the SSH tunnel or port-forward to the head is up "
                         "(`ray dashboard cluster/aws.yaml`)") from None
    # A head that has just started answers before its job agent is up; that is worth waiting for.
    deadline = time.time() + 90
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(2)

