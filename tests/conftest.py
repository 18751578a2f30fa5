import os
import subprocess
import sys

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on this 2-core machine: one thread each, inherited by the
    # notebook kernels and launched processes they start (two OpenMP pools of 2 threads on 2 cores
    # would spin against each other and run several times slower)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# the end-to-end run is the longest file by far: collected first, one worker starts it at once while
# the other takes the rest (`--dist loadfile` keeps a file's tests, and its fixtures, on one worker)
FIRST = ("test_pipeline_e2e.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda it: it.path.name not in FIRST)


@pytest.fixture(scope="session")
def accelerate_launch():
    """`launch(script, *args, cwd=...)`: the script in n processes on this CPU under `accelerate launch`,
    one thread each, on a free rendezvous port; its CompletedProcess (with check=True: asserted to succeed)."""
    from kit import dist
    from kit.params import PROJECT_ROOT

    def launch(script, *args: str, cwd, n: int = 2, env=None, timeout: int = 600, check: bool = True):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT), "TOKENIZERS_PARALLELISM": "false",
               **(env or {})}
        # `accelerate launch --cpu --num_processes 2` starts ONE process unless mpirun is set up (accelerate
        # 1.16's simple launcher); `--multi_gpu` launches through torchrun, and kit.dist asks for CPU
        # processes when there is no GPU, so the ranks meet over gloo
        r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--multi_gpu",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            "--main_process_port", str(dist.free_port()), str(script), *args],
                           env=env, capture_output=True, text=True, timeout=timeout, cwd=str(cwd))
        if check:
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r

    return launch
