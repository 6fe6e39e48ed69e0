"""The zoo's own Llama is the same model as transformers' LlamaForCausalLM, and older files load."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from zoo.models.base import pads_before_tokens
from zoo.models.llama import CausalTransformer, llama_config
from zoo.models.llama_weights import fuse, split, upgrade_state_dict

V, T = 97, 24


def pair(n_kv_heads: int | None = None, tie: bool = False) -> tuple[CausalTransformer, LlamaForCausalLM]:
    """A random transformers Llama and the zoo Llama loaded from its weights as an older zoo
    file held them (``hf.`` + transformers' names)."""
    torch.manual_seed(0)
    sizes = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, tie_embeddings=tie)
    hf = LlamaForCausalLM(llama_config(V, T, **sizes)).eval()
    ours = CausalTransformer(V, T, **sizes).eval()
    ours.load_state_dict({f"hf.{k}": v for k, v in hf.state_dict().items()})
    return ours, hf


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(2, V, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding
    mask[2, 17:] = 0  # right padding (a packed split's last window)
    return ids, mask


@pytest.mark.parametrize("n_kv_heads", [None, 2])
@torch.no_grad()
def test_logits_equal_transformers_llama(n_kv_heads) -> None:
    ours, hf = pair(n_kv_heads)
    ids, mask = batch()
    assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5, rtol=0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    want = hf(ids, attention_mask=mask, position_ids=positions).logits
    got = ours(ids, mask)
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_transformers_model_round_trips_the_weights() -> None:
    ours, _ = pair(n_kv_heads=2, tie=True)
    back = ours.transformers_model()
    ids, _ = batch()
    assert torch.allclose(back(ids).logits, ours(ids), atol=1e-5, rtol=0)
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # still tied


def test_an_older_file_loads_with_the_same_weights_and_fresh_keys_stay() -> None:
    ours, hf = pair()
    state = ours.state_dict()
    q, k, v = (hf.state_dict()[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(state["stack.layers.1.self_attn.qkv_proj.weight"], torch.cat([q, k, v]))
    fresh = dict(state)
    upgrade_state_dict(fresh)  # today's layout: nothing to do
    assert fresh.keys() == state.keys()
    assert fuse(split(state, kv_rows=32)).keys() == state.keys()


@torch.no_grad()
def test_a_mask_is_dropped_only_when_no_pad_comes_before_a_token() -> None:
    ours, _ = pair()
    ids, mask = batch()
    assert pads_before_tokens(mask) and not pads_before_tokens(mask[[0, 2]])
    labels = torch.where(mask.bool(), ids, -100)
    full = ours.forward_batch({"input_ids": ids, "attention_mask": mask, "labels": labels})
    trailing = ours.forward_batch({"input_ids": ids[[0, 2]], "attention_mask": mask[[0, 2]]})
    real = mask[[0, 2]].bool()
    assert torch.allclose(trailing[real], full[[0, 2]][real], atol=1e-5, rtol=0)
