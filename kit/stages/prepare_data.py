"""Notebook 00, data part: generate the toy datasets when the profile has no real roots, check every
split through the real loaders, draw the data figures, record metrics.json["prepare"]["datasets"]."""
from __future__ import annotations

import time
from pathlib import Path

from kit import runs
from kit.data import DataError, bdd_oia, coda_lm, toyworld
from kit.data.check import check_dataset
from kit.data.figures import figures_from_run


def _bdd_splits(root: Path) -> list[str]:
    return [s for s in bdd_oia.SPLITS if (root / f"{s}_25k_images_actions.json").exists()]


def run_prepare_data(P: dict, run_dir) -> dict:
    rd = runs.resolve_run_dir(run_dir)
    t0 = time.perf_counter()
    data = P["data"]
    out = runs.stage_dir(rd, "prepare") / "data"
    toy_cfg = data["toy"]
    generated, roots, skipped = {}, {}, {}
    tracks = set(P.get("tracks") or ("A", "B"))
    # Each dataset belongs to a track. Toy data (no root given) is always generated whole: the tiny
    # models pretrain on the toy world's captions. A real root is checked only when its track runs,
    # so a Track B user needs no CODA-LM download, and vice versa.
    for name, track, generate in (("bdd_oia", "B", toyworld.generate_bdd_oia),
                                  ("coda_lm", "A", toyworld.generate_coda_lm)):
        given = data.get(f"{name}_root")
        if not given:
            roots[name] = out / name
            generated[name] = generate(roots[name], toy_cfg)
        elif track not in tracks:
            skipped[name] = f"track {track} not selected (params tracks: {sorted(tracks)})"
            continue
        else:
            roots[name] = Path(given).expanduser().resolve()
            if not roots[name].is_dir():
                raise DataError(f"params data.{name}_root: {roots[name]} is not a folder; expected the dataset root "
                                "(layouts in kit/data/bdd_oia.py and kit/data/coda_lm.py), or run the other track alone "
                                "(kit run --track A|B)")
    broot, croot = roots.get("bdd_oia"), roots.get("coda_lm")
    bsplits = _bdd_splits(broot) if broot else []
    csplits = coda_lm.splits_present(croot) if croot else []
    if broot and not bsplits:
        raise DataError(f"{broot}: no <split>_25k_images_actions.json; expected the BDD-OIA layout")
    caps = data.get("max_samples") or {}
    sizes = {"bdd_oia": {}, "coda_lm": {}}
    checks = {}
    for sp in bsplits:
        if data.get("check_on_prepare", True):
            checks[f"bdd_oia/{sp}"] = check_dataset("bdd-oia", broot, sp)
        st = bdd_oia.load_split(broot, sp, max_samples=caps.get(sp)).stats
        sizes["bdd_oia"][sp] = st["samples"]
        checks.setdefault(f"bdd_oia/{sp}", st)
    for sp in csplits:
        if data.get("check_on_prepare", True):
            checks[f"coda_lm/{sp}"] = check_dataset("coda-lm", croot, sp)
        else:
            checks[f"coda_lm/{sp}"] = coda_lm.load_split(croot, sp).stats
        sizes["coda_lm"][sp] = checks[f"coda_lm/{sp}"]["samples"]
    runs.write_json(runs.stage_dir(rd, "prepare") / "data_check.json", checks)
    keep = ("samples", "skipped_missing_image", "dropped_confusing", "multi_frame", "regions")
    metrics = {"bdd_oia_root": str(broot) if broot else None, "coda_lm_root": str(croot) if croot else None,
               "sizes": sizes, "skipped": skipped,
               "toy": {"bdd_oia": "bdd_oia" in generated, "coda_lm": "coda_lm" in generated},
               "check": {k: {f: v[f] for f in keep if f in v} for k, v in checks.items()},
               "generated": generated}
    runs.record_metrics(rd, "prepare", {"datasets": metrics})

    figs = figures_from_run(rd)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    runs.record_metrics(rd, "prepare", {"datasets": {"seconds": metrics["seconds"]}})
    return {**metrics, "figures": [str(f) for f in figs]}
