"""Several processes under `accelerate launch`: which process writes, and how work is split and gathered.

One process (a notebook, plain `kit run`) is the common case and costs nothing here: the state is
then a single process, `my_share` is everything and `gather_in_order` returns its input.

    share = my_share(len(items))                # this process's contiguous block of indices
    out = gather_in_order([f(items[i]) for i in share])   # every item's result once, in order, on every process
    if is_main(): write(...)                     # files, metrics and figures: the main process only
    wait()                                       # the others wait until it has written
"""
from __future__ import annotations

from typing import Any, Sequence


def state():
    """accelerate's PartialState (the process group accelerate launch set up; one process otherwise).

    Without a GPU it is asked for CPU processes: PartialState() alone treats a CPU-only launch as one
    process (the flag AcceleratorState reads from ACCELERATE_USE_CPU), so N CPU processes use gloo."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def num_processes() -> int:
    return state().num_processes


def is_main() -> bool:
    return state().is_main_process


def wait() -> None:
    """A barrier: every process waits for the others (a no-op in one process)."""
    if num_processes() > 1:
        state().wait_for_everyone()


def my_share(n: int) -> range:
    """The indices of n items this process handles: contiguous blocks in rank order, sizes differing
    by at most one (split_between_processes' rule), so concatenating the blocks by rank restores the order."""
    k, r = state().num_processes, state().process_index
    if k == 1:
        return range(n)
    base, extra = divmod(n, k)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def gather_in_order(local: Sequence[Any]) -> list:
    """Every process's `local` results (for its `my_share` block), concatenated in rank order, on every
    process: each item exactly once, in the original order."""
    if num_processes() == 1:
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(list(local)))
