"""Generate text with a causal zoo model: ``python -m zoo.generate NAME prompt=TEXT [key=value ...]``.

NAME is a published model (``llama-edu``, ``mixer-edu``) or a model folder. Llama-based
models generate through ``transformers``' ``generate``; other causal models (the masked
mixer, whose context is fixed at ``n_ctx`` positions) through a plain sampling loop over the
last ``n_ctx`` tokens. Encoder-augmented decoders are refused: their encoder reads the very
text they predict, so they score text but cannot write it.

Options:
  prompt=TEXT          the text to continue (default: empty, i.e. a new document)
  max_new_tokens=60    tokens to generate (stops early at <|endoftext|>)
  temperature=0.8      0 = greedy
  top_k=50             sample among the k most likely tokens (0 = all)
  seed=0               the sampling seed (same seed, same text)
  n=1                  how many samples
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zoo.cli import key_values, number, run_command
from zoo.errors import ZooError
from zoo.models.base import LanguageModel, family_of

OPTIONS = ("prompt", "max_new_tokens", "temperature", "top_k", "seed", "n")


def check_generator(model: nn.Module) -> None:
    """Raise a :class:`ZooError` for models whose family declares it cannot generate (the
    EACD, whose encoder reads the text it predicts)."""
    family = family_of(model)
    if family is not None and not family.can_generate:
        raise ZooError(
            f"{type(model).__name__} (model family '{family.family}') is not a generator: its family declares "
            "can_generate=False; score text with python -m zoo.evaluate, or generate with a causal model "
            "(llama-edu, mixer-edu)"
        )


def check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, seed: Any) -> tuple[int, float, int, int]:
    """The sampling options checked (a one-line :class:`ZooError` naming a bad one):
    ``max_new_tokens >= 1``, a finite ``temperature >= 0``, ``top_k >= 0``, ``seed >= 0``."""
    values = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed}
    return (number(values, "max_new_tokens", None, minimum=1), number(values, "temperature", None, float, minimum=0),
            number(values, "top_k", None, minimum=0), number(values, "seed", None, minimum=0))


def _pick(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))


@torch.no_grad()
def sample_loop(
    model: nn.Module, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
    seed: int, n_ctx: int, eos_id: int | None,
) -> list[int]:
    """Token-by-token sampling for any causal ``model(ids, mask) -> logits``; the model sees the
    last ``n_ctx`` tokens (a sliding window, so it can write past its context)."""
    gen = torch.Generator().manual_seed(seed)
    out = list(ids)
    for _ in range(max_new_tokens):
        window = torch.tensor([out[-n_ctx:]])
        logits = model(window, torch.ones_like(window))[0, -1]
        tok = _pick(logits, temperature, top_k, gen)
        out.append(tok)
        if tok == eos_id:
            break
    return out[len(ids):]


@torch.no_grad()
def generate_ids(
    model: nn.Module, ids: list[int], max_new_tokens: int = 60, temperature: float = 0.8, top_k: int = 50,
    seed: int = 0, eos_id: int | None = 0, pad_id: int | None = 1,
) -> list[int]:
    """New token ids continuing ``ids`` (the prompt, already tokenised)."""
    check_sampling(max_new_tokens, temperature, top_k, seed)
    check_generator(model)
    model.eval()
    n_ctx = int(getattr(model, "n_ctx", 0) or len(ids) + max_new_tokens)
    hf = model.transformers_model() if isinstance(model, LanguageModel) else None
    if hf is not None and hasattr(hf, "generate"):
        if max_new_tokens >= n_ctx:
            raise ZooError(f"max_new_tokens={max_new_tokens} does not fit the model's context of {n_ctx} tokens")
        ids = ids[-(n_ctx - max_new_tokens):]  # prompt cut from the left so everything fits the context
        torch.manual_seed(seed)
        x = torch.tensor([ids])
        out = hf.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
            do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
            top_k=top_k if temperature > 0 and top_k > 0 else None, top_p=None,
            eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True,
        )
        new = out[0, len(ids):].tolist()
        if eos_id is not None and eos_id in new:  # drop padding after the end of text
            new = new[: new.index(eos_id) + 1]
        return new
    return sample_loop(model, ids, max_new_tokens, temperature, top_k, seed, n_ctx, eos_id)


def generate(
    model: nn.Module, tokenizer: Any, prompt: str = "", max_new_tokens: int = 60,
    temperature: float = 0.8, top_k: int = 50, seed: int = 0,
) -> str:
    """``prompt`` continued by ``model`` (the prompt plus the new text, as one string).

    The prompt is read as the start of a document: it follows an ``<|endoftext|>`` token,
    as every document did in training.
    """
    eos = tokenizer.eos_token_id
    ids = ([eos] if eos is not None else []) + tokenizer(prompt).input_ids
    new = generate_ids(model, ids, max_new_tokens, temperature, top_k, seed, eos, tokenizer.pad_token_id)
    return prompt + tokenizer.decode(new, skip_special_tokens=True)


def _main(argv: list[str]) -> None:
    from zoo.hub.registry import load

    name, rest = argv[0], argv[1:]
    if "=" in name:
        raise ZooError("usage: python -m zoo.generate NAME prompt=TEXT [max_new_tokens=N temperature=T top_k=K seed=S]")
    args = key_values(rest, OPTIONS, empty_ok=("prompt",))
    defaults = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 50, "seed": 0}
    max_new, temperature, top_k, seed = check_sampling(*(args.get(k, v) for k, v in defaults.items()))
    n = number(args, "n", 1, minimum=1)
    model, tokenizer = load(name)
    check_generator(model)
    for i in range(n):
        text = generate(model, tokenizer, args.get("prompt", ""), max_new, temperature, top_k, seed + i)
        print(text if n == 1 else f"--- sample {i + 1} (seed {seed + i})\n{text}")


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
