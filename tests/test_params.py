import json

import pytest

from kit import params as kp
from kit.params import ParamsError, load_profile


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


def _zero_plugin(name: str):
    """The DeepSpeedPlugin `accelerate launch --config_file params/accelerate/NAME.yaml` gives the
    Trainer, built from the file with accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    from kit.params import PROJECT_ROOT

    launch = load_config_from_file(str(PROJECT_ROOT / "params" / "accelerate" / f"{name}.yaml"))
    ds = launch.deepspeed_config
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                             offload_param_device=ds["offload_param_device"],
                             zero3_init_flag=ds["zero3_init_flag"], gradient_accumulation_steps=1)
    plugin.set_mixed_precision(launch.mixed_precision)  # as TrainingArguments does under the launch
    return plugin


def test_deepspeed_configs_build_accelerates_deepspeed_plugin():
    """zero2/zero3.yaml become the DeepSpeed config accelerate hands the Trainer; the values the
    Trainer fills from the profile are left `auto`."""
    for name, stage in (("zero2", 2), ("zero3", 3)):
        cfg = _zero_plugin(name).deepspeed_config
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "none"
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"


def test_deepspeed_builds_its_config_from_zero_files_and_paper_settings(tmp_path):
    """What the Trainer does with zero2/zero3.yaml, without a GPU: transformers fills every `auto`
    from paper A's training arguments (the kit's own DPOConfig for paper-iterative.yaml's SPIN
    rounds) and the model's hidden size, then deepspeed (installed by `make`, no ops built) builds
    its full DeepSpeedConfig from the result."""
    ds_config = pytest.importorskip("deepspeed.runtime.config", reason="deepspeed is in the dev extras")
    from transformers import AutoConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from kit.models.device import model_spec
    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.train.dpo import dpo_args

    P = kp.load_profile("paper-iterative", ["device=cpu"])  # the profile's cuda is not here; bf16 put back below
    cfg = P["spin"]
    args = dpo_args(cfg, model_spec(P).trainer_precision(), tmp_path / "out", n_rows=1000)
    args.bf16 = True  # what paper-iterative.yaml trains in on its GPUs
    model_cfg = AutoConfig.from_pretrained(build_tiny_vlm(tmp_path / "vlm", ["a car ahead"] * 20, image_size=64))

    class _Model:  # the Trainer reads only the model's config here
        config = model_cfg

    for name, stage in (("zero2", 2), ("zero3", 3)):
        hf = HfTrainerDeepSpeedConfig(_zero_plugin(name).deepspeed_config)
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, _Model, num_training_steps=250)
        assert "auto" not in json.dumps(hf.config), hf.config
        built = ds_config.DeepSpeedConfig(hf.config)
        assert built.zero_optimization_stage == stage
        assert built.train_micro_batch_size_per_gpu == cfg["batch_size"]
        assert built.gradient_accumulation_steps == cfg["grad_accum"]
        assert hf.config["bf16"]["enabled"] is True
        assert built.gradient_clipping == args.max_grad_norm
        # no optimizer section: DeepSpeed wraps the Trainer's own AdamW, built from the arguments
        assert "optimizer" not in hf.config and "scheduler" not in hf.config
    assert (args.learning_rate, args.adam_beta2, args.weight_decay) == (cfg["lr"], cfg["adam_beta2"], cfg["weight_decay"])
    assert (args.learning_rate, args.adam_beta2, args.weight_decay) == (1e-6, 0.95, 0.1)  # paper A, Section 3


@pytest.mark.parametrize("override, message", [
    ("seed=-5", "key 'seed' got -5; expected [>= 0]"),                                    # a bound
    ("sft.lr=-1", "key 'sft.lr' got -1; expected [> 0]"),
    ("sft.lr=.nan", "key 'sft.lr' got nan; expected [> 0]"),                              # NaN fails every comparison
    ("rloo.top_p=1.5", "key 'rloo.top_p' got 1.5; expected [> 0, <= 1]"),                 # two bounds
    ("data.toy.corner_case_rate=2", "key 'data.toy.corner_case_rate' got 2; expected [0 .. 1]"),  # a range
    ("rloo.k=1", "key 'rloo.k' got 1; expected [>= 2]"),
    ("precision=fp8", "key 'precision' got 'fp8'; expected [auto | fp32 | bf16 | fp16]"),  # choices
    ("device=tpu", "key 'device' got 'tpu'; expected [auto | cpu | cuda]"),
    ("models.quantization=3bit", "expected [null | 4bit | 8bit]"),
    ("sft.epochs=null", "key 'sft.epochs' may not be null; expected [> 0]"),              # not nullable
    ("data=null", "key 'data' may not be null; expected a mapping (keys bdd_oia_root"),
    ("tracks=[A, C]", "key 'tracks' got an item 'C'; expected [each A | B]"),             # each item of a list
    ("data.toy.splits={train: 0}", "key 'data.toy.splits.train' got 0; expected [>= 1]"),  # each value of a mapping
    ("sft.max_steps=0", "key 'sft.max_steps' got 0; expected [null | >= 1]"),
])
def test_bad_values_fail_naming_key_value_and_rule(override, message):
    with pytest.raises(ParamsError) as e:
        load_profile("tiny", [override])
    assert message in str(e.value) and str(e.value).startswith("overrides: ")


def test_rules_allow_what_they_declare(tmp_path, capsys):
    from kit.cli import main
    from kit.params import rules

    assert len(rules()) > 150 and rules()["rloo.k"] == ">= 2"
    P = load_profile("tiny", ["sft.max_steps=null", "spin.prompts_per_round=null", "clip_finetune.logit_bias=null",
                              "models.quantization=4bit", "data.toy.splits={train: 1, val: 1, test: 1}", "tracks=[B]"])
    assert P["sft"]["max_steps"] is None and P["models"]["quantization"] == "4bit"
    for profile in ("tiny", "smolvlm", "paper-rloo", "paper-iterative"):
        load_profile(profile)   # every shipped profile keeps the rules
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nrloo:\n  k: 1\n")
    assert main(["params", "show", str(bad)]) == 2
    assert f"{bad}: key 'rloo.k' got 1; expected [>= 2]" in capsys.readouterr().err


def test_params_explain_gives_comment_rule_default_and_value(capsys):
    from kit.cli import main

    assert main(["params", "explain", "rloo.beta", "sft.epochs", "--set", "sft.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "rloo.beta: 0.05\n    [>= 0] KL coefficient to the reference policy" in out
    assert "sft.epochs: 3   (default 6)" in out
    assert main(["params", "explain", "judge"]) == 0          # a section: every key in it
    assert "judge.deadline_s: None" in capsys.readouterr().out
    assert main(["params", "explain", "rloo.betta"]) == 2
    assert "no key 'rloo.betta'" in capsys.readouterr().err
