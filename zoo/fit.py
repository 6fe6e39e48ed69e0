"""Train a zoo model: ``python -m zoo.fit recipe=NAME [key=value ...]``.

The recipe is ``recipes/NAME.yaml``; any key of the composed config can be overridden
(``trainer.max_steps=20``, ``model=llama_small``, ``data=math``, ``logger=csv``). The run
writes ``runs/NAME/<time>/`` with checkpoints (``last.ckpt`` and the best by val BPB), the
logger's files (an offline W&B run by default), ``report.json`` and ``model/`` (the best
weights as safetensors + config + tokenizer), then prints train/val/test bits per byte
beside gzip, bz2 and xz on the same text.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from zoo.cli import run_command, user_errors
from zoo.errors import ZooError
from zoo.recipes import (
    GROUPS,
    compose_overrides,
    list_group,
    list_recipes,
    recipe_summary,
    recipes_dir,
    run_dir,
)

USAGE = """\
usage: python -m zoo.fit recipe=NAME [key=value ...]

  recipe=NAME        a recipe from recipes/ (listed below)
  key=value          override any config key, e.g. trainer.max_steps=20 optim.lr=3e-4
  GROUP=OPTION       swap a config group, e.g. model=llama_small data=math logger=csv
  resume=auto|PATH   continue the latest run of this recipe (or a given last.ckpt)
  --cfg job          print the composed config (every option, with its value) and exit
  --help             this message

recipes:
{recipes}
config groups:
{groups}
"""


def usage() -> str:
    recipes = "\n".join(f"  {r:18s} {recipe_summary(r)}" for r in list_recipes())
    groups = "\n".join(f"  {g:8s} {', '.join(list_group(g))}" for g in GROUPS)
    return USAGE.format(recipes=recipes, groups=groups)


# --------------------------------------------------------------------------- command line
def latest_run_dir(cfg: DictConfig) -> Path | None:
    """The newest run folder of this recipe that has a ``last.ckpt`` (for ``resume=auto``)."""
    base = Path(cfg.out_dir) / cfg.name
    runs = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent.parent if runs else None


def create_run_dir(path: Path) -> Path:
    """Create a new, empty run folder at ``path``, or at ``path_2``, ``path_3``, ... if it exists.

    ``mkdir`` without ``exist_ok`` is atomic: of two runs started in the same second (whose
    ``${now:...}`` folders are the same) only one can create a name, the other takes the next.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}_{n}")


def is_worker_process() -> bool:
    """Whether this process is one of several a launcher started (Lightning's DDP children,
    torchrun, the tasks of a SLURM job): those share the run folder of Hydra's pattern (or the
    launching process's), so none of them may take a ``_2`` name of its own."""
    if any(os.environ.get(k) for k in ("LOCAL_RANK", "RANK")):
        return True
    return any(os.environ.get(k, "1").isdigit() and int(os.environ.get(k, "1")) > 1 for k in ("WORLD_SIZE", "SLURM_NTASKS"))


def parse_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split the command line into (recipe, config overrides, other Hydra flags).

    ``recipe=NAME`` is rewritten as Hydra's ``--config-name=NAME`` (the form Lightning's DDP
    launcher passes back to child processes, which is accepted too).
    """
    recipe, overrides, flags = None, [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg.startswith("--config-name="):
            recipe = arg.split("=", 1)[1]
        elif arg in ("--config-name", "-cn"):
            recipe = next(it, None)
        elif arg.startswith("-"):
            flags.append(arg)
            if arg in ("--cfg", "-c", "--package", "-p", "--info"):
                nxt = next(it, None)
                if nxt is not None:
                    flags.append(nxt)
        else:
            overrides.append(arg)
    return recipe, overrides, flags


def _main(argv: list[str]) -> None:
    if argv[0] == "list":
        print(usage())
        return
    recipe, overrides, flags = parse_argv(argv)
    if recipe is None:
        raise ZooError(f"no recipe given; write recipe=NAME with one of: {', '.join(list_recipes())}")
    hydra_overrides = [o for o in overrides if o.startswith("hydra.")]
    # every check (names, keys, types, ranges) before any data is read or torch imported
    cfg, user = compose_overrides(recipe, [o for o in overrides if not o.startswith("hydra.")])
    overrides = [*user, *hydra_overrides]
    extra = []
    if not any(f in ("--cfg", "-c", "--info", "--multirun", "-m") for f in flags):  # a job runs
        from zoo.training import check_devices  # torch: only once the config is valid

        check_devices(cfg.trainer)  # a job that cannot start creates no run folder
        given_dir = any(o.startswith("hydra.run.dir=") for o in overrides)
        prev = latest_run_dir(cfg) if cfg.get("resume") == "auto" and not given_dir else None
        if prev is not None:  # resume=auto continues in the latest run's folder, on purpose
            extra.append(f"hydra.run.dir={prev}")
        elif not (cfg.get("resume") == "auto" and given_dir) and not is_worker_process():
            extra.append(f"hydra.run.dir={create_run_dir(run_dir(recipe, overrides))}")
            overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]

    import hydra
    from hydra.core.hydra_config import HydraConfig

    def run(cfg: DictConfig) -> None:
        from zoo.training import train  # heavy imports (torch, Lightning) only once input is valid

        logging.getLogger("zoo").setLevel(logging.INFO)
        with user_errors():  # raised inside Hydra's job: say it in one line here
            train(cfg, Path(HydraConfig.get().runtime.output_dir))

    sys.argv = [sys.argv[0], f"--config-name={recipe}", *flags, *overrides, *extra]
    hydra.main(config_path=str(recipes_dir()), config_name=None, version_base="1.3")(run)()


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, usage, argv)


if __name__ == "__main__":
    main()
