"""FSDP / DeepSpeed ZeRO: the shipped Accelerate recipes, the launch checks, and the whole-student copy that
evaluation and saving use under sharding. The sharded runs themselves need GPUs (Accelerate runs FSDP and
DeepSpeed on GPUs only); what runs here is everything around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser, prepare_multi_gpu_env
from transformers import AutoModelForCausalLM

from kdkit.config import TrainConfig, load_config
from kdkit.errors import KdkitError
from kdkit.methods.base import LossContext, TaskLoss
from kdkit.runtime import make_accelerator
from kdkit.train.loop import Trainee
from kdkit.train.sharding import rebuild, student_state, whole_student
from tests.conftest import bert_classifier

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


@pytest.mark.parametrize("name", ["fsdp", "zero2", "zero3"])
def test_recipes_load_as_accelerate_configs(name: str) -> None:
    config = load_config_from_file(str(RECIPES / f"{name}.yaml"))
    assert config.use_cpu is False and config.num_machines == 1
    if name == "fsdp":
        assert config.distributed_type.value == "FSDP"
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False
    else:
        ds = config.deepspeed_config
        assert config.distributed_type.value == "DEEPSPEED"
        assert ds["zero_stage"] == int(name[-1])
        assert ds["gradient_accumulation_steps"] == 1  # kdkit accumulates itself (check_launch)
        assert ds["gradient_clipping"] == TrainConfig().max_grad_norm
        assert ds.get("zero3_save_16bit_model", False) is (name == "zero3")  # gathering needs it at stage 3


def test_fsdp_recipe_launch_is_refused_on_cpus_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment `accelerate launch --config_file fsdp.yaml` gives each process, on this CPU machine."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(RECIPES / "fsdp.yaml"), "-m", "kdkit.cli", "distill", "--config", "x.yaml"]
    )
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not torch.cuda.is_available()
    with pytest.raises(KdkitError, match=r"FSDP needs GPUs: .* launch plain DDP"):
        make_accelerator(load_config({}))


def test_deepspeed_launch_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(KdkitError, match=r"DeepSpeed runs need train.grad_accum: 1 \(got 4\)"):
        make_accelerator(load_config({}, ["train.grad_accum=4"]))
    with pytest.raises(KdkitError, match="DeepSpeed needs GPUs"):
        make_accelerator(load_config({}))


def _task_loss(student: Any) -> TaskLoss:
    ctx = LossContext("classification", 3, None, student.config)
    return TaskLoss(TaskLoss.Config(), ctx)


def test_trainee_names_the_blocks_fsdp_wraps() -> None:
    student = bert_classifier()
    assert Trainee(student, _task_loss(student))._no_split_modules == student._no_split_modules
    assert "BertLayer" in student._no_split_modules


def test_whole_student_without_sharding_is_the_trained_module() -> None:
    student = bert_classifier()
    accelerator = Accelerator(cpu=True)
    trainee = accelerator.prepare(Trainee(student, _task_loss(student)))
    assert whole_student(accelerator, trainee, student) is student


def test_rebuild_from_a_gathered_state_dict() -> None:
    student = bert_classifier(seed=1)
    trainee = Trainee(student, _task_loss(student))
    state = student_state(trainee.state_dict())
    assert set(state) == set(student.state_dict())
    copy = rebuild(bert_classifier(seed=2), state)
    for key, value in student.state_dict().items():
        torch.testing.assert_close(copy.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(KdkitError, match="does not fit its class BertForSequenceClassification"):
        rebuild(student, {**state, "classifier.extra": torch.zeros(1)})


def test_rebuild_reties_a_tied_lm_head(tiny_lm: Path) -> None:
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm)
    state = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}  # tied: may be gathered once
    copy = rebuild(lm, state)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(copy(ids).logits, lm(ids).logits)
