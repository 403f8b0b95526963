"""How fast the local autoscaling cluster scales: seconds from a request to a node up, and from a node idle to the
node gone, on Ray's fake provider (smallsec_ray.autoscaling, node types from cluster/aws.yaml).

    python benchmarks/bench_autoscaling.py              # 5 rounds, idle timeout 10 s
    python benchmarks/bench_autoscaling.py --smoke      # 1 round: the code runs

Each round asks for one teacher replica's bundle ({CPU: 1, teacher_gpu: 1}: only the teacher_gpu group offers it)
as a Ray task that holds it for 2 s, with no worker node up: "up" is the request to the task running on the new
node; "gone" is the task's end to the node leaving the cluster's node list (the idle timeout is part of it;
"gone - idle" is the autoscaler's own share). The autoscaler checks every second (AUTOSCALER_UPDATE_INTERVAL_S=1);
a cloud adds its own minutes to boot an instance, which this does not measure.
Writes benchmarks/bench_autoscaling.{json,md} (--smoke: a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import ROOT, Results, Spread, table  # noqa: E402

from smallsec_ray.autoscaling import LocalAutoscalingCluster  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-timeout", type=float, default=10, help="the autoscaler's idle timeout, seconds")
    parser.add_argument("--smoke", action="store_true", help="one round")
    args = parser.parse_args(argv)
    rounds = 1 if args.smoke else args.rounds
    out = Results("bench_autoscaling", smoke=args.smoke)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of this machine's processes, for this run only
    import ray

    up, gone = [], []
    with LocalAutoscalingCluster(ROOT / "cluster" / "aws.yaml", idle_timeout_s=args.idle_timeout,
                                 env={"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}) as cluster:
        ray.init(address=cluster.gcs_address, log_to_driver=False)

        @ray.remote(num_cpus=1, resources={"teacher_gpu": 1})
        def hold() -> float:
            started = time.time()
            time.sleep(2)
            return started

        try:
            for k in range(rounds):
                wait(lambda: cluster.node_types() == {"head": 1}, 300)
                asked = time.time()
                running = ray.get(hold.remote())
                idle = time.time()
                wait(lambda: not cluster.node_types().get("teacher_gpu"), 300)
                up.append(running - asked)
                gone.append(time.time() - idle)
                print(f"round {k + 1}/{rounds}: node up {up[-1]:.1f} s, gone {gone[-1]:.1f} s after idle", flush=True)
        finally:
            ray.shutdown()
    figures = {"rounds": rounds, "idle_timeout_s": args.idle_timeout, "request_to_node_up_s": Spread.of(up),
               "idle_to_node_gone_s": Spread.of(gone),
               "gone_minus_idle_timeout_s": Spread.of([g - args.idle_timeout for g in gone])}
    rows = [["request -> node up (task running)", Spread.of(up).text(1)],
            [f"idle -> node gone (idle timeout {args.idle_timeout:g} s)", Spread.of(gone).text(1)],
            ["gone - idle timeout", Spread.of([g - args.idle_timeout for g in gone]).text(1)]]
    markdown = (f"Seconds, mean [min, max] over {rounds} round(s), one teacher_gpu node each:\n\n"
                + table(["", "seconds"], rows, right=[1]) + "\n")
    print(markdown)
    print(f"results: {out.write(figures, markdown)}")
    return 0


def wait(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"the cluster did not get there in {timeout_s:g} s")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
