"""Several processes under `accelerate launch`: which process writes, and how work is split and gathered.

One process (a notebook, plain `kit run`) is the common case and costs nothing here: without
accelerate's WORLD_SIZE nothing is imported, `my_share` is everything and `gather_in_order` returns
its input.

    share = my_share(len(items))                # this process's contiguous block of indices
    out = gather_in_order([f(items[i]) for i in share])   # every item's result once, in order, on every process
    runs.write_json(path, out)                   # kit.runs writes on the main process only
    result = on_main(report, run_dir)            # work not worth splitting: the main process does it, all get the result

Every process runs the same stage code on the same gathered data, so they hold the same values; only
the main process writes them (kit.runs' writers, figures, checkpoints). Writes a process must make
itself (its own partial results, its share of the judge's cache) say so with `every_rank=True`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Mapping, MutableMapping, Sequence

_solo = False  # inside on_main: the main process works alone, as if it were the only one
# set by `kit run --launcher accelerate` for the notebooks that follow each launch: how many processes
# made the results they reuse (kit.keys puts that number in the keys)
KEY_PROCESSES = "KIT_KEY_PROCESSES"


def _launched() -> bool:
    """Whether accelerate launch / torchrun started more than one process (their WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def free_port() -> int:
    """A TCP port free on this machine now: the rendezvous port for a one-machine launch, so that two
    launches at once (two runs, two test workers) do not both take torchrun's default 29500."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state():
    """accelerate's PartialState (the process group accelerate launch set up; one process otherwise).

    Without a GPU it is asked for CPU processes: PartialState() alone treats a CPU-only launch as one
    process (the flag AcceleratorState reads from ACCELERATE_USE_CPU), so N CPU processes use gloo."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def num_processes() -> int:
    return state().num_processes if _launched() and not _solo else 1


def key_processes() -> int:
    """The number of processes that train and generate in this run, for stage keys: this launch's
    (inside on_main too), or in a notebook's one process the number `kit run --launcher accelerate`
    launched its stages with."""
    if _launched():
        return state().num_processes
    return int(os.environ.get(KEY_PROCESSES) or 1)


def rank() -> int:
    return state().process_index if _launched() else 0


def is_main() -> bool:
    return rank() == 0


def wait() -> None:
    """A barrier: every process waits for the others (a no-op in one process, and inside on_main)."""
    if num_processes() > 1:
        state().wait_for_everyone()


def block_sizes(n: int, k: int | None = None) -> list[int]:
    """How many of n items each of k processes (default: this launch's) handles, in rank order: sizes
    differing by at most one, the larger first (split_between_processes' rule)."""
    k = num_processes() if k is None else k
    base, extra = divmod(n, k)
    return [base + (1 if r < extra else 0) for r in range(k)]


def close() -> None:
    """The end of a launched process's work: wait for the others, then take the process group down.
    Exiting with a gloo group still up can abort a process at interpreter exit ("terminate called
    without an active exception", exit -6) while its peer tears down, failing a launch that finished."""
    if not _launched():
        return
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def my_share(n: int) -> range:
    """The indices of n items this process handles: its contiguous block (block_sizes), so
    concatenating the blocks by rank restores the order."""
    if num_processes() == 1:
        return range(n)
    sizes, r = block_sizes(n), rank()
    start = sum(sizes[:r])
    return range(start, start + sizes[r])


def gather_in_order(local: Sequence[Any]) -> list:
    """Every process's `local` results (for its `my_share` block), concatenated in rank order, on every
    process: each item exactly once, in the original order."""
    if num_processes() == 1:
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(list(local)))


def sum_counts_since(stats: MutableMapping[str, Any], before: Mapping[str, Any]) -> None:
    """Turn `stats` (a counter dict this process has added to since its copy `before`) into the sum
    over the processes of what each added, on every process. Non-numeric entries are left alone."""
    if num_processes() == 1:
        return
    mine = {k: v - before.get(k, 0) for k, v in stats.items() if isinstance(v, (int, float))}
    added: dict[str, float] = {}
    for part in gather_in_order([mine]):
        for k, v in part.items():
            added[k] = added.get(k, 0) + v
    for k, v in added.items():
        stats[k] = before.get(k, 0) + v


def broadcast(obj: Any) -> Any:
    """The main process's `obj` on every process."""
    if num_processes() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


@contextlib.contextmanager
def _alone():
    global _solo
    _solo, before = True, _solo
    try:
        yield
    finally:
        _solo = before


def on_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` on the main process alone (the others wait), its result on every process.

    For work not worth splitting (the report, drawing figures, rendering the toy world). Inside, the
    kit behaves as in one process (no barriers, no sharding). An exception on the main process is
    raised on every process, so none is left waiting."""
    if num_processes() == 1:
        return fn(*args, **kwargs)
    out, err = None, None
    if is_main():
        try:
            with _alone():
                out = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every process
            err = e
    got = broadcast((out, None if err is None else f"{type(err).__name__}: {err}"))
    if err is not None:
        raise err
    if got[1] is not None:
        raise RuntimeError(f"the main process failed: {got[1]}")
    return got[0]
