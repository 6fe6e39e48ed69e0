"""Prepare a corpus before training: ``python -m zoo.data prepare data=fineweb_edu [...]``.

usage:
  python -m zoo.data prepare [recipe=NAME] [data=GROUP] [data.KEY=VALUE ...] [num_proc=N]
                             [node_rank=R num_nodes=N]
  python -m zoo.data info    [recipe=NAME] [data=GROUP] [data.KEY=VALUE ...] [verify=true]

prepare   train (or load) the tokenizer and tokenise every source into the token cache, in
          one pass per source, on N processes (default: every CPU). A killed preparation
          resumes where it stopped. With several machines sharing the cache folder, run it on
          each with node_rank=0..N-1 num_nodes=N (default $NODE_RANK / $NUM_NODES): each takes a
          disjoint share, and the last to finish writes the index. zoo.fit with the same
          data options then starts at once.
info      what is cached: documents, tokens and bytes per split; verify=true also checks
          every shard's checksum.

recipe=NAME takes the data options (tokenizer included) of a recipe, so the cache is the one
`python -m zoo.fit recipe=NAME` uses; without it, the defaults of recipes/base. data=GROUP is a
file of recipes/data/ (edu, math, fineweb_edu, files, ...); data.KEY=VALUE overrides any data
option, e.g. data.sources.0.data_files='shards/*.parquet' data.sources.0.max_documents=null.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from zoo.cli import flag, key_values, number, run_command
from zoo.errors import ZooError, unknown

OPTIONS = ("recipe", "data", "num_proc", "node_rank", "num_nodes", "verify", "seed")


def data_config(args: dict[str, Any], argv: Sequence[str]) -> tuple[dict[str, Any], int]:
    """The ``data:`` section (and seed) that ``zoo.fit`` would use with these arguments."""
    import yaml
    from omegaconf import OmegaConf

    from zoo.cli import data_options
    from zoo.recipes import compose, recipes_dir

    data_args = [a for a in argv if a.startswith("data")]
    if args.get("recipe"):
        cfg = compose(str(args["recipe"]), data_args)
        data = OmegaConf.to_container(cfg.data, resolve=True)
        assert isinstance(data, dict)
        return data, int(cfg.seed)
    base = yaml.safe_load((recipes_dir() / "base" / "default.yaml").read_text())
    data = {k: v for k, v in base["data"].items() if k != "sources"}
    data.update(data_options(args.get("data") or "edu", args.get("data_overrides")))
    return data, int(base.get("seed", 1234))


def _main(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if command not in ("prepare", "info"):
        raise ZooError(f"unknown command '{command}'; available: prepare, info (see --help)")
    from omegaconf import OmegaConf

    from zoo.data import cache
    from zoo.data import prepare as prep
    from zoo.data.datamodule import TextDataModule

    raw = key_values(rest, OPTIONS)
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in rest if not a.startswith("data=")]))
    assert isinstance(parsed, dict)
    args: dict[str, Any] = {k: v for k, v in parsed.items() if k != "data"}
    args["data"] = raw.get("data")
    args["data_overrides"] = parsed.get("data") if isinstance(parsed.get("data"), dict) else None
    # every option is checked as typed before any work
    if "recipe" in raw:
        from zoo.recipes import check_recipe

        check_recipe(raw["recipe"])
    if "data" in raw:
        from zoo.recipes import list_group

        if raw["data"] not in list_group("data"):
            raise unknown("data option", raw["data"], list_group("data"))
    env_rank, env_nodes = prep.node_from_env()
    num_nodes = number(raw, "num_nodes", env_nodes, minimum=1)
    node_rank = number(raw, "node_rank", env_rank, minimum=0)
    if node_rank >= num_nodes:
        raise ZooError(f"node_rank must be below num_nodes ({num_nodes}), got {node_rank}")
    verify = flag(raw, "verify")
    num_proc = number(raw, "num_proc", None, minimum=1)
    seed_arg = number(raw, "seed", None, minimum=0)
    data, seed = data_config(args, rest)
    seed = seed if seed_arg is None else seed_arg
    if num_proc is not None:
        data["num_proc"] = num_proc
    dm = TextDataModule(seed=seed, **data)
    tok = dm.tokenizer
    sources = dm.eval_sources if dm.streaming else dm.sources
    if command == "info":
        for source in sources:
            folder = cache.source_dir(source, tok, dm.cache_dir)
            if not cache.is_complete(folder):
                print(f"{source.name}: not prepared ({folder})")
                continue
            print(f"{source.name}: {folder}")
            for split in ("train", "val", "test"):
                if (folder / split / "meta.json").is_file() and split not in source.EMPTY_OK:
                    s = cache.load_split(folder / split, verify=verify)
                    print(f"  {split:5s} {len(s):>10,d} docs {s.n_tokens:>14,d} tokens {s.n_bytes:>15,d} bytes")
            if verify:
                print("  checksums: ok")
        return
    pending = []
    for source in sources:
        done = prep.prepare_source(source, tok, dm.cache_dir, num_proc=dm.num_proc, node_rank=node_rank,
                                   num_nodes=num_nodes)
        if not done.complete:
            pending.append(source.name)
    if pending:
        print(f"node {node_rank} of {num_nodes}: its share is done; {', '.join(pending)} will be complete "
              "when every node has finished (the last one writes the index)")
    else:
        print("prepared:\n" + dm.describe())


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv,
                interrupt_note="finished shards are kept; run the same command again to continue")



if __name__ == "__main__":
    main()
