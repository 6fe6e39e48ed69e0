"""Preparation: read every source once, tokenise it on every core, write the token cache.

Each source is cut into units (:meth:`zoo.data.sources.Source.units`); each unit is read
once, each document goes to its split as it streams by, and the unit becomes one shard of
each split (:func:`zoo.data.cache.write_shard`). Units run in parallel in the worker
processes of a ``torch.utils.data.DataLoader`` (the engine: ordered results, workers that
die with their parent, no pool of our own), one unit per worker at a time, so memory is
bounded by a unit whatever the corpus size. Finished shards are kept, so a killed
preparation resumes at the first unfinished unit.

On many machines, node ``r`` of ``N`` takes the units ``i`` with ``i % N == r``; they write
into one shared folder, and whoever finishes the last unit writes the split indexes. The
union is the same folder, byte for byte, as one machine's build.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from zoo.data import cache
from zoo.data.sources import Source, Unit
from zoo.errors import ZooError

log = logging.getLogger(__name__)

#: A conservative preparation rate per process (bytes of text per second) on a slow CPU,
#: used to tell whether a build fits inside a multi-process job's start-up.
SLOW_RATE = 1.0e6
#: Longest preparation ``zoo.fit`` starts inside a multi-process job (the process-group
#: timeout is 30 minutes; other ranks wait for rank 0).
MAX_INLINE_SECONDS = 10 * 60


@dataclass
class Prepared:
    """What :func:`prepare_source` did: the folder, whether it is complete, and counts."""

    folder: Path
    complete: bool
    units: int
    done_before: int
    done_now: int
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0


def default_num_proc() -> int:
    """Processes to prepare with: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def node_from_env() -> tuple[int, int]:
    """``(node_rank, num_nodes)`` from ``$NODE_RANK`` and ``$NUM_NODES`` (default one node)."""
    def read(var: str, default: int) -> int:
        value = os.environ.get(var, "").strip()
        if not value:
            return default
        if not value.isdigit():
            raise ZooError(f"${var} must be a non-negative integer, got {value!r}")
        return int(value)

    return read("NODE_RANK", 0), read("NUM_NODES", 1)


class _UnitJobs(Dataset):
    """Item ``i`` is "write the shard of unit ``i``" (run in a DataLoader worker)."""

    def __init__(self, source: Source, units: list[Unit], tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
        self.source, self.units, self.tokenizer, self.folder = source, units, tokenizer, folder

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return cache.write_shard(self.source, self.units[i], self.tokenizer, self.folder)
        except ZooError as e:  # carried back as data: a worker's exception would arrive as a traceback
            return {"error": str(e)}


def _as_is(record: dict[str, Any]) -> dict[str, Any]:
    return record


def _run(jobs: _UnitJobs, num_proc: int):
    """Yield each unit's shard record, in order, from ``num_proc`` worker processes."""
    if num_proc <= 1 or len(jobs) <= 1:
        for i in range(len(jobs)):
            yield jobs[i]
        return
    # each worker tokenises single-threaded: the processes already cover the cores
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        # units are handed out round-robin, a few ahead, so a worker rarely waits for another's
        # result to be delivered in order
        loader = DataLoader(jobs, batch_size=None, shuffle=False, num_workers=min(num_proc, len(jobs)),
                            collate_fn=_as_is, prefetch_factor=4)
        yield from loader
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def estimate_seconds(source: Source, num_proc: int) -> float | None:
    """A pessimistic preparation time, or ``None`` if the size is unknown (a hub stream)."""
    units = source.units()
    if any(u.size <= 0 for u in units) and not source.IN_MEMORY:
        return None
    return sum(u.size for u in units) / (SLOW_RATE * max(1, min(num_proc, len(units))))


def prepare_source(
    source: Source,
    tokenizer: PreTrainedTokenizerFast,
    cache_dir: Path,
    *,
    num_proc: int | None = None,
    node_rank: int = 0,
    num_nodes: int = 1,
    progress: bool = True,
) -> Prepared:
    """Tokenise ``source`` into the cache (this node's share of it); return what was done.

    A complete cache returns at once. ``num_proc`` worker processes (default: every CPU)
    each take one unit at a time; ``node_rank``/``num_nodes`` pick this node's share.
    """
    if not (isinstance(num_nodes, int) and num_nodes >= 1 and isinstance(node_rank, int) and 0 <= node_rank < num_nodes):
        raise ZooError(f"node_rank must be in [0, num_nodes) and num_nodes >= 1; got node_rank={node_rank}, "
                       f"num_nodes={num_nodes}")
    folder = cache.source_dir(source, tokenizer, cache_dir)
    if cache.is_complete(folder):
        return Prepared(folder, True, 0, 0, 0)
    folder.mkdir(parents=True, exist_ok=True)
    cache.clean_stale_temporaries(folder)
    units = source.units()
    plan = cache.write_plan(folder, source, units, cache.token_dtype(tokenizer))
    done_before = sum(cache.shard_done(folder, u.index) for u in units)
    todo = [u for u in units if u.index % num_nodes == node_rank and not cache.shard_done(folder, u.index)]
    num_proc = default_num_proc() if num_proc is None else num_proc
    result = Prepared(folder, False, len(units), done_before, 0)
    if todo:
        share = f" (node {node_rank} of {num_nodes})" if num_nodes > 1 else ""
        resumed = f", {done_before} already done" if done_before else ""
        log.info("preparing %s%s: %d of %d unit(s) to tokenise%s, %d process(es), into %s",
                 source.name, share, len(todo), len(units), resumed, min(num_proc, len(todo)), folder)
        sizes = [u.size for u in todo]
        total = sum(sizes) if all(s > 0 for s in sizes) else None
        start = time.perf_counter()
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                   desc=f"preparing {source.name}", mininterval=1.0, dynamic_ncols=True)
        for record in _run(_UnitJobs(source, todo, tokenizer, folder), num_proc):
            if "error" in record:
                bar.close()
                raise ZooError(record["error"])
            splits = record["splits"].values()
            result.done_now += 1
            result.documents += sum(s["documents"] for s in splits)
            result.tokens += sum(s["tokens"] for s in splits)
            n_bytes = sum(s["bytes"] for s in splits)
            result.bytes += n_bytes
            bar.update(n_bytes)
            bar.set_postfix_str(f"{result.done_now}/{len(todo)} units, {result.documents:,} docs, "
                                f"{result.tokens:,} tokens", refresh=False)
        if total is not None:
            bar.total = bar.n
        bar.close()
        result.seconds = time.perf_counter() - start
        rate = result.bytes / max(result.seconds, 1e-9) / 1e6
        log.info("prepared %s%s: %d unit(s), %s documents, %s tokens, %.1f MB of text in %.1f s (%.2f MB/s)",
                 source.name, share, result.done_now, f"{result.documents:,}", f"{result.tokens:,}",
                 result.bytes / 1e6, result.seconds, rate)
    if all(cache.shard_done(folder, u.index) for u in units):
        empty = source.empty_error() if hasattr(source, "empty_error") else None
        cache.finalize(folder, plan, empty, source.EMPTY_OK)
        result.complete = True
    return result


def inline_guard(source: Source, tokenizer: PreTrainedTokenizerFast, cache_dir: Path, num_proc: int,
                 command: str) -> None:
    """Refuse, in one line, to prepare a large corpus at the start of a multi-process job.

    Inside ``torchrun`` / SLURM every rank but one would wait at a barrier, and a build longer
    than the process-group timeout kills the job; ``command`` is what to run beforehand.
    """
    world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("SLURM_NTASKS", "1") or 1))
    if world <= 1 or cache.is_complete(cache.source_dir(source, tokenizer, cache_dir)):
        return
    seconds = estimate_seconds(source, num_proc)
    if seconds is None or seconds > MAX_INLINE_SECONDS:
        size = "of unknown size (a hub stream)" if seconds is None else f"about {seconds / 60:.0f} min of work"
        raise ZooError(
            f"source '{source.name}' is not prepared and is {size}, too long to prepare inside a "
            f"{world}-process job; prepare it first with: {command}"
        )


def split_tokens(source: Source, split: str, tokenizer: PreTrainedTokenizerFast, cache_dir: Path,
                 num_proc: int | None = None) -> Path:
    """The folder of ``source``'s cached ``split``, preparing the source first if needed."""
    folder = cache.source_dir(source, tokenizer, cache_dir)
    if not cache.is_complete(folder):
        done = prepare_source(source, tokenizer, cache_dir, num_proc=num_proc)
        if not done.complete:  # pragma: no cover - one node prepares everything
            raise ZooError(f"token cache {folder} is incomplete")
    return folder / split
