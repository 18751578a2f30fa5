"""Paper B's pair classifier: logit = cos(img, txt) * exp(logit_scale) [+ logit_bias], its
BCE loss (with in-batch negatives labelled from the annotations), and the scores, AUROC and BCE of a
set of pairs."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from kit.models.clip import ClipBundle, encode_text
from kit.reward.clip_reward import CLIPReward
from kit.reward.images import ImageStore
from kit.reward.pairs import Pair


def _logits(model, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    logits = img @ txt.T * model.logit_scale.exp()
    if getattr(model, "logit_bias", None) is not None:
        logits = logits + model.logit_bias
    return logits


def _encode(model, bundle: ClipBundle, pixels: torch.Tensor, uniq: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    img = model.encode_image(pixels.to(bundle.device), normalize=True)
    txt = encode_text(model, bundle.tokenizer(uniq).to(bundle.device), normalize=True)
    return img, txt


def batch_logits(model, bundle: ClipBundle, pixels: torch.Tensor, texts: list[str],
                 encode=None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(pair logits [n], every image against every distinct text of the batch [n, m], those m texts).

    Each distinct text is encoded once (a batch of reasons repeats a few texts many times).
    `encode(pixels, uniq) -> (image embeddings, text embeddings)` stands in for the model's own
    encoders (several processes: `DataParallel.encode`)."""
    uniq = sorted(set(texts))
    col = {t: j for j, t in enumerate(uniq)}
    img, txt = encode(pixels, uniq) if encode is not None else _encode(model, bundle, pixels, uniq)
    grid = _logits(model, img, txt)
    idx = torch.tensor([col[t] for t in texts], device=grid.device)
    return grid[torch.arange(len(texts), device=grid.device), idx], grid, uniq


def pair_loss(model, bundle: ClipBundle, pixels: torch.Tensor, texts: list[str], labels: torch.Tensor,
              truths: Sequence[frozenset[str]] | None = None, encode=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper B's loss, BCE-with-logits on the batch's pairs; with `truths` (each image's true texts)
    the BCE over every image against every distinct text of the batch is added, its positives and
    negatives weighted equally: the in-batch negatives of SigLIP's sigmoid loss, labelled by the
    image's true texts instead of the diagonal (a driving scene has several true reasons, and the
    same reason is true of many scenes).

    Returns (the loss to minimise, the pairs' BCE alone: what the history reports as train loss).
    `encode`: as in `batch_logits`."""
    pair, grid, uniq = batch_logits(model, bundle, pixels, texts, encode)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    paper = bce(pair, labels.to(pair.device))
    if truths is None:
        return paper, paper.detach()
    target = torch.tensor([[float(t in tr) for t in uniq] for tr in truths], device=grid.device)
    # Most of the grid is negatives (a scene has ~3 of ~16 texts): weight the two classes equally, as
    # the pairs are. Unweighted, they pulled the match probabilities down (toy test recall 0.70 at 0.5).
    pos = target.sum().clamp(min=1)
    neg = (target.numel() - target.sum()).clamp(min=1)
    w = torch.where(target > 0, 0.5 / pos, 0.5 / neg)
    return paper + bce(grid, target, weight=w, reduction="sum"), paper.detach()


@torch.no_grad()


@torch.no_grad()
def score_pairs(bundle: ClipBundle, pairs: Sequence[Pair], store: ImageStore) -> dict[str, np.ndarray]:
    """Eval-transform scores of every pair: cosine, logit and probability (each image and text once)."""
    r = CLIPReward(bundle, cache_size=len(pairs) + 1)
    cos = r.similarity([store[p.image_path] for p in pairs], [p.text for p in pairs])
    prob = r.to_probability(cos)
    return {"cos": cos.cpu().numpy(), "prob": prob.cpu().numpy(),
            "label": np.array([p.label for p in pairs], dtype=int)}


def auroc_of(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def bce_of(scores: Mapping[str, np.ndarray]) -> float:
    p = np.clip(scores["prob"], 1e-7, 1 - 1e-7)
    y = scores["label"]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
