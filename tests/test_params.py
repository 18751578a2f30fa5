import pytest

from kit import params as kp
from kit.params import ParamsError


def test_every_profile_resolves():
    for path in sorted(kp.PARAMS_DIR.glob("*.yaml")):
        P = kp.load_profile(path.stem)
        assert P["profile"] == path.stem
        assert set(kp.load_profile("base")) == set(P)  # no profile adds a key base does not declare


def test_extends_chain_and_overrides():
    P = kp.load_profile("paper-rloo", ["sft.epochs=3", "models.lora.r=8"])
    assert P["models"]["vlm"]["name"] != "tiny"          # from smolvlm.yaml
    assert P["rloo"]["k"] == 8 and P["rloo"]["temperature"] == 1.5   # from paper-rloo.yaml
    assert P["sft"]["epochs"] == 3 and P["models"]["lora"]["r"] == 8  # overrides win
    # the same from a notebook's `overrides` dict
    assert kp.load_profile("tiny", {"sft.epochs": 2})["sft"]["epochs"] == 2


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nsft:\n  epoch: 3\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: unknown key 'sft.epoch'"):
        kp.load_profile(bad)


def test_wrong_type_says_what_was_expected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nrloo:\n  k: eight\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: key 'rloo.k' expects an integer"):
        kp.load_profile(bad)
    with pytest.raises(ParamsError, match="expects a number"):
        kp.load_profile("tiny", ["sft.lr=fast"])
    assert kp.load_profile("tiny", ["sft.lr=1"])["sft"]["lr"] == 1  # an int where a float is declared


def test_missing_profile_lists_known_ones():
    with pytest.raises(ParamsError, match="known profiles: .*tiny"):
        kp.load_profile("nope")


def test_hash_changes_with_params():
    a, b = kp.load_profile("tiny"), kp.load_profile("tiny", ["seed=1"])
    assert kp.params_hash(a) == kp.params_hash(kp.load_profile("tiny"))
    assert kp.params_hash(a) != kp.params_hash(b)


def test_cli_params_show(capsys):
    from kit.cli import main

    assert main(["params", "show", "tiny", "--set", "seed=7"]) == 0
    assert "seed: 7" in capsys.readouterr().out
    assert main(["params", "show", "tiny", "--set", "nokey=1"]) == 2
    assert "unknown key 'nokey'" in capsys.readouterr().err


def test_overrides_read_exponent_floats_as_numbers():
    # PyYAML alone reads `1e-4` as a string; the schema would then reject a learning rate typed that way
    P = kp.load_profile("tiny", ["rloo.lr=1e-4", "clip_finetune.lr=3E-5"])
    assert P["rloo"]["lr"] == 1e-4 and P["clip_finetune"]["lr"] == 3e-5


def test_accelerate_configs_load_with_accelerates_own_loader():
    """params/accelerate/*.yaml are plain accelerate config files: accelerate's loader reads them."""
    from accelerate.commands.config.config_args import load_config_from_file

    from kit.params import PROJECT_ROOT

    files = sorted((PROJECT_ROOT / "params" / "accelerate").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config_from_file(str(f))
        assert cfg.num_processes >= 1
    zero2 = load_config_from_file(str(PROJECT_ROOT / "params" / "accelerate" / "zero2.yaml"))
    assert zero2.distributed_type == "DEEPSPEED" and zero2.deepspeed_config["zero_stage"] == 2


def test_deepspeed_configs_build_accelerates_deepspeed_plugin():
    """zero2/zero3.yaml become the DeepSpeed config accelerate hands the Trainer (its DeepSpeedPlugin,
    built from the file's deepspeed_config as `accelerate launch` does); with deepspeed installed (it
    needs a CUDA toolchain, so not on the CPU machines here) deepspeed's own parser reads it too."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    from kit.params import PROJECT_ROOT

    for name, stage in (("zero2", 2), ("zero3", 3)):
        ds = load_config_from_file(str(PROJECT_ROOT / "params" / "accelerate" / f"{name}.yaml")).deepspeed_config
        plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                                 offload_param_device=ds["offload_param_device"],
                                 zero3_init_flag=ds["zero3_init_flag"], gradient_accumulation_steps=1)
        cfg = plugin.deepspeed_config
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills it from the profile
        try:
            from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
        except ImportError:
            continue
        assert DeepSpeedZeroConfig(**cfg["zero_optimization"]).stage == stage
