"""The reward CLIP's fine-tune on several processes: fused AdamW, the two towers as one module for
DDP, and the gather of rows across processes for in-batch negatives. Written here because open_clip's
models are not HF models and the Trainer does not take a pair-classifier loss without more glue."""
from __future__ import annotations

import torch

from kit import dist
from kit.models.clip import ClipBundle, encode_text


def fused_adamw(params, *, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """torch's AdamW, its fused kernel where the device has one (CPU and CUDA do): the same update,
    but on the tiny CLIP (93% of whose 3.4M weights are the BPE token table) the default per-tensor
    loop costs more than the forward and backward passes together."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                 fused=torch.device(device).type in ("cpu", "cuda"))
    except (RuntimeError, ValueError):  # a device/dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class Towers(torch.nn.Module):
    """`fn(model, *inputs)` as a module's forward: what DDP wraps (it syncs the gradients of what runs
    through its forward), and what accelerate patches in place of the model itself."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def towers(model: torch.nn.Module) -> Towers:
    """The fine-tune's forward: normalised image embeddings of the pixels, text embeddings of the tokens."""
    return Towers(model, lambda m, pixels, tokens: (m.encode_image(pixels, normalize=True),
                                                      encode_text(m, tokens, normalize=True)))


class GatherRows(torch.autograd.Function):
    """Every process's block of rows, concatenated in rank order (blocks of unequal sizes); backward:
    the sum over processes of the whole batch's gradient, this process's rows of it (a reduce-scatter
    made of an all-reduce, which gloo has too)."""

    @staticmethod
    def forward(ctx, own: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        import torch.distributed as tdist

        ctx.sizes, ctx.rank = sizes, rank
        pad = max(sizes) - len(own)  # all_gather wants equal shapes
        own = torch.cat([own, own.new_zeros((pad, *own.shape[1:]))]) if pad else own.contiguous()
        parts = [torch.empty_like(own) for _ in sizes]
        tdist.all_gather(parts, own)
        return torch.cat([part[:k] for part, k in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as tdist

        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


class DataParallel:
    """The CLIP training loops under `accelerate launch` with N processes (kit.dist): torch's
    DistributedDataParallel over the process group accelerate set up (kit.dist.state()).

    Not an accelerate.Accelerator: it would take the launch's DeepSpeed plugin and mixed precision,
    which are the VLM trainers' settings (ZeRO-2 wants a dataloader and a micro-batch size it cannot
    infer here, and would cast the CLIP to bf16); the CLIP is small and trains in fp32 as in one
    process, so plain DDP is what it needs whatever the launch config says.

    Every process draws the batches one process would (same seeds, the plain DataLoader; a sharded
    sampler would make every process repeat the others' augmentation draws) and runs its block of
    each batch's images (kit.dist.block_sizes) through the model. The embeddings are gathered with
    their gradients and every process computes the whole batch's loss, so the gradient DDP averages
    is the one a single process computes on that batch, up to float rounding: an image embedding's
    gradient comes back from each of the N processes (DDP divides by N), and what every process
    computes itself (the fine-tune's texts, the logit scale) has the full gradient everywhere.
    The price: every process loads and augments the whole batch."""

    def __init__(self, forward: torch.nn.Module, bundle: ClipBundle):
        from torch.nn.parallel import DistributedDataParallel

        state = dist.state()  # sets up the process group (gloo on CPUs, nccl on GPUs)
        dev = torch.device(bundle.device)
        if dev.type != state.device.type:
            raise RuntimeError(f"the CLIP is on {bundle.device} but accelerate's processes run on "
                               f"{state.device}; under accelerate launch leave the profile's device at auto")
        self.bundle = bundle
        self.ddp = DistributedDataParallel(forward, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.n, self.rank = state.num_processes, state.process_index

    def own(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous block of the batch's rows; its first row when the block is empty
        (a batch smaller than the number of processes): DDP needs every process to run the model,
        and `gather` drops that row."""
        sizes = dist.block_sizes(len(batch), self.n)
        start = sum(sizes[:self.rank])
        return batch[start:start + sizes[self.rank]] if sizes[self.rank] else batch[:1]

    def gather(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Every process's rows of an n-row batch (what it computed from `own`), in rank order, on
        every process; the gradient of each block flows back to the process that computed it."""
        sizes = dist.block_sizes(n, self.n)
        return GatherRows.apply(rows[:sizes[self.rank]], sizes, self.rank)

    def encode(self, pixels: torch.Tensor, uniq: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_logits`' encoder (through `towers`): this process's block of the images, gathered; every text."""
        dev = self.bundle.device
        img, txt = self.ddp(self.own(pixels).to(dev), self.bundle.tokenizer(uniq).to(dev))
        return self.gather(img, len(pixels)), txt

    def close(self) -> None:
        """Drop the DDP wrapper (the model itself stays as it was, trained)."""
        self.ddp = None
