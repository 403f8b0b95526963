"""The embedded Ray of local mode, as a fresh machine starts it: token authentication on, the token readable by
its owner only, and a process without the right token refused. Ray 2.60 listens on every interface (no setting
binds its GCS, raylet and workers to 127.0.0.1), so the token is what keeps other hosts and users out."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

# Starts the embedded Ray as `smallsec run` does, then tries the GCS from fresh processes with another HOME:
# no token, a wrong token, the right token (the control: it must connect and run a task).
SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    from pathlib import Path
    import ray
    from smallsec_ray.runtime import init_ray

    init_ray(num_cpus=2)
    gcs = ray.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={gcs!r}); print('RAN', ray.get(ray.remote(lambda: 1 + 1).remote()))"
    token = Path.home() / ".ray" / "auth_token"
    tries = {"no token": {"RAY_AUTH_MODE": "disabled"},
             "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
             "the token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}}
    for name, extra in tries.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HOME=sys.argv[1], **extra)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        refused = "AuthenticationError" in done.stderr
        print(f"TRY {name}: rc={done.returncode} ran={'RAN 2' in done.stdout} refused={refused}")
    ray.shutdown()
""")


def test_local_ray_needs_its_token_and_the_token_stays_private(tmp_path):
    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir()
    stranger.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)  # a fresh machine: no ~/.ray/auth_token yet
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(stranger)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tries = [line for line in done.stdout.splitlines() if line.startswith("TRY ")]
    assert tries == ["TRY no token: rc=1 ran=False refused=True",
                     "TRY wrong token: rc=1 ran=False refused=True",
                     "TRY the token: rc=0 ran=True refused=False"], done.stdout + done.stderr[-3000:]
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64


def test_a_token_the_user_set_up_is_left_alone(tmp_path, monkeypatch):
    from smallsec_ray.runtime import private_auth_token

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    private_auth_token()
    assert not (tmp_path / ".ray").exists()  # the user turned authentication off: no token written
    monkeypatch.delenv("RAY_AUTH_MODE")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("mine")
    private_auth_token()
    assert (tmp_path / ".ray" / "auth_token").read_text() == "mine"
