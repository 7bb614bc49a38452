"""The causal-LM cross-entropy (SFT and ce_weight): counted tokens only, chunked or not, equal to the masked
full-logit CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdkit.methods.lm_base import LMOutputs, _full_ce, shift


def test_counted_rows_ce_equals_masked_full_logits_ce() -> None:
    g = torch.Generator().manual_seed(0)
    h, w, b = torch.randn(2, 5, 4, generator=g), torch.randn(9, 4, generator=g), torch.randn(9, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    targets, mask = shift({"labels": labels})
    for bias in (None, b):
        logits = h @ w.T if bias is None else h @ w.T + bias
        per_token = F.cross_entropy(logits[:, :-1, :7].transpose(1, 2), targets, reduction="none")
        ref = per_token.masked_fill(~mask, 0).sum() / mask.sum()
        torch.testing.assert_close(_full_ce(LMOutputs(h, w, bias), targets, mask, 7), ref)
        for chunk in (2, 1024):  # chunked (SFT's default, and the methods' ce_weight with chunk_size > 0)
            torch.testing.assert_close(_full_ce(LMOutputs(h, w, bias), targets, mask, 7, chunk), ref)
        torch.testing.assert_close(_full_ce(LMOutputs(None, None, None, logits), targets, mask, 7), ref)
    hidden = h.clone().requires_grad_(True)
    zero = _full_ce(LMOutputs(hidden, w, None), targets, torch.zeros_like(mask), 7)
    zero.backward()
    assert float(zero.detach()) == 0.0 and hidden.grad is not None and not hidden.grad.any()
