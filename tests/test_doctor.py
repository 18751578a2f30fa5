"""`kit doctor`: the table before a long run, its rows one by one (torch and the GPU, bitsandbytes, the device,
the models resolved offline, the data roots through kit data check, disk, GPU memory, the judge against a
local HTTP server) and its exit status."""
from __future__ import annotations

import io
import json
import secrets
import socket
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from kit import doctor as D
from kit.cli import main
from kit.params import load_profile

ROWS = ("torch", "gpu", "device", "bitsandbytes", "vlm", "clip", "data bdd_oia", "data coda_lm", "data synth pool",
        "disk", "gpu memory", "judge")
FIX = Path(__file__).parent / "fixtures"


def kit(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def row(rows, check: str) -> D.Row:
    found = [r for r in rows if r.check == check]
    assert len(found) == 1, [r.check for r in rows]
    return found[0]


def table_row(out: str, check: str) -> str:
    """The table line of `check` with its wrapped continuation lines, joined."""
    lines = out.splitlines()
    i = next(i for i, x in enumerate(lines) if x.split("  ")[0].strip() == check)
    got = [lines[i]]
    for x in lines[i + 1:]:
        if x.startswith(" "):
            got.append(x.strip())
        else:
            break
    return " ".join(got)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_tiny_profile_here_has_every_row_and_no_blocker(tmp_path):
    rc, out, err = kit("doctor", "--run-dir", str(tmp_path / "run"))
    assert rc == 0, out + err
    assert {check: table_row(out, check)[len(check):].split()[0] for check in ROWS} == dict.fromkeys(ROWS, "ok")
    assert "no blockers" in out and "blocker(s)" not in out
    assert "no GPU" in table_row(out, "gpu memory") or torch.cuda.is_available()
    assert "toy world" in table_row(out, "data bdd_oia")
    assert not (tmp_path / "run").exists()  # the doctor writes nothing


def test_cuda_requested_without_a_gpu_is_a_blocker_with_its_fix(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    rc, out, _ = kit("doctor", "--set", "device=cuda", "--run-dir", str(tmp_path / "run"))
    assert rc == 1
    assert "BLOCKER" in table_row(out, "device") and "device: cuda requested" in table_row(out, "device")
    assert "BLOCKER device: run on a machine with a GPU, or --set device=cpu" in out
    r = D.check_device(load_profile("tiny", ["device=cuda"]))
    assert r.status == D.BLOCKER and r.fix


def test_a_bad_key_goes_through_params_error():
    rc, out, err = kit("doctor", "--set", "models.vlm.nmae=x")
    assert rc == 2 and err.startswith("kit: ") and "nmae" in err and out == ""


# -- models ------------------------------------------------------------------------------------------------------

def test_hub_id_not_in_the_cache_is_a_blocker_naming_it_and_the_fix(tmp_path):
    model = "nobody-kit-doctor/no-such-vlm"
    rc, out, _ = kit("doctor", "--set", f"models.vlm.name={model}", "--run-dir", str(tmp_path / "run"))
    assert rc == 1
    line = table_row(out, "vlm")
    assert "BLOCKER" in line and model in line and "not in the local Hugging Face cache" in line
    assert f"BLOCKER vlm: download it with `huggingface-cli download {model}`" in out
    assert "point models.vlm.name at a local folder" in out


def _fake_hub_cache(cache: Path, repo: str, files: dict) -> Path:
    """A Hugging Face cache entry laid out as huggingface_hub writes one (refs/main -> snapshots/<commit>)."""
    commit = "0" * 40
    d = cache / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(commit)
    snap = d / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    return snap


def _save_weights(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 4),
               "model.layers.0.mlp.up_proj.weight": torch.zeros(6, 4),
               "model.embed_tokens.weight": torch.zeros(10, 4), "model.norm.weight": torch.zeros(4)}, str(path))


def test_hub_id_in_the_cache_and_local_folders(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "org/cached-vlm", {
        "config.json": lambda p: p.write_text("{}"), "model.safetensors": _save_weights})
    r, w = D.vlm_row("org/cached-vlm", "models.vlm.name", tmp_path / "run")
    assert r.status == D.OK and "in the local Hugging Face cache" in r.detail
    assert w.params == 8 * 4 + 6 * 4 + 10 * 4 + 4
    # a config without weights (an interrupted download) blocks
    _fake_hub_cache(tmp_path / "hub", "org/no-weights", {"config.json": lambda p: p.write_text("{}")})
    r, _ = D.vlm_row("org/no-weights", "models.vlm.name", tmp_path / "run")
    assert r.status == D.BLOCKER and "no weights" in r.detail
    # a local folder: it must hold a config
    folder = tmp_path / "my-vlm"
    folder.mkdir()
    r, _ = D.vlm_row(str(folder), "models.vlm.name", tmp_path / "run")
    assert r.status == D.BLOCKER and "no config.json" in r.detail and "models.vlm.name" in r.fix
    (folder / "config.json").write_text("{}")
    _save_weights(folder / "model.safetensors")
    r, w = D.vlm_row(str(folder), "models.vlm.name", tmp_path / "run")
    assert r.status == D.OK and "local folder" in r.detail and w.params == 100
    r, _ = D.vlm_row(str(tmp_path / "gone"), "models.vlm.name", tmp_path / "run")
    assert r.status == D.BLOCKER and "no such folder" in r.detail


def test_lora_parameters_and_the_gpu_memory_rule(tmp_path):
    w = D.Weights(None, 1_000_000_000, 0, {"m.layers.0.self_attn.q_proj.weight": (1000, 500),
                                           "m.layers.0.mlp.up_proj.weight": (2000, 500),
                                           "m.embed_tokens.weight": (30000, 500)})
    P = load_profile("tiny", ["precision=bf16", "models.lora.enabled=true", "models.lora.r=8",
                              "models.lora.target_modules=[q_proj]"])
    assert D.lora_params(P, w) == 8 * (1000 + 500)
    low, est, formula = D.gpu_memory_estimate(P, w)
    assert low == 1_000_000_000 * 2  # bf16, not quantized
    assert est == pytest.approx(1.2 * (low + 8 * 1500 * 16) + D.GiB) and "1.2 x (weights" in formula
    P4 = load_profile("tiny", ["precision=bf16", "models.lora.enabled=true", "models.quantization=4bit"])
    q = 1000 * 500 + 2000 * 500  # the two Linear weights; the embedding stays in bf16
    assert D.gpu_memory_estimate(P4, w)[0] == pytest.approx(q * 0.5 + (1_000_000_000 - q) * 2)
    full = load_profile("tiny", ["precision=bf16"])  # full fine-tune: gradients, two moments, a reference copy
    assert D.gpu_memory_estimate(full, w)[1] == pytest.approx(1.2 * (2e9 + 3 * 2e9 + 2e9) + D.GiB)


def test_gpu_memory_row_says_no_gpu_without_one(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert D.check_gpu_memory(load_profile("tiny"), tmp_path).detail == "no GPU"


def test_realsize_profile_runs_on_this_cpu_without_blockers(tmp_path):
    """params/realsize.yaml: the real shapes built offline by notebook 00, random ViT-B-32, 4-bit on the CPU."""
    rc, out, err = kit("doctor", "--profile", "realsize", "--run-dir", str(tmp_path / "run"))
    assert rc == 0, out + err
    assert "realsize: notebook 00 builds it" in table_row(out, "vlm")
    assert table_row(out, "device").split()[1] == "ok" and "minutes a stage" in table_row(out, "device")
    w = D.realsize_weights()  # SmolVLM-256M-Instruct's published size
    assert 255e6 < w.params < 260e6 and D.lora_params(load_profile("realsize"), w) > 0


def test_tiny_weights_count_what_notebook_00_builds(tmp_path):
    from kit.models.tiny_vlm import build_tiny_vlm

    texts = [f"a red car {i} turns left at the light, a pedestrian waits" for i in range(50)]
    d = build_tiny_vlm(tmp_path / "vlm", texts, image_size=64)
    built = D.weights_in(d)
    vocab = json.loads((d / "config.json").read_text())["text_config"]["vocab_size"]
    counted = D.tiny_weights(load_profile("tiny", [f"models.vlm.tiny.vocab_size={vocab}"]))
    assert counted.params == built.params and counted.shapes == built.shapes


def test_clip_name_and_tag_resolved_offline():
    assert D.check_clip(load_profile("tiny")).status == D.OK
    r = D.check_clip(load_profile("tiny", ["models.clip.name=ViT-Nope-1"]))
    assert r.status == D.BLOCKER and "open_clip knows no such model" in r.detail
    r = D.check_clip(load_profile("tiny", ["models.clip.name=ViT-B-32", "models.clip.pretrained=no-such-tag"]))
    assert r.status == D.BLOCKER and "openai" in r.fix
    r = D.check_clip(load_profile("tiny", ["models.clip.name=ViT-B-32", "models.clip.pretrained=openai"]))
    found, repo, fname = D._open_clip_weights("ViT-B-32", "openai")
    assert r.status == (D.OK if found else D.BLOCKER)  # HF_HUB_OFFLINE: not cached means not reachable either
    if not found:
        assert f"huggingface-cli download {repo} {fname}" in r.fix


# -- bitsandbytes --------------------------------------------------------------------------------------------------

def _bnb_4bit_works() -> tuple[str | None, bool]:
    """What the installed bitsandbytes says, asked independently of kit.doctor: its version, and whether a
    4-bit layer quantizes and runs forward on the CPU."""
    try:
        import bitsandbytes as bnb
    except Exception:
        return None, False
    try:
        layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        ok = bool(torch.isfinite(layer(torch.randn(2, 16))).all())
    except Exception:
        ok = False
    return bnb.__version__, ok


def test_quantization_row_agrees_with_the_installed_bitsandbytes():
    version, works = _bnb_4bit_works()
    r = D.check_bitsandbytes(load_profile("tiny", ["models.quantization=4bit", "models.lora.enabled=true"]))
    assert r.status == (D.OK if works else D.BLOCKER), r
    assert (version or "not installed") in r.detail
    assert ("4-bit works on cpu" in r.detail) == works
    if not works:
        assert "models.quantization=null" in r.fix
    plain = D.check_bitsandbytes(load_profile("tiny"))
    assert plain.status == D.OK and "not used" in plain.detail  # the tiny profile does not quantize
    no_lora = D.check_bitsandbytes(load_profile("tiny", ["models.quantization=4bit"]))
    assert no_lora.status == D.BLOCKER
    if works:
        assert no_lora.fix == "--set models.lora.enabled=true"


# -- data ----------------------------------------------------------------------------------------------------------

def test_an_empty_data_root_is_a_blocker_from_the_layout_check(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, _ = kit("doctor", "--set", f"data.bdd_oia_root={empty}", "--set", f"data.coda_lm_root={empty}",
                     "--set", f"synth.pool_dir={empty}", "--run-dir", str(tmp_path / "run"))
    assert rc == 1
    bdd, coda = table_row(out, "data bdd_oia"), table_row(out, "data coda_lm")
    assert "BLOCKER" in bdd and "train_25k_images_actions.json: file not found" in bdd
    assert "BLOCKER" in coda and "CODA-LM/Train: folder not found" in coda
    assert "BLOCKER data bdd_oia: fix the files named" in out
    assert "no .jpg/.jpeg/.png images" in table_row(out, "data synth pool")


def test_data_roots_checked_split_by_split(tmp_path):
    from kit.data import toyworld

    P = load_profile("tiny")
    cfg = {**P["data"]["toy"], "splits": {"train": 4, "val": 2, "test": 3},
           "coda_splits": {"Train": 2, "Val": 1, "Test": 2, "Mini": 1}, "coda_unlabeled": 3}
    toyworld.generate_bdd_oia(tmp_path / "bdd", cfg, progress=False)
    toyworld.generate_coda_lm(tmp_path / "coda", cfg, progress=False)
    P = load_profile("tiny", [f"data.bdd_oia_root={tmp_path / 'bdd'}", f"data.coda_lm_root={tmp_path / 'coda'}"])
    rows = D.check_data(P, tmp_path / "run")
    bdd, coda = row(rows, "data bdd_oia"), row(rows, "data coda_lm")
    assert bdd.status == D.OK and "train 4 samples, val 2 samples, test 3 samples" in bdd.detail
    assert coda.status == D.OK and "Train 2 samples" in coda.detail and "Mini 1 samples" in coda.detail
    assert row(rows, "data synth pool").status == D.OK  # the toy CODA-LM root has its unlabeled pool
    # the hand-made fixtures hold malformed files on purpose: each is named
    P = load_profile("tiny", [f"data.bdd_oia_root={FIX / 'bdd_oia'}", "tracks=[B]"])
    rows = D.check_data(P, tmp_path / "run")
    r = row(rows, "data bdd_oia")
    assert r.status == D.BLOCKER and "test_25k_images_actions.json: invalid JSON" in r.detail
    assert "data synth pool" not in [x.check for x in rows]  # track A not selected
    # a root whose track is not selected is not read
    P = load_profile("tiny", ["data.coda_lm_root=/nowhere", "tracks=[B]"])
    assert row(D.check_data(P, tmp_path / "run"), "data coda_lm").status == D.OK


# -- disk ----------------------------------------------------------------------------------------------------------

def test_disk_rule_and_the_measured_estimate(tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    P = load_profile("tiny")
    runs_root = tmp_path / "runs"
    done = runs_root / "old"
    done.mkdir(parents=True)
    (done / "manifest.json").write_text(json.dumps({"profile": "tiny", "finished": "2026-01-01T00:00:00"}))
    (done / "weights.bin").write_bytes(b"x" * 100_000)
    (runs_root / "other").mkdir()
    (runs_root / "other" / "manifest.json").write_text(json.dumps({"profile": "smolvlm", "finished": "x"}))
    est, how = D.expected_run_size(P, tmp_path / "new", runs_root)
    assert est == D._tree_bytes(done) and "measured" in how and "old" in how
    usage = namedtuple("usage", "total used free")
    for free, status in ((10 ** 9, D.OK), (120_000, D.WARN), (50_000, D.BLOCKER)):
        monkeypatch.setattr(D.shutil, "disk_usage", lambda p, f=free: usage(10 ** 12, 0, f))
        r = D.check_disk(P, tmp_path / "new", runs_root)
        assert r.status == status, r
        assert "Rule: BLOCKER when free < needed, warn when free < 1.5 x needed" in r.detail
    monkeypatch.setattr(D.shutil, "disk_usage", sh.disk_usage)
    # no finished run: the formula, from the VLM's parameters and the checkpoints the profile keeps
    est, how = D.expected_run_size(P, tmp_path / "new", tmp_path / "no-runs")
    assert est > 0 and "checkpoints" in how and "no finished run" in how


# -- the judge -----------------------------------------------------------------------------------------------------

def _completion(model: str = "judge-model") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def _openai_profile(url: str):
    return load_profile("tiny", ["judge.backend=openai", "judge.model=judge-model", f"judge.base_url={url}"])


def test_openai_judge_without_a_key_is_a_blocker(httpserver):
    r = D.check_judge(_openai_profile(httpserver.url_for("/v1")), probe=True)
    assert r.status == D.BLOCKER and "$OPENAI_API_KEY is not set" in r.detail and "export OPENAI_API_KEY" in r.fix
    assert len(httpserver.log) == 0  # nothing sent


def test_openai_judge_reachable_with_check_judge(httpserver, monkeypatch, tmp_path):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_json(_completion())
    url = httpserver.url_for("/v1")
    quiet = D.check_judge(_openai_profile(url))
    assert quiet.status == D.OK and "not contacted" in quiet.detail and len(httpserver.log) == 0
    rc, out, err = kit("doctor", "--set", "judge.backend=openai", "--set", "judge.model=judge-model",
                       "--set", f"judge.base_url={url}", "--check-judge", "--run-dir", str(tmp_path / "run"))
    assert rc == 0, out + err
    line = table_row(out, "judge")
    assert "reachable: one request answered" in line and "value not shown" in line
    assert key not in out + err
    (req, _), = httpserver.log
    assert req.headers["Authorization"] == f"Bearer {key}" and json.loads(req.get_data())["model"] == "judge-model"


def test_openai_judge_not_reachable(httpserver, monkeypatch):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": f"upstream down for {key}", "type": "server"}}, status=500)
    r = D.check_judge(_openai_profile(httpserver.url_for("/v1")), probe=True)
    assert r.status == D.BLOCKER and "not reachable: HTTP 500" in r.detail and "--check-judge" in r.fix
    assert key not in r.detail and len(httpserver.log) == 1  # one request, no retries
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = D.check_judge(_openai_profile(f"http://127.0.0.1:{port}/v1"), probe=True)
    assert r.status == D.BLOCKER and "not reachable: cannot connect" in r.detail


def test_judge_rows_by_backend_and_track(monkeypatch):
    assert D.check_judge(load_profile("tiny"), probe=True).status == D.OK
    P = load_profile("tiny", ["judge.backend=openai", "tracks=[B]"])
    assert "not used" in D.check_judge(P).detail
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    r = D.check_judge(load_profile("tiny", ["judge.backend=openai"]))  # judge.model null
    assert r.status == D.BLOCKER and "judge.model" in r.detail
    assert D.check_writer(load_profile("tiny")) is None
    assert D.check_writer(load_profile("tiny", ["synth.writer.backend=openai"])).status == D.BLOCKER  # no model


def test_table_and_blocker_lines():
    rows = [D.Row("a", D.OK, "fine"), D.Row("bb", D.BLOCKER, "word " * 60, "do this")]
    text = D.table(rows)
    assert text.splitlines()[0].split() == ["check", "status", "detail"]
    assert all(len(x) <= 200 for x in text.splitlines())
    assert D.blockers(rows) == ["BLOCKER bb: do this"]
