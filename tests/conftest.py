import os

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
