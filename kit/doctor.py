"""`kit doctor`: one table before a long run, each row one check (ok, warn or BLOCKER), each blocker with a
one-line fix; `kit doctor` exits 1 when a row is a BLOCKER.

Each check is a small function that reads the resolved profile and returns a `Row` (or a list of them), so
the tests call them one by one and the CLI prints what `doctor()` collects:

- `check_torch`, `check_gpu`: torch's version and CUDA build; the GPUs torch sees (name, total and free memory).
- `check_bitsandbytes`: its version and whether a 4-bit layer (8-bit too when the profile asks for it) runs a
  forward and backward pass on the profile's device here (a 64x64 layer, against the unquantized one). It
  asks the installed version rather than assuming: bitsandbytes 0.45+ has a CPU backend. models.quantization
  set where that fails is a blocker; so is quantization without models.lora.enabled (kit.models.vlm.lora_config).
- `check_device`: the profile's device and precision as kit.models.device.model_spec resolves them
  (device: cuda with no GPU visible, or bf16 on a GPU without it, is a blocker).
- `check_models`: every model the profile names, resolved without the network the way kit.models resolves
  it: `tiny` (built by notebook 00: always there), a local folder (must hold config.json or
  adapter_config.json), a hub id (must be in the local Hugging Face cache; if it is not, the run can only
  download it when the hub is reachable: a warning then, a blocker otherwise), the CLIP's open_clip name and
  pretrained tag (its weights file in the cache) or weights file, Track A's captioner and SAM checkpoint.
- `check_data`: each real data root through `kit data check`'s own code (kit.data.check.check_dataset, every
  image opened), one summary per split; a null root means the toy world, which notebook 00 generates. The
  synthesis pool (synth.pool_dir) through kit.synth.pipeline.pool_images.
- `check_disk`: free space where the run folder goes against the run's expected size (`expected_run_size`).
- `check_gpu_memory`: the GPU's memory against a rough rule of thumb (`gpu_memory_estimate`).
- `check_judge`, `check_writer`: the LLM backends' settings and $OPENAI_API_KEY (never its value); with
  `probe=True` (`kit doctor --check-judge`) one small chat request to the judge's endpoint.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from kit import runs
from kit.params import PROJECT_ROOT

OK, WARN, BLOCKER = "ok", "warn", "BLOCKER"
GiB = 1024 ** 3


@dataclass(frozen=True)
class Row:
    """One line of the table: what was checked, ok / warn / BLOCKER, what was found, and (for a
    BLOCKER, sometimes a warning) the one line that fixes it."""
    check: str
    status: str
    detail: str
    fix: str = ""


def _size(n: float) -> str:
    for unit, k in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def _tracks(P: Mapping) -> set[str]:
    return set(P.get("tracks") or ("A", "B"))


# -- 1. torch, the GPU, bitsandbytes, device and precision -----------------------------------------------------

def check_torch() -> Row:
    import torch

    cuda = torch.version.cuda
    return Row("torch", OK, f"{torch.__version__} ({f'built with CUDA {cuda}' if cuda else 'CPU-only build'})")


def check_gpu() -> Row:
    import torch

    if not torch.cuda.is_available():
        return Row("gpu", OK, "no CUDA GPU visible: CPU only")
    parts = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, _ = torch.cuda.mem_get_info(i)
        parts.append(f"cuda:{i} {props.name}, {_size(props.total_memory)} total, {_size(free)} free")
    return Row("gpu", OK, "; ".join(parts))


def _spec(P: Mapping):
    """model_spec(P), or None where the profile's device cannot be had here (check_device says why)."""
    from kit.models.device import model_spec

    try:
        return model_spec(P)
    except RuntimeError:
        return None


def check_device(P: Mapping) -> Row:
    import torch

    from kit.models.device import model_spec

    want, prec = P.get("device", "auto"), P.get("precision", "auto")
    try:
        spec = model_spec(P)
    except RuntimeError:
        return Row("device", BLOCKER, f"device: {want} requested, but no CUDA GPU is visible here",
                   "run on a machine with a GPU, or --set device=cpu (slow: real models take days on a CPU)")
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[spec.dtype]
    detail = f"{spec.device} {dtype} (profile: device {want}, precision {prec})"
    if spec.device.type == "cuda" and spec.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return Row("device", BLOCKER, f"{detail}: this GPU has no bf16", "--set precision=fp16")
    vlm = str(spec.vlm.get("name") or "tiny")
    if spec.device.type == "cpu" and vlm == "realsize":
        return Row("device", OK, f"{detail}: the real model's shapes on a handful of samples, minutes a stage")
    if spec.device.type == "cpu" and vlm != "tiny":
        return Row("device", WARN, f"{detail}: the real VLM {vlm} on a CPU (hours to days a stage)",
                   "run on a machine with a GPU (device auto or cuda)")
    return Row("device", OK, detail)


def _bnb_probe(bnb, bits: int, device) -> str | None:
    """None when a `bits`-bit bitsandbytes layer runs forward and backward on `device` and answers close to
    the unquantized layer; else what went wrong."""
    import torch

    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 64)
    if bits == 4:
        q = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        q.support_avx512bf16_for_cpu = False  # as kit.models.vlm loads it (no repacking on a CPU)
    else:
        q = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
    try:
        q.load_state_dict(ref.state_dict())
        q = q.to(device)  # bitsandbytes quantizes here
        x = torch.randn(4, 64, device=device, requires_grad=True)
        y = q(x)
        y.float().sum().backward()  # QLoRA's gradient flows through the frozen quantized layer
        with torch.no_grad():
            want = ref.to(device)(x).float()
            err = float((y.float() - want).abs().max() / want.abs().max())
    except Exception as e:  # whatever the backend raises: the row says it
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if not (torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()):
        return "non-finite output or gradient"
    if err > 0.5:
        return f"output far from the unquantized layer's (max error {err:.2f} of its largest value)"
    return None


def check_bitsandbytes(P: Mapping) -> Row:
    import torch

    q = (P.get("models") or {}).get("quantization")
    q = None if q in (None, "", "none") else q
    lora = bool(((P.get("models") or {}).get("lora") or {}).get("enabled"))
    spec = _spec(P)
    device = spec.device if spec is not None else torch.device("cpu")
    where = f"{device}" + ("" if spec is not None else " (the profile's device is not available; tried the CPU)")
    try:
        import bitsandbytes as bnb
    except Exception as e:
        version, fails = None, {4: f"not importable ({type(e).__name__}: {e})"}
    else:
        version = bnb.__version__
        bits = [4] + ([8] if q == "8bit" else [])
        fails = {b: _bnb_probe(bnb, b, device) for b in bits}
    said = "; ".join(f"{b}-bit {'works' if not fails[b] else 'fails (' + fails[b] + ')'} on {where}" for b in fails)
    detail = f"{version or 'not installed'}: {said}"
    if q is None:
        return Row("bitsandbytes", OK, f"{detail}; not used (models.quantization null)")
    need = 4 if q == "4bit" else 8
    if fails.get(need):
        return Row("bitsandbytes", BLOCKER, f"{detail}; models.quantization={q} cannot run here",
                   "--set models.quantization=null (full-precision LoRA, more GPU memory), or run where "
                   f"bitsandbytes supports {need}-bit on this device")
    if not lora:
        return Row("bitsandbytes", BLOCKER, f"{detail}; models.quantization={q} but models.lora.enabled is false "
                   "(quantized weights train only through a LoRA adapter)", "--set models.lora.enabled=true")
    return Row("bitsandbytes", OK, f"{detail}; used: models.quantization={q} (QLoRA)")


# -- 2. the models --------------------------------------------------------------------------------------------

@dataclass
class Weights:
    """What the safetensors headers of a model folder say: parameters, bytes on disk, and the 2-D weight
    shapes by tensor name (for the LoRA and quantization parts of the estimates)."""
    folder: Path | None
    params: int | None
    disk_bytes: int
    shapes: dict


def weights_in(folder: Path) -> Weights:
    """Read the parameter count from the folder's *.safetensors headers (no weights are loaded);
    `params` is None when it holds only other formats."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    disk = sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        return Weights(folder, None, disk, {})
    n, shapes = 0, {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                shape = h.get_slice(k).get_shape()
                n += math.prod(shape)
                if len(shape) == 2:
                    shapes[k] = tuple(shape)
    return Weights(folder, n, disk, shapes)


def _hub_snapshot(model_id: str, marker: str = "config.json") -> Path | None:
    """The cached snapshot folder of a hub repo (from its `marker` file), or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(model_id, marker)
    except Exception:  # an id the hub client refuses (bad characters): not in any cache
        return None
    return Path(hit).parent if isinstance(hit, str) else None


_hub_state: dict = {}


def _hub_reachable() -> bool:
    """kit.models.vlm's check (HF_HUB_OFFLINE, else a 3-second TCP connect), asked once per process."""
    from kit.models.vlm import _hub_reachable as reachable

    if "up" not in _hub_state:
        _hub_state["up"] = reachable()
    return _hub_state["up"]


def _download_fix(model_id: str, key: str, files: str = "") -> str:
    return (f"download it with `huggingface-cli download {model_id}{' ' + files if files else ''}` (or `hf download`) "
            f"on a machine with hub access and copy the Hugging Face cache here, or point {key} at a local folder")


def vlm_row(name: str, key: str, run_dir, what: str = "vlm") -> tuple[Row, Weights | None]:
    """A VLM the profile names (`tiny`, a local folder or a hub id), resolved as kit.models.vlm resolves it,
    without the network; and its weights where they are here."""
    from kit.models.vlm import BUILT, _is_model_dir, _looks_like_path, tiny_vlm_dir

    if name in BUILT:
        d = tiny_vlm_dir(run_dir)
        if _is_model_dir(d):
            return Row(what, OK, f"{key}={name}: built by notebook 00, in {d}"), weights_in(d)
        return Row(what, OK, f"{key}={name}: notebook 00 builds it (not built in this run folder yet)"), None
    p = Path(name).expanduser()
    if p.exists() or _looks_like_path(name):
        if not _is_model_dir(p):
            why = "no such folder" if not p.exists() else "no config.json or adapter_config.json there"
            return Row(what, BLOCKER, f"{key}={name!r}: {why}",
                       f"point {key} at a model folder (`hf download MODEL_ID --local-dir PATH` makes one)"), None
        w = weights_in(p)
        return Row(what, OK, f"{key}={name!r}: local folder, {_size(w.disk_bytes)} of weights{_params(w)}"), w
    snap = _hub_snapshot(name)
    if snap is not None:
        w = weights_in(snap)
        if not w.disk_bytes:
            return Row(what, BLOCKER, f"{key}={name!r}: its config is in the local Hugging Face cache but no weights "
                       f"({snap}; an interrupted download?)", _download_fix(name, key)), None
        return Row(what, OK, f"{key}={name!r}: in the local Hugging Face cache, {_size(w.disk_bytes)}{_params(w)}"), w
    if _hub_reachable():
        return Row(what, WARN, f"{key}={name!r}: not in the local Hugging Face cache; the hub is reachable, so the "
                   "run downloads it at first use", f"download it now: `huggingface-cli download {name}`"), None
    return Row(what, BLOCKER, f"{key}={name!r}: not in the local Hugging Face cache, and the hub cannot be reached "
               "from here (or HF_HUB_OFFLINE is set)", _download_fix(name, key)), None


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _params(w: Weights) -> str:
    return f", {_count(w.params)} parameters" if w.params else ""


def _open_clip_weights(name: str, tag: str) -> tuple[list[Path], str, str]:
    """(where open_clip would find the `tag` weights of `name` here: cached files, the repo or URL it
    downloads them from, the files to ask for)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("hf_hub"):  # open_clip prefers the hub (and huggingface_hub is installed with the kit)
        repo, fname = os.path.split(cfg["hf_hub"])  # 'org/name/' is the repo with open_clip's default file
        fname = fname or HF_WEIGHTS_NAME
        names = [HF_SAFE_WEIGHTS_NAME] if fname == HF_WEIGHTS_NAME else \
            [fname[:-4] + ".safetensors"] if fname.endswith((".bin", ".pth")) else []
        names.append(fname)
        from huggingface_hub import try_to_load_from_cache

        found = [Path(h) for f in names if isinstance(h := try_to_load_from_cache(repo, f), str)]
        return found, repo, names[0]
    url = cfg.get("url", "")
    f = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return ([f] if url and f.is_file() else []), url, ""


def check_clip(P: Mapping) -> Row:
    clip = (P.get("models") or {}).get("clip") or {}
    name, pre = clip.get("name") or "tiny", clip.get("pretrained")
    key = "models.clip"
    if name == "tiny":
        return Row("clip", OK, f"{key}.name=tiny: notebook 00 builds it")
    import open_clip

    from kit.models.clip import register_tiny_clip

    register_tiny_clip()
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        if _hub_snapshot(repo, "open_clip_config.json") is not None:
            return Row("clip", OK, f"{key}.name={name!r}: in the local Hugging Face cache")
        return Row("clip", WARN if _hub_reachable() else BLOCKER,
                   f"{key}.name={name!r}: not in the local Hugging Face cache", _download_fix(repo, f"{key}.name"))
    if open_clip.get_model_config(name) is None:
        return Row("clip", BLOCKER, f"{key}.name={name!r}: open_clip knows no such model",
                   "set models.clip.name to one of open_clip.list_models() (e.g. ViT-B-32), or tiny")
    if not pre:
        return Row("clip", WARN, f"{key}.name={name!r} with pretrained null: randomly initialized weights",
                   "set models.clip.pretrained to a tag (e.g. openai) or a weights file")
    if Path(str(pre)).expanduser().is_file():
        size = _size(Path(str(pre)).expanduser().stat().st_size)
        return Row("clip", OK, f"{key}: {name} with weights file {pre} ({size})")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pre not in tags:
        return Row("clip", BLOCKER, f"{key}.pretrained={pre!r}: neither a file nor a pretrained tag of {name}",
                   f"set models.clip.pretrained to an existing weights file or one of: {', '.join(tags) or 'none'}")
    found, source, fname = _open_clip_weights(name, pre)
    if found:
        return Row("clip", OK, f"{key}: {name} / {pre}: weights cached ({found[0]}, {_size(found[0].stat().st_size)})")
    if not fname:  # a URL, not the hub
        return Row("clip", WARN, f"{key}: {name} / {pre}: not cached; open_clip downloads it from {source} at "
                   "first use",
                   "download it now on a machine with access, and set models.clip.pretrained to the file")
    fix = (f"download it with `huggingface-cli download {source} {fname}` on a machine with hub access and copy the "
           "Hugging Face cache here, or set models.clip.pretrained to the weights file")
    if _hub_reachable():
        return Row("clip", WARN, f"{key}: {name} / {pre}: not in the local Hugging Face cache ({source}); the hub "
                   "is reachable, so the run downloads it at first use", fix)
    return Row("clip", BLOCKER, f"{key}: {name} / {pre}: weights not in the local Hugging Face cache ({source}), and "
               "the hub cannot be reached from here (or HF_HUB_OFFLINE is set)", fix)


def check_sam(P: Mapping) -> Row | None:
    """Track A's SAM checkpoint, when synth.regions.backend is sam."""
    reg = ((P.get("synth") or {}).get("regions") or {})
    if "A" not in _tracks(P) or reg.get("backend") != "sam":
        return None
    ck, kind = reg.get("sam_checkpoint"), reg.get("sam_model") or "vit_b"
    fix = (f"set synth.regions.sam_checkpoint to the SAM {kind} checkpoint file (segment-anything's release, e.g. "
           "sam_vit_h_4b8939.pth), or --set synth.regions.backend=classical")
    if not ck:
        return Row("sam", BLOCKER, "synth.regions.backend=sam but synth.regions.sam_checkpoint is null", fix)
    p = Path(str(ck)).expanduser()
    if not p.is_file():
        return Row("sam", BLOCKER, f"synth.regions.sam_checkpoint={str(ck)!r}: no such file", fix)
    return Row("sam", OK, f"synth.regions.sam_checkpoint: {p} ({_size(p.stat().st_size)})")


def check_models(P: Mapping, run_dir) -> list[Row]:
    """The VLM, the CLIP, Track A's captioner (synth.caption.model, when set) and SAM checkpoint."""
    vlm = str(((P.get("models") or {}).get("vlm") or {}).get("name") or "tiny")
    rows = [vlm_row(vlm, "models.vlm.name", run_dir)[0], check_clip(P)]
    cap = (((P.get("synth") or {}).get("caption") or {}).get("model"))
    if cap and "A" in _tracks(P):
        rows.append(vlm_row(str(cap), "synth.caption.model", run_dir, what="captioner")[0])
    sam = check_sam(P)
    return rows + ([sam] if sam else [])


# -- 3. data --------------------------------------------------------------------------------------------------

def check_data(P: Mapping, run_dir, progress: bool = False) -> list[Row]:
    """Each dataset root the profile sets, checked by kit.data.check.check_dataset (kit data check) split by
    split: BDD-OIA's train, val and test (every Track B stage reads one), CODA-LM's coda.train_split,
    coda.eval_split and any other split there (notebook 00 checks every split present). A null root is the
    toy world, which notebook 00 generates; a root whose track is not selected is not read."""
    from kit.data import DataError, bdd_oia, coda_lm
    from kit.data.check import check_dataset

    data, tracks, rows = P.get("data") or {}, _tracks(P), []
    for name, kind, track in (("bdd_oia", "bdd-oia", "B"), ("coda_lm", "coda-lm", "A")):
        check, given = f"data {name}", data.get(f"{name}_root")
        if not given:
            rows.append(Row(check, OK, f"data.{name}_root null: the toy world (notebook 00 generates it)"))
            continue
        if track not in tracks:
            rows.append(Row(check, OK, f"data.{name}_root set, but track {track} is not selected: not read"))
            continue
        root, other = Path(str(given)).expanduser().resolve(), "A" if track == "B" else "B"
        if not root.is_dir():
            rows.append(Row(check, BLOCKER, f"data.{name}_root={given}: not a folder",
                            f"--set data.{name}_root=<the dataset's folder> (kit data check {kind} ROOT --split S "
                            f"checks it), or run the other track alone (--set tracks=[{other}])"))
            continue
        if name == "bdd_oia":
            splits = list(bdd_oia.SPLITS)
        else:
            coda = P.get("coda") or {}
            splits = list(dict.fromkeys([coda.get("train_split", "Train"), coda.get("eval_split", "Test"),
                                         *coda_lm.splits_present(root)]))
        said, bad = [], []
        for sp in splits:
            try:
                s = check_dataset(kind, root, sp, progress=progress)
            except (DataError, FileNotFoundError) as e:
                bad.append(f"{sp}: {e}")
                continue
            if not s.get("samples"):
                counts = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, int))
                bad.append(f"{sp}: 0 usable samples ({counts})")
                continue
            extra = f", {s['regions']} regions" if "regions" in s else ""
            skipped = f", {s['skipped_missing_image']} skipped (no image)" if s.get("skipped_missing_image") else ""
            said.append(f"{sp} {s['samples']} samples{extra}{skipped}")
        if bad:
            rows.append(Row(check, BLOCKER, f"{root}: " + "; ".join(bad + said),
                            f"fix the files named (layout in kit/data/{name}.py), then `kit data check {kind} {root} "
                            f"--split SPLIT`"))
        else:
            rows.append(Row(check, OK, f"{root}: " + ", ".join(said) + " (every image opened)"))
    if "A" in tracks:
        rows.append(_check_pool(P, run_dir))
    return rows


def _check_pool(P: Mapping, run_dir) -> Row:
    from kit.data import DataError
    from kit.synth.pipeline import pool_images

    s = P.get("synth") or {}
    if not s.get("pool_dir") and not (P.get("data") or {}).get("coda_lm_root"):
        return Row("data synth pool", OK,
                   "synth.pool_dir null: the toy world's unlabeled pool (notebook 00 generates it)")
    try:
        files = pool_images(P, run_dir)
    except DataError as e:
        return Row("data synth pool", BLOCKER, str(e),
                   "--set synth.pool_dir=<a folder of your unlabeled .jpg/.png driving images>")
    return Row("data synth pool", OK, f"{files[0].parent}: {len(files)} images")


# -- 4. disk --------------------------------------------------------------------------------------------------

def _tree_bytes(d: Path) -> int:
    n = 0
    for dirpath, _, files in os.walk(d):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, f)):
                n += st.st_size
    return n


def finished_runs(profile: str, runs_root: Path, depth: int = 3) -> list[Path]:
    """Run folders under `runs_root` (to `depth` levels: runs/<name>, runs/sweeps/<profile>/<combination>)
    whose manifest.json names `profile` and says the run finished."""
    out = []
    base = len(runs_root.parts)
    for dirpath, dirnames, files in os.walk(runs_root):
        here = Path(dirpath)
        if "manifest.json" in files:
            try:
                m = runs.read_json(here / "manifest.json", default=None)
            except ValueError:  # a torn manifest: not a finished run
                m = None
            if isinstance(m, dict) and m.get("profile") == profile and m.get("finished"):
                out.append(here)
            dirnames[:] = []  # a run folder's own folders hold no other runs
        elif len(here.parts) - base >= depth:
            dirnames[:] = []
    return out


def _vlm_weights(P: Mapping, run_dir) -> Weights | None:
    name = str(((P.get("models") or {}).get("vlm") or {}).get("name") or "tiny")
    w = vlm_row(name, "models.vlm.name", run_dir)[1]
    if w is None and name == "tiny":
        return tiny_weights(P)
    if w is None and name == "realsize":
        return realsize_weights()
    return w


def realsize_weights() -> Weights:
    """The `realsize` VLM notebook 00 would build (SmolVLM-256M-Instruct's configuration), counted on the
    meta device."""
    from kit.models.realsize import meta_model

    return _meta_weights(meta_model())


def _meta_weights(model) -> Weights:
    """Weights of a model built on the meta device: its parameter count, fp32 bytes, 2-D shapes."""
    sd = model.state_dict()
    n = sum(v.numel() for v in sd.values())
    return Weights(None, n, n * 4, {k: tuple(v.shape) for k, v in sd.items() if v.dim() == 2})


def tiny_weights(P: Mapping) -> Weights:
    """The tiny VLM notebook 00 would build from the profile's models.vlm.tiny, counted on the meta device
    (no memory, no tokenizer). Its vocabulary is taken at models.vlm.tiny.vocab_size, the tokenizer's cap: the
    toy world's BPE stops near 770 tokens, so this overcounts the default tiny VLM by about a sixth (3.2M
    against 2.7M). The configuration mirrors kit.models.tiny_vlm.build_tiny_vlm; tests/test_doctor.py
    checks that the two agree at the same vocabulary."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    from kit.models.tiny_vlm import TINY_DEFAULTS

    vp = (P.get("models") or {}).get("vlm") or {}
    c = {**TINY_DEFAULTS, **{k: v for k, v in (vp.get("tiny") or {}).items() if v is not None}}
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
                     "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_layers"],
                     "num_attention_heads": c["num_heads"], "num_key_value_heads": c["num_heads"],
                     "max_position_embeddings": 1024, "tie_word_embeddings": False},
        vision_config={"hidden_size": c["vision_hidden_size"], "intermediate_size": c["vision_intermediate_size"],
                       "num_hidden_layers": c["vision_layers"], "num_attention_heads": c["vision_heads"],
                       "image_size": int(vp.get("image_size") or 64), "patch_size": c["patch_size"]},
        scale_factor=c["scale_factor"], tie_word_embeddings=False)
    with torch.device("meta"):
        return _meta_weights(Idefics3ForConditionalGeneration(config))


def lora_params(P: Mapping, w: Weights) -> int:
    """LoRA's parameters on these weights: r x (in + out) for every 2-D weight of a module named in
    models.lora.target_modules (peft's suffix match)."""
    lp = (P.get("models") or {}).get("lora") or {}
    r, targets = int(lp.get("r") or 16), set(lp.get("target_modules") or [])
    n = 0
    for k, (out, inp) in w.shapes.items():
        parts = k.split(".")
        if parts[-1] == "weight" and len(parts) > 1 and parts[-2] in targets:
            n += r * (out + inp)
    return n


def _quantized(k: str) -> bool:
    """A weight bitsandbytes quantizes: a Linear's (2-D, not an embedding, not the output head)."""
    return k.endswith(".weight") and "embed" not in k and "lm_head" not in k


def _trainings(P: Mapping) -> list[tuple[str, int]]:
    """(training, checkpoint-* folders it keeps) for every VLM training the profile's tracks run; each also
    writes one final model. Epoch checkpoints where the stage saves each epoch (train_sft), one where
    save_total_limit is 1 (RLOO, each SPIN round)."""
    tr, out = _tracks(P), []

    def epochs(section: str, key: str = "epochs", saves: bool = True) -> int:
        return math.ceil(float(P[section][key])) if saves else 0

    if str(P["models"]["vlm"].get("name") or "tiny") == "tiny" and P["pretrain"].get("enabled", True):
        out.append(("prepare_vlm", epochs("pretrain", "vlm_epochs")))
    if "B" in tr:
        out.append(("sft_baseline", epochs("sft", saves=bool(P["sft"].get("save_each_epoch", True)))))
        out += [(f"rloo ({b})", 1) for b in ["rloo", *(P["rloo"].get("compare_baselines") or [])]]
        out.append(("action_sft", epochs("action_sft")))
    if "A" in tr:
        saves = bool(P["coda_sft"].get("save_each_epoch", True))
        out += [("coda_sft", epochs("coda_sft", saves=saves)), ("coda_sft_synth", epochs("coda_sft", saves=saves))]
        out += [(f"spin {v}", 1) for v in P["spin"]["variants"] for _ in range(int(P["spin"]["rounds"]))]
    return out


def expected_run_size(P: Mapping, run_dir, runs_root: Path | None = None) -> tuple[int | None, str]:
    """(bytes, how they were estimated).

    Measured when it can be: the largest finished run folder of the same profile under runs/ (its
    overrides may differ from this run's). Otherwise the VLM checkpoints the profile keeps: a checkpoint
    folder holds the trained weights and AdamW's two moments (3 x T), a final model T, where T is the
    whole model in its precision (4 bytes a parameter in fp32, 2 in bf16/fp16) for a full fine-tune, or the
    LoRA adapter in fp32 (4 bytes a LoRA parameter); the checkpoints per training are in `_trainings`. Data,
    figures, notebooks and CLIP checkpoints are not counted (on the tiny profile they are about a quarter
    of a finished run)."""
    runs_root = PROJECT_ROOT / "runs" if runs_root is None else Path(runs_root)
    found = [(d, _tree_bytes(d)) for d in finished_runs(P["profile"], runs_root)] if runs_root.is_dir() else []
    if found:
        d, n = max(found, key=lambda x: x[1])
        return n, f"measured, the size of {_shown(d)} (a finished run of profile {P['profile']})"
    w = _vlm_weights(P, run_dir)
    if w is None or not w.params:
        return None, "no finished run of this profile under runs/ and the VLM's parameters are unknown here"
    lora = bool(P["models"]["lora"].get("enabled"))
    spec = _spec(P)
    prec = 2 if spec is not None and spec.dtype.itemsize == 2 else 4
    per = lora_params(P, w) * 4 if lora else w.params * prec
    trainings = _trainings(P)
    ckpts = sum(c for _, c in trainings)
    n = ckpts * 3 * per + len(trainings) * per
    what = f"{_size(per)} LoRA adapter" if lora else f"{_size(per)} model"
    return n, (f"VLM checkpoints only, {ckpts} checkpoints x 3 x {what} + {len(trainings)} final models "
               "(no finished run of this profile under runs/ to measure)")


def _shown(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def check_disk(P: Mapping, run_dir, runs_root: Path | None = None) -> Row:
    """Free space at the run folder (its nearest existing parent) against what the run still needs: the
    expected size less what the folder already holds. Rule: BLOCKER when free < needed, warn when
    free < 1.5 x needed (the estimate is rough), else ok."""
    rd = runs.resolve_run_dir(run_dir)
    at = rd
    while not at.exists():
        at = at.parent
    free = shutil.disk_usage(at).free
    where = _shown(rd) if at == rd else f"{at} ({_shown(rd)} not made yet)"
    have = _tree_bytes(rd) if rd.is_dir() else 0
    est, how = expected_run_size(P, run_dir, runs_root)
    if est is None:
        return Row("disk", WARN, f"{_size(free)} free at {where}; expected size unknown ({how})")
    need = max(0, est - have)
    detail = (f"{_size(free)} free at {where}; the run needs ~{_size(need)}"
              + (f" ({_size(est)} expected, less {_size(have)} there already)" if have else "")
              + f"; estimate: {how}. Rule: BLOCKER when free < needed, warn when free < 1.5 x needed")
    if free < need:
        return Row("disk", BLOCKER, detail, "free some space there, or --run-dir on a disk with room")
    if free < 1.5 * need:
        return Row("disk", WARN, detail, "free some space there, or --run-dir on a disk with room")
    return Row("disk", OK, detail)


# -- 5. GPU memory --------------------------------------------------------------------------------------------

def gpu_memory_estimate(P: Mapping, w: Weights) -> tuple[float, float, str]:
    """(lower bound, estimate, formula) in bytes: a rough rule of thumb from the VLM's parameter count,
    not a measurement (none exists per stage yet).

        weights   = Q x q + (N - Q) x b      N parameters, Q of them in Linear layers (quantized ones);
                                             b = 2 (bf16/fp16) or 4 (fp32); q = 0.5 (4bit), 1 (8bit), else b
        trainable = N x 3b                   full fine-tune: gradients and AdamW's two moments in the weights' dtype
                  = L x 16                   LoRA: L adapter parameters in fp32, with gradient and two moments
        reference = weights                  full fine-tune with a frozen reference copy (SPIN's DPO; RLOO with
                                             beta > 0); 0 with LoRA (the reference is the base, adapter off)
        estimate  = 1.2 x (weights + trainable + reference) + 1 GiB   (activations, generation, CUDA context)

    The lower bound is the weights alone."""
    spec = _spec(P)
    b = 2 if spec is not None and spec.dtype.itemsize == 2 else 4
    qz = (P.get("models") or {}).get("quantization")
    q = {"4bit": 0.5, "8bit": 1}.get(qz, b)
    n = w.params or 0
    nq = sum(math.prod(s) for k, s in w.shapes.items() if _quantized(k))
    weights = nq * q + (n - nq) * b
    lora = bool(P["models"]["lora"].get("enabled"))
    trainable = lora_params(P, w) * 16 if lora else n * 3 * b
    tr = _tracks(P)
    ref = 0 if lora else weights if ("A" in tr or ("B" in tr and float(P["rloo"].get("beta") or 0) > 0)) else 0
    est = 1.2 * (weights + trainable + ref) + GiB
    formula = (f"1.2 x (weights {_size(weights)} + trainable {_size(trainable)}"
               f"{' + reference ' + _size(ref) if ref else ''}) + 1 GiB")
    return weights, est, formula


def check_gpu_memory(P: Mapping, run_dir) -> Row:
    import torch

    if not torch.cuda.is_available():
        return Row("gpu memory", OK, "no GPU")
    total = torch.cuda.get_device_properties(0).total_memory
    w = _vlm_weights(P, run_dir)
    if w is None or not w.params:
        return Row("gpu memory", WARN, f"{_size(total)} on cuda:0; the VLM's parameter count is unknown here "
                   "(no safetensors weights to read), no estimate")
    low, est, formula = gpu_memory_estimate(P, w)
    detail = (f"{_size(total)} on cuda:0; rough rule of thumb for {_count(w.params)} parameters: ~{_size(est)} = "
              f"{formula}. Rule: BLOCKER when the weights alone do not fit, warn above 90%")
    if low > total:
        return Row("gpu memory", BLOCKER, detail,
                   "--set models.quantization=4bit --set models.lora.enabled=true, or a larger GPU")
    if est > 0.9 * total:
        return Row("gpu memory", WARN, detail, "if a stage runs out of memory: smaller batch_size with a larger "
                   "grad_accum, models.lora.enabled=true, or models.quantization=4bit")
    return Row("gpu memory", OK, detail)


# -- 6. the judge (and Track A's writer) ----------------------------------------------------------------------

def _key_set() -> bool:
    from kit.judge.openai_judge import KEY_ENV

    return bool((os.environ.get(KEY_ENV) or "").strip())


def probe_openai(base_url: str | None, model: str, timeout: float, max_tokens: int | None = None) -> str | None:
    """Send one small chat request (no retries); None when a chat completion came back, else what failed
    (the key never appears in it)."""
    import openai

    from kit.judge.openai_judge import KEY_ENV

    key = os.environ.get(KEY_ENV, "")
    client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
    kw = {"max_tokens": int(max_tokens)} if max_tokens else {}
    try:
        resp = client.chat.completions.create(model=model, temperature=0, **kw,
                                              messages=[{"role": "user", "content": "Reply with the word OK."}])
    except openai.APITimeoutError:
        err = f"no answer within {timeout:g} s"
    except openai.APIConnectionError as e:
        err = f"cannot connect ({e.__cause__ or e})"
    except openai.APIStatusError as e:
        err = f"HTTP {e.status_code}: {e.message}"
    else:
        if isinstance(getattr(resp, "choices", None), list):
            return None
        err = (f"the answer is no chat completion ({type(resp).__name__}); base_url should be the API "
               "(usually ends in /v1)")
    return err.replace(key, "<$" + KEY_ENV + ">") if key else err


def check_judge(P: Mapping, probe: bool = False, probe_timeout: float = 10.0) -> Row:
    """judge.backend; for openai its settings (kit.judge.openai_judge.OpenAIJudge's own checks) and
    $OPENAI_API_KEY (set or not, never its value); with `probe`, one small request (at most `probe_timeout`
    seconds, no retries): reachable or not."""
    from kit.judge.openai_judge import KEY_ENV, OpenAIJudge, _redacted

    j = P.get("judge") or {}
    backend = j.get("backend") or "rubric"
    if "A" not in _tracks(P):
        return Row("judge", OK, f"judge.backend={backend}: not used (track A not selected)")
    if backend != "openai":
        return Row("judge", OK, f"judge.backend={backend}: offline, no model"
                   + (" (nothing to reach)" if probe else ""))
    if not _key_set():
        return Row("judge", BLOCKER, f"judge.backend=openai but ${KEY_ENV} is not set (or empty)",
                   f"export {KEY_ENV}=... (a local server that checks no key: any dummy value)")
    timeout = min(float(j.get("timeout") or 60), probe_timeout)
    try:
        judge = OpenAIJudge(base_url=j.get("base_url"), model=j.get("model"), timeout=timeout, max_retries=0,
                            max_tokens=j.get("max_tokens"))
    except (ValueError, RuntimeError) as e:
        return Row("judge", BLOCKER, str(e), "set the judge setting it names (kit params explain judge)")
    where = f"judge.backend=openai, model {judge.model!r} at {judge.base_url}, ${KEY_ENV} set (value not shown)"
    if not probe:
        return Row("judge", OK, where + "; not contacted (--check-judge sends one request)")
    err = probe_openai(j.get("base_url"), judge.model, timeout, j.get("max_tokens"))
    if err is None:
        return Row("judge", OK, where + "; reachable: one request answered")
    return Row("judge", BLOCKER, f"{where}; not reachable: {err}",
               f"check judge.base_url, judge.model and ${KEY_ENV} against {_redacted(judge.base_url)}, "
               "then kit doctor --check-judge again")


def check_writer(P: Mapping) -> Row | None:
    """Track A's synthesis writer, when its backend is openai: its model and $OPENAI_API_KEY."""
    from kit.judge.openai_judge import KEY_ENV

    w = ((P.get("synth") or {}).get("writer") or {})
    if "A" not in _tracks(P) or w.get("backend") != "openai":
        return None
    if not w.get("model"):
        return Row("writer", BLOCKER, "synth.writer.backend=openai but synth.writer.model is null",
                   "--set synth.writer.model=<the model, e.g. gpt-4o-mini>")
    if not _key_set():
        return Row("writer", BLOCKER, f"synth.writer.backend=openai but ${KEY_ENV} is not set (or empty)",
                   f"export {KEY_ENV}=... (a local server that checks no key: any dummy value)")
    return Row("writer", OK, f"synth.writer.backend=openai, model {w['model']!r}, ${KEY_ENV} set (value not shown)")


# -- the whole table ------------------------------------------------------------------------------------------

def _safe(name: str, fn: Callable, *args, **kw) -> list[Row]:
    """A check's rows; a check that itself fails is a warning naming the error, not a crash of the table."""
    try:
        out = fn(*args, **kw)
    except Exception as e:
        return [Row(name, WARN, f"the check itself failed: {type(e).__name__}: {e}")]
    return [r for r in (out if isinstance(out, list) else [out]) if r is not None]


def doctor(P: Mapping, run_dir, *, check_judge_endpoint: bool = False, progress: bool = False,
           runs_root: Path | None = None) -> list[Row]:
    """Every row, in the table's order."""
    rows: list[Row] = []
    for name, fn, args in (("torch", check_torch, ()), ("gpu", check_gpu, ()), ("device", check_device, (P,)),
                           ("bitsandbytes", check_bitsandbytes, (P,)), ("models", check_models, (P, run_dir)),
                           ("data", check_data, (P, run_dir, progress)), ("disk", check_disk, (P, run_dir, runs_root)),
                           ("gpu memory", check_gpu_memory, (P, run_dir)),
                           ("judge", check_judge, (P, check_judge_endpoint)), ("writer", check_writer, (P,))):
        rows += _safe(name, fn, *args)
    return rows


def table(rows: Iterable[Row]) -> str:
    """The rows as plain text: check, status, detail (long details wrap under their column)."""
    import textwrap

    rows = list(rows)
    w0 = max(len("check"), *(len(r.check) for r in rows))
    w1 = max(len("status"), *(len(r.status) for r in rows))
    width = max(60, shutil.get_terminal_size((120, 24)).columns - w0 - w1 - 4)
    lines = [f"{'check':<{w0}}  {'status':<{w1}}  detail", f"{'-' * w0}  {'-' * w1}  {'-' * 6}"]
    for r in rows:
        wrapped = textwrap.wrap(r.detail, width, break_on_hyphens=False, break_long_words=False) or [""]
        lines.append(f"{r.check:<{w0}}  {r.status:<{w1}}  {wrapped[0]}")
        lines += [f"{'':<{w0}}  {'':<{w1}}  {x}" for x in wrapped[1:]]
    return "\n".join(lines)


def blockers(rows: Iterable[Row]) -> list[str]:
    """One line per blocker: what blocks, and its fix."""
    return [f"BLOCKER {r.check}: {r.fix}" for r in rows if r.status == BLOCKER]
