"""Several teachers: the mixture's logits give the weighted mixture of distributions, and both rules
(``losses``: the weighted sum of per-teacher losses; ``mixture``: the loss against the mixed distribution)
match dense references, with one teacher live and the other read as top-k rows covering the vocabulary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.config import load_config, resolve_method
from kdkit.data.lm_encode import shift_labels
from kdkit.family.causal_lm import CausalLMFamily
from kdkit.family.classifier import ClassifierFamily
from kdkit.losses import atkd_loss, forward_kl, generalized_jsd
from kdkit.losses.ensemble import mixture_logits, normalised
from kdkit.losses.topk import TopKTeacher
from kdkit.methods.base import LossOutput
from kdkit.models.causal_lm import LMOutputs
from kdkit.teacher.ensemble import EnsembleOutputs, EnsembleTeacher, combine_losses
from kdkit.train.loop import Trainee
from tests.unit.methods.test_lm_methods import VOCAB, _batch, _llama, _loss_fn

WEIGHTS = [1.0, 3.0]  # normalised: 0.25, 0.75


def test_mixture_logits_soften_to_the_weighted_mixture() -> None:
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(4, 5, 11, generator=g) * 3 for _ in range(3)]
    w, t = [0.5, 2.0, 1.5], 2.0
    mixed = mixture_logits(zs, w, temperature=t)
    want = sum(wi / 4.0 * F.softmax(z / t, -1) for wi, z in zip(w, zs, strict=True))
    torch.testing.assert_close(F.softmax(mixed / t, -1), want, rtol=1e-5, atol=1e-7)
    one = mixture_logits(zs[:1], [7.0], temperature=t)  # one teacher: its own distribution
    torch.testing.assert_close(F.softmax(one / t, -1), F.softmax(zs[0] / t, -1))
    assert normalised([1.0, 3.0]) == [0.25, 0.75]
    with pytest.raises(ValueError, match="> 0"):
        normalised([1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        mixture_logits([zs[0], zs[0][:2]], [1.0, 1.0])


def test_combine_losses_weights_every_part() -> None:
    a = LossOutput(torch.tensor(2.0), {"distill": torch.tensor(1.0), "ce": torch.tensor(4.0)})
    b = LossOutput(torch.tensor(6.0), {"distill": torch.tensor(3.0)})
    out = combine_losses([a, b], [0.25, 0.75])
    assert out.loss.item() == pytest.approx(5.0)
    assert out.parts["distill"].item() == pytest.approx(2.5) and out.parts["ce"].item() == pytest.approx(1.0)


def _full_topk(logits: torch.Tensor, batch: dict, temperature: float) -> LMOutputs:
    """A teacher given as top-k rows with k = V (what a cache or server holds, covering the vocabulary)."""
    targets, mask = shift_labels(batch)
    lp = F.log_softmax(logits[:, :-1, :VOCAB].float() / temperature, -1)[mask]  # (n, V) counted tokens
    ids = torch.arange(VOCAB).expand(lp.shape[0], VOCAB)
    target_lp = lp.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return LMOutputs(None, None, None, topk=TopKTeacher(ids, lp, target_lp, "student"))


def _models_and_batch():
    return _llama(seed=0), _llama(seed=2, vocab_rows=56), _llama(layers=1, seed=1), _batch()


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "atkd"])
def test_losses_rule_is_the_weighted_sum_of_dense_losses(name: str) -> None:
    """One teacher live, one as top-k rows (k = V): L = 0.25 L(s, A) + 0.75 L(s, B), from dense logits."""
    a, b, student, batch = _models_and_batch()
    t = 2.0 if name == "forward_kl" else 1.0
    config = resolve_method({"name": name, "temperature": t, "chunk_size": 7})
    fn = _loss_fn(config, a, student)
    with torch.no_grad():
        a_out = fn.teacher_forward(a.eval(), batch)
        b_logits = b.eval()(**batch["teacher"]).logits
    got = Trainee(student, fn)(
        batch, EnsembleOutputs([a_out, _full_topk(b_logits, batch, t)], normalised(WEIGHTS))
    )
    got.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

    with torch.no_grad():
        s = student(**batch["student"]).logits[:, :-1, :VOCAB]
        ta = a(**batch["teacher"]).logits[:, :-1, :VOCAB]
        tb = b_logits[:, :-1, :VOCAB]
    targets, mask = shift_labels(batch)

    def dense(teacher_logits: torch.Tensor) -> float:
        if name == "forward_kl":
            return forward_kl(s, teacher_logits, mask, temperature=t).item()
        if name == "jsd":
            return generalized_jsd(s, teacher_logits, mask, beta=config.beta).item()
        return atkd_loss(s, teacher_logits, targets.clamp(min=0), mask).item()

    assert got.loss.item() == pytest.approx(0.25 * dense(ta) + 0.75 * dense(tb), rel=1e-4)
    if name == "forward_kl":  # and by hand: the mean over counted tokens of sum_v p log(p / q), at T

        def plain(z: torch.Tensor) -> torch.Tensor:
            p, lq = F.softmax(z / t, -1), F.log_softmax(s / t, -1)
            return (p * (p.log() - lq)).sum(-1)[mask].mean()

        assert got.loss.item() == pytest.approx((0.25 * plain(ta) + 0.75 * plain(tb)).item(), rel=1e-4)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl"])
def test_mixture_rule_is_the_loss_against_the_mixed_distribution(name: str) -> None:
    a, b, student, batch = _models_and_batch()
    t = 2.0
    config = load_config({"task": "causal_lm", "method": {"name": name, "temperature": t}})
    fn = _loss_fn(config.method, a, student)
    family = CausalLMFamily()
    with torch.no_grad():
        outs = [fn.teacher_forward(m.eval(), batch) for m in (a, b)]  # hidden + head, padded differently
    mixed = family.mix_teachers(config, outs, normalised(WEIGHTS))
    got = Trainee(student, fn)(batch, mixed).loss.item()
    with torch.no_grad():
        s = student(**batch["student"]).logits[:, :-1, :VOCAB]
        ps = [F.softmax(m(**batch["teacher"]).logits[:, :-1, :VOCAB] / t, -1) for m in (a, b)]
    p = 0.25 * ps[0] + 0.75 * ps[1]
    lq = F.log_softmax(s / t, -1)
    _, mask = shift_labels(batch)
    per_token = (p * (p.log() - lq)).sum(-1) if name == "forward_kl" else (lq.exp() * (lq - p.log())).sum(-1)
    # a KL of ~1e-3 nats summed over the vocabulary in float32: its last digits follow the thread count
    assert got == pytest.approx(per_token[mask].mean().item(), rel=1e-3)
    with pytest.raises(Exception, match="full distribution"):
        family.mix_teachers(config, [outs[0], _full_topk(b(**batch["teacher"]).logits, batch, t)], [0.5, 0.5])


def test_classifier_mixture_and_regression_mean() -> None:
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    family = ClassifierFamily()
    config = load_config({"method": {"name": "kd", "temperature": 4.0}})
    out = family.mix_teachers(config, [type("O", (), {"logits": z})() for z in (za, zb)], [0.25, 0.75])
    want = 0.25 * F.softmax(za / 4, -1) + 0.75 * F.softmax(zb / 4, -1)
    torch.testing.assert_close(F.softmax(out.logits / 4, -1), want)
    reg = load_config({"task": "regression"})
    ra, rb = torch.randn(6, 1, generator=g), torch.randn(6, 1, generator=g)
    out = family.mix_teachers(reg, [type("O", (), {"logits": z})() for z in (ra, rb)], [0.25, 0.75])
    torch.testing.assert_close(out.logits, 0.25 * ra + 0.75 * rb)


class _Fixed:
    """A stand-in source: fixed outputs, and a record of how it was streamed and closed."""

    def __init__(self, value: object) -> None:
        self.value, self.streamed, self.closed = value, 0, False

    def outputs(self, batch: object, accelerator: object) -> object:
        return self.value

    def stream(self, batches):  # type: ignore[no-untyped-def]
        for item in batches:
            self.streamed += 1
            yield item

    def close(self) -> None:
        self.closed = True


def test_ensemble_source_streams_through_every_teacher_and_closes_them() -> None:
    a, b = _Fixed("a"), _Fixed("b")
    source = EnsembleTeacher([a, b], [1.0, 1.0], "losses")
    assert list(source.stream(iter(range(3)))) == [0, 1, 2] and a.streamed == b.streamed == 3
    out = source.outputs({}, None)  # type: ignore[arg-type]
    assert isinstance(out, EnsembleOutputs) and out.outputs == ["a", "b"] and out.weights == [0.5, 0.5]
    mixed = EnsembleTeacher([a, b], [1.0, 3.0], "mixture", mix=lambda outs, w: (tuple(outs), tuple(w)))
    assert mixed.outputs({}, None) == (("a", "b"), (0.25, 0.75))  # type: ignore[arg-type]
    source.close()
    assert a.closed and b.closed
    with pytest.raises(ValueError, match="combine"):
        EnsembleTeacher([a], [1.0], "vote")
