"""The masked mixer: its token-mixing convolution, the causal LM built on it, and its recipe.

Real components throughout (no mocks): the shared blocks of ``zoo.models.blocks``, real
AdamW steps, and a real (small) training run of ``recipes/mixer_clm.yaml``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ZooError
from zoo.hub.folder import load_pretrained
from zoo.models import build_model
from zoo.models.blocks import FeedForward, MaskedTokenMixer, MixerBlock, MixerStack
from zoo.models.mixer import MaskedMixerLM
from zoo.recipes import compose
from zoo.training import train

VOCAB, N_CTX = 97, 16
CONFIGS = [(1, 1), (3, 1), (1, 2), (3, 2)]  # (kernel, heads)


def per_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` next-token NLL (0 where the label is -100)."""
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll * (labels != -100)


@pytest.mark.parametrize("kernel, heads", CONFIGS)
def test_mixer_lm_is_causal(kernel, heads) -> None:
    torch.manual_seed(0)
    model = MaskedMixerLM(VOCAB, N_CTX, d_model=32, n_layers=2, kernel=kernel, heads=heads).eval()
    ids = torch.randint(2, VOCAB, (3, N_CTX))
    with torch.no_grad():
        base = model(ids)
        for i in (0, 5, N_CTX - 1):
            changed = ids.clone()
            changed[:, i] = (changed[:, i] + 1) % VOCAB
            diff = (model(changed) - base).abs().amax(dim=(0, 2))  # [T]
            assert torch.all(diff[:i] == 0), f"position < {i} saw token {i}: {diff[:i]}"
            assert diff[i] > 1e-4
            if i + 1 < N_CTX:
                assert diff[i + 1] > 1e-4  # later positions mix the change in


def test_short_sequences_use_bottom_right_block() -> None:
    """T < n_ctx: output t = sum_{s<=t} W[n-T+t, n-T+s] x_s + b[n-T+t] (right-aligned positions)."""
    torch.manual_seed(0)
    mixer = MaskedTokenMixer(N_CTX, 8)
    x = torch.randn(2, 5, 8)
    w = (mixer.weight * mixer.causal_mask)[0, :, :, 0]  # [out, in]
    expected = torch.einsum("ts,bsd->btd", w[-5:, -5:], x) + mixer.bias[0, -5:, None]
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("kernel, heads", [(3, 1), (3, 2)])
def test_heads_and_kernel_match_reference_convolutions(kernel, heads) -> None:
    """The grouped convolution equals one masked ``nn.Conv1d`` (channels = positions) per head."""
    torch.manual_seed(0)
    d, T = 12, 10
    mixer = MaskedTokenMixer(N_CTX, d, kernel=kernel, heads=heads)
    x = torch.randn(2, T, d)
    inner = mixer.proj_in(x) if heads > 1 else x
    outs = []
    for h in range(heads):
        conv = torch.nn.Conv1d(T, T, kernel, padding=kernel // 2)
        with torch.no_grad():
            conv.weight.copy_(mixer.masked_weight(T)[h])
            conv.bias.copy_(mixer.bias[h, -T:])
        outs.append(conv(inner[..., h * d // heads : (h + 1) * d // heads]))
    expected = torch.cat(outs, dim=-1)
    if heads > 1:
        expected = mixer.proj_out(expected)
    torch.testing.assert_close(mixer(x), expected)


def test_mixer_rejects_bad_sizes() -> None:
    mixer = MaskedTokenMixer(8, 4)
    with pytest.raises(ValueError, match="longer than the mixer's n_ctx=8"):
        mixer(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match="odd"):
        MaskedTokenMixer(8, 4, kernel=2)
    with pytest.raises(ValueError, match="divisible by heads"):
        MaskedTokenMixer(8, 6, heads=4)
    with pytest.raises(ZooError, match="not an option of family 'mixer'"):
        build_model({"family": "mixer", "n_heads": 4}, VOCAB, N_CTX)


def test_upper_triangle_gets_zero_gradient_and_stays_zero_under_adamw() -> None:
    torch.manual_seed(0)
    model = MaskedMixerLM(VOCAB, N_CTX, d_model=16, n_layers=2, kernel=3, heads=2)
    mixers = [m for m in model.modules() if isinstance(m, MaskedTokenMixer)]
    upper = 1 - mixers[0].causal_mask  # [1, n, n, 1]: 1 above the diagonal
    before = [m.weight.detach().clone() for m in mixers]
    for m in mixers:
        assert torch.all(m.weight * upper == 0)  # initialised to exactly zero
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        ids = torch.randint(0, VOCAB, (4, N_CTX))
        loss = F.cross_entropy(model(ids[:, :-1]).transpose(1, 2), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        for m in mixers:
            assert torch.all(m.weight.grad * upper == 0)
            assert (m.weight.grad * (1 - upper)).abs().sum() > 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    for m, w0 in zip(mixers, before, strict=True):
        assert torch.all(m.weight * upper == 0)  # still exactly zero
        assert not torch.equal(m.weight * (1 - upper), w0 * (1 - upper))  # the rest trained


@pytest.mark.parametrize("kernel, heads", [(1, 1), (3, 2)])
def test_left_padding_gives_the_same_losses(kernel, heads) -> None:
    """A left-padded row (with a full row beside it) scores its tokens like its unpadded copy."""
    torch.manual_seed(0)
    model = MaskedMixerLM(VOCAB, N_CTX, d_model=32, n_layers=2, kernel=kernel, heads=heads).eval()
    doc = torch.randint(2, VOCAB, (7,))  # doc[0] plays the end-of-text token that opens a sample
    n_pad = N_CTX + 1 - len(doc)
    window = torch.cat([torch.full((n_pad,), 1), doc])  # pads (id 1), then the document
    ids, labels = window[:-1], window[1:].clone()
    labels[:n_pad] = -100
    mask = (torch.arange(N_CTX) >= n_pad).long()
    other = torch.randint(2, VOCAB, (N_CTX + 1,))
    batch_ids = torch.stack([ids, other[:-1]])
    batch_mask = torch.stack([mask, torch.ones(N_CTX, dtype=torch.long)])
    with torch.no_grad():
        padded = per_token_nll(model(batch_ids, batch_mask)[:1], labels[None])
        unpadded = per_token_nll(model(doc[None, :-1]), doc[None, 1:])
    torch.testing.assert_close(padded[0, n_pad:], unpadded[0], atol=1e-5, rtol=1e-5)


def test_block_takes_any_ffn_module() -> None:
    """The block runs whatever feed-forward module it is given (an MoE layer later)."""
    block = MixerBlock(8, 4, ffn=torch.nn.Identity())
    assert isinstance(MixerBlock(8, 4).ffn, FeedForward) and isinstance(block.ffn, torch.nn.Identity)
    stack = MixerStack(8, 4, n_layers=2, ffn_factory=lambda d: FeedForward(d, mult=2))
    assert stack.blocks[0].ffn.fc_in.out_features == 8
    assert stack(torch.randn(2, 8, 4)).shape == (2, 8, 4)


def test_tied_embeddings_share_one_matrix() -> None:
    model = MaskedMixerLM(VOCAB, N_CTX, d_model=16, n_layers=1, tie_embeddings=True)
    assert model.head.weight is model.embed.weight


def test_mixer_clm_recipe_trains_and_exports(tmp_path, cache_dir) -> None:
    cfg = compose("mixer_clm", [
        "model.d_model=32", "model.n_layers=1", "data.n_ctx=32", "data.batch_size=4",
        "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000", "trainer.max_steps=6",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "optim.warmup_steps=2", "logger=csv", "data.eval_batch_size=64", "report.splits=[val]",
    ])
    assert cfg.model.family == "mixer" and cfg.data.layout == "packed"
    report = train(cfg, tmp_path / "run")
    assert 0 < report["splits"]["val"]["bpb"] < 12
    assert "bpb_free_vector" not in report["splits"]["val"]  # no side information here
    model, _, spec = load_pretrained(tmp_path / "run" / "model")
    assert isinstance(model, MaskedMixerLM) and spec["n_ctx"] == 32
    ids = torch.randint(0, spec["vocab_size"], (2, 32))
    assert torch.isfinite(model(ids)).all()
