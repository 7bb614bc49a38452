"""Model loading: names, layer selection, student from teacher, label spaces, frozen teachers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from kdkit.config import ModelConfig
from kdkit.errors import KdkitError
from kdkit.models import (
    build_student,
    count_parameters,
    even_layers,
    freeze,
    load_classifier,
    resolve_model_name,
    select_layers,
)


def test_even_layers() -> None:
    assert even_layers(6, 2) == [0, 5]
    assert even_layers(6, 3) == [0, 2, 5]
    assert even_layers(12, 4) == [0, 4, 7, 11]
    assert even_layers(6, 6) == list(range(6))
    assert even_layers(6, 1) == [5]
    with pytest.raises(KdkitError, match="between 1 and 6"):
        even_layers(6, 7)


def test_student_from_teacher_layers_keeps_the_weights(tiny_teacher: Path, tmp_path: Path) -> None:
    teacher = load_classifier(str(tiny_teacher), "classification", ["negative", "positive"])
    student, layers = build_student(
        ModelConfig(layers=[1, 3]), str(tiny_teacher), "classification", ["negative", "positive"]
    )
    assert layers == [1, 3] and student.config.num_hidden_layers == 2
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    assert torch.equal(s_layers[0].output.dense.weight, t_layers[1].output.dense.weight)
    assert torch.equal(s_layers[1].output.dense.weight, t_layers[3].output.dense.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)  # the trained head is kept
    assert count_parameters(student) < count_parameters(teacher)
    student.save_pretrained(tmp_path / "s")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s")
    ids = torch.tensor([[101, 2204, 102]])
    assert torch.allclose(student.eval()(ids).logits, again.eval()(ids).logits, atol=1e-6)


def test_num_layers_and_bad_layers(tiny_teacher: Path) -> None:
    _, layers = build_student(
        ModelConfig(num_layers=2), str(tiny_teacher), "classification", ["negative", "positive"]
    )
    assert layers == [0, 3]
    with pytest.raises(KdkitError, match="layers \\[7\\] do not exist"):
        build_student(
            ModelConfig(layers=[0, 7]), str(tiny_teacher), "classification", ["negative", "positive"]
        )


def test_student_from_config(tiny_teacher: Path) -> None:
    cfg = ModelConfig(
        init="random", config_overrides={"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
    )
    student, layers = build_student(cfg, str(tiny_teacher), "classification", ["negative", "positive"])
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1 and layers is None
    with pytest.raises(KdkitError, match="not a field"):
        build_student(
            ModelConfig(init="random", config_overrides={"hiden_size": 3}),
            str(tiny_teacher),
            "classification",
            ["a", "b"],
        )


def test_label_space_checks(tiny_teacher: Path) -> None:
    with pytest.raises(KdkitError, match="trained with 2 labels but the data has 3"):
        load_classifier(str(tiny_teacher), "classification", ["a", "b", "c"])
    with pytest.raises(KdkitError, match="has labels \\['negative', 'positive'\\]"):
        load_classifier(str(tiny_teacher), "classification", ["positive", "negative"])
    model = load_classifier("minilm-l6", "classification", ["x", "y", "z"])  # base encoder: a new head
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}
    reg = load_classifier("minilm-l6", "regression", None)
    assert reg.config.num_labels == 1 and reg.config.problem_type == "regression"


def test_resolve_names(tmp_path: Path) -> None:
    assert Path(resolve_model_name("minilm-l6")).is_dir()
    assert resolve_model_name("org/model") == "org/model"  # a hub id, checked when loaded
    with pytest.raises(KdkitError, match="does not exist"):
        resolve_model_name("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdkitError, match=r"no config\.json"):
        resolve_model_name(str(tmp_path / "empty"))


def test_freeze(tiny_teacher: Path) -> None:
    model = freeze(load_classifier(str(tiny_teacher), "classification", ["negative", "positive"]).train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_select_layers_in_place(tiny_teacher: Path) -> None:
    model = load_classifier(str(tiny_teacher), "classification", ["negative", "positive"])
    select_layers(model, [2])
    assert len(model.bert.encoder.layer) == 1 and model.config.num_hidden_layers == 1
