"""Publishing a trained model into the zoo (the work behind ``python -m zoo.publish``).

Copies a run's exported model into ``checkpoints/NAME/``, stores the weights in bfloat16
when that keeps val BPB within ``bf16_tolerance`` (0.002) of float32 (else float32),
evaluates it with :func:`zoo.evaluate.evaluate` on the val split of each data source in
``eval`` (with the model's own tokenizer, beside the five classical compressors on the same
text), writes ``card.md`` (:mod:`zoo.hub.card`: how it was trained, the exact
``python -m zoo.fit`` command, data, parameters, the metrics, dates, machine) and
``metrics.json``, rewrites the folder's ``sha256.json``, records every file's sha256 in
``checkpoints/manifest.json`` (:mod:`zoo.hub.manifest`) and regenerates the zoo page
``docs/zoo.md``. Works for every family: what differs between families comes from the model
contract (:mod:`zoo.models.base`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from zoo.compression import COMPRESSORS
from zoo.errors import ZooError, unknown
from zoo.hub.card import CARD, readme_table, render_card, write_zoo_page, zoo_table
from zoo.hub.checksums import sha256, write_checksums
from zoo.hub.folder import load_pretrained, save_pretrained
from zoo.hub.manifest import (
    MANIFEST,
    checkpoints_dir,
    manifest_entry,
    manifest_lock,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from zoo.hub.registry import data_description
from zoo.models import count_parameters, family_class

#: |BPB(bf16) - BPB(fp32)| up to which precision=auto stores bfloat16 weights
PRECISIONS = ("auto", "bf16", "fp32")
BF16_TOLERANCE = 0.002
#: tolerance the tests allow between a card's check BPB and a fresh evaluation (same batches,
#: same weights; only float summation order can differ between machines and thread counts)
CHECK_TOLERANCE = 1e-3
METRICS = "metrics.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


# --------------------------------------------------------------------------- helpers
def machine_description() -> str:
    """``2 CPU cores (AMD EPYC), Linux x86_64, torch 2.13.0+cpu, no GPU`` for cards."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = "no GPU"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.machine()}, torch {torch.__version__}, {gpu}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


#: keys that do not change what a run trains (where it writes, how it logs)
_IGNORED_KEYS = ("out_dir", "logger", "resume")


def _same_training(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if not k.startswith(_IGNORED_KEYS) and fa.get(k) != fb.get(k)]


def _hydra_value(v: Any) -> str:
    if isinstance(v, str):
        return v if re.fullmatch(r"[\w./:*-]+", v) else "'" + v.replace("'", "\\'") + "'"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | dict):
        return "'" + json.dumps(v).replace("'", "\\'") + "'"
    return str(v)


def fit_command(run: Mapping[str, Any], run_dir: Path | None) -> tuple[str, str]:
    """``(command, note)``: the ``python -m zoo.fit`` command that trained ``run``.

    Read from the run's ``.hydra/`` (recipe + overrides as typed) when the run folder is
    here, else rebuilt as the recipe ``run['name']`` plus the keys where the run differs from
    it. Either way it is checked by composing it again; ``note`` says if that differs now.
    """
    from zoo.recipes import compose, list_recipes

    recipe, overrides = None, []
    hydra = run_dir / ".hydra" if run_dir else None
    if hydra and (hydra / "hydra.yaml").is_file():
        h = yaml.safe_load((hydra / "hydra.yaml").read_text())["hydra"]
        recipe = h["job"].get("config_name")
        overrides = list(yaml.safe_load((hydra / "overrides.yaml").read_text()) or [])
    if recipe is None:
        recipe = str(run.get("name"))
        if recipe not in list_recipes():
            return f"python -m zoo.fit  # recipe '{recipe}' not found; the full config is in config.yaml", ""
        base = config_dict(compose(recipe))
        fr = _flatten(run)
        overrides = [f"{k}={_hydra_value(fr[k])}" for k in _same_training(run, base) if k in fr]
    overrides = [o for o in overrides if not o.split("=", 1)[0].lstrip("+").startswith(_IGNORED_KEYS)]
    command = " ".join(["python -m zoo.fit", f"recipe={recipe}", *overrides])
    note = ""
    try:
        now = config_dict(compose(recipe, overrides))
        fr, fn = _flatten(run), _flatten(now)
        differs = _same_training(run, now)
    except ZooError as e:
        fr, fn, differs = {}, {}, [str(e)]
    added = [k for k in differs if k in fn and k not in fr]  # options the recipes gained after the run
    changed = [k for k in differs if k not in added]
    parts = []
    if changed:
        parts.append(
            "The recipe has changed since this run: today the command composes a config that differs in "
            + ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "") + "."
        )
    if added:
        parts.append("Options added to the recipes after this run (not in its config): " + ", ".join(added[:8]) + ".")
    if parts:
        note = " ".join(parts) + " The run's exact config is `run:` in config.yaml."
    return command, note


def config_dict(cfg: Any) -> dict[str, Any]:
    """A composed config as plain data, interpolations resolved."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def training_start(run_dir: Path | None) -> dt.datetime | None:
    """When the run started: the first timestamp of its ``fit.log``."""
    log = run_dir / "fit.log" if run_dir else None
    if not log or not log.is_file():
        return None
    first = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]", log.read_text(), flags=re.M)
    return dt.datetime.strptime(first[1], "%Y-%m-%d %H:%M:%S") if first else None


def training_wall_time(run_dir: Path | None) -> float | None:
    """Seconds from the first timestamp of the run's ``fit.log`` to its ``report.json`` (written at the end)."""
    start = training_start(run_dir)
    report = run_dir / "report.json" if run_dir else None
    if start is None or not report or not report.is_file():
        return None
    return round((dt.datetime.fromtimestamp(report.stat().st_mtime) - start).total_seconds())


def find_run(model_folder: Path) -> Path | None:
    """The run folder whose exported ``model/`` holds the same weights (searched under ``runs*/``)."""
    if (model_folder.parent / "report.json").is_file() and model_folder.name == "model":
        return model_folder.parent
    target = sha256(model_folder / "model.safetensors")
    root = Path.cwd()
    for candidate in sorted(root.glob("runs*/*/*/model/model.safetensors")):
        if candidate.stat().st_size == (model_folder / "model.safetensors").stat().st_size and sha256(candidate) == target:
            return candidate.parent.parent
    return None


def resolve_source(run: str | None, name: str) -> tuple[Path, Path | None]:
    """``(model folder, run folder or None)`` for ``run=`` (or ``checkpoints/NAME`` in place)."""
    if run is None:
        folder = checkpoints_dir() / name
        if not (folder / "model.safetensors").is_file():
            raise ZooError(f"{folder} holds no model.safetensors; give run=runs/<recipe>/<time> to publish a run")
        return folder, find_run(folder)
    path = Path(run).expanduser()
    if (path / "model" / "model.safetensors").is_file():
        return path / "model", path
    if (path / "model.safetensors").is_file():
        return path, find_run(path)
    if path.is_dir() and list(path.glob("*/model/model.safetensors")):  # runs/<recipe>: the newest run
        newest = max(path.glob("*/model/model.safetensors"), key=lambda p: p.stat().st_mtime)
        return newest.parent, newest.parent.parent
    raise ZooError(f"run={run}: no exported model there (expected {path}/model/model.safetensors)")


def _eval(folder: Path, data: str | None, max_batches: int | None = None) -> dict[str, Any]:
    """Val metrics of ``folder`` on data group ``data`` (None: the model's own training data)."""
    from zoo.evaluate import evaluate
    from zoo.recipes import list_group, recipes_dir

    override = None
    if data is not None:
        if data not in list_group("data"):
            raise unknown("data option", data, list_group("data"))
        override = yaml.safe_load((recipes_dir() / "data" / f"{data}.yaml").read_text())
    t0 = time.perf_counter()
    row = evaluate(folder, split="val", data=override, max_batches=max_batches, accelerator="cpu")
    keep = ("bpb", "bpb_free_vector", "ce", "ppl", "entropy", "entropy_bpb", "tokens", "bytes",
            "bytes_per_token", *COMPRESSORS)
    out = {k: row[k] for k in keep if k in row}
    out.update(data=data or "+".join(row.get("sources", [])), split="val", seconds=round(time.perf_counter() - t0, 1))
    if max_batches is not None:
        out["max_batches"] = max_batches
    return out


def _all_float32(weights: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())


def _write(model: torch.nn.Module, tokenizer: Any, spec: dict[str, Any], folder: Path, dtype: torch.dtype,
           source: Path | None = None) -> None:
    """Save ``model`` with weights in ``dtype``. For float32 from a float32 ``source`` folder the
    weights file is copied byte for byte, so its sha256 stays what others (an adapter's
    ``base_sha256``) may have pinned."""
    if folder.exists():
        shutil.rmtree(folder)
    stored = copy.deepcopy(model).to(dtype)
    spec = {**spec, "weights_dtype": str(dtype).removeprefix("torch.")}
    save_pretrained(stored, tokenizer, spec, folder)
    if dtype == torch.float32 and source is not None and _all_float32(source / "model.safetensors"):
        shutil.copyfile(source / "model.safetensors", folder / "model.safetensors")
        write_checksums(folder)


# --------------------------------------------------------------------------- publish
def publish(
    name: str,
    run: str | None = None,
    precision: str = "auto",
    bf16_tolerance: float = BF16_TOLERANCE,
    eval_data: Sequence[str] = ("edu", "math"),
    check_batches: int = 2,
    description: str = "",
    table: bool = True,
    precision_reason: str = "",
    log: Any = print,
) -> dict[str, Any]:
    """Publish a model folder as ``checkpoints/NAME`` (see the module docstring); returns its card data.

    With ``table`` the zoo page (``docs/zoo.md``) is regenerated afterwards.
    """
    if not NAME_RE.match(name):
        raise ZooError(f"name={name!r}: use lowercase letters, digits, '.' and '-' (like mixer-edu)")
    if precision not in PRECISIONS:
        raise unknown("precision", precision, PRECISIONS)
    source, run_dir = resolve_source(run, name)
    root = checkpoints_dir()
    log(f"publishing {source} as {root / name}" + (f" (run {run_dir})" if run_dir else ""))
    model, tokenizer, spec = load_pretrained(source)
    spec.pop("weights_dtype", None)
    run_cfg = dict(spec.get("run") or {})
    staging = root / f".{name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    own_data = data_description(run_cfg) or None

    # precision: float32 as trained vs bfloat16, both scored on the full val split of the first eval data
    first = eval_data[0] if eval_data else None
    fp32_dir, bf16_dir = staging / "fp32", staging / "bf16"
    checks: dict[str, Any] = {"tolerance": bf16_tolerance, "data": first or own_data, "split": "val"}
    _write(model, tokenizer, spec, fp32_dir, torch.float32, source=source)
    fp32_row = _eval(fp32_dir, first)
    checks["fp32_bpb"] = fp32_row["bpb"]
    chosen, rows = "float32", {first: fp32_row} if first else {}
    # bf16 is always measured (the card says what it would cost), and chosen unless precision=fp32
    _write(model, tokenizer, spec, bf16_dir, torch.bfloat16)
    bf16_row = _eval(bf16_dir, first)
    checks["bf16_bpb"] = bf16_row["bpb"]
    checks["delta"] = bf16_row["bpb"] - fp32_row["bpb"]
    if precision == "bf16" or (precision == "auto" and abs(checks["delta"]) <= bf16_tolerance):
        chosen, rows = "bfloat16", {first: bf16_row} if first else {}
    checks["stored"] = chosen
    if precision_reason:
        checks["reason"] = precision_reason
    log(f"  val BPB fp32 {checks['fp32_bpb']:.5f}" + (
        f", bf16 {checks['bf16_bpb']:.5f} (delta {checks['delta']:+.1e}, tolerance {bf16_tolerance})"
        if "bf16_bpb" in checks else "") + f": stored as {chosen}")
    final = staging / "final"
    (bf16_dir if chosen == "bfloat16" else fp32_dir).rename(final)
    for d in (fp32_dir, bf16_dir):
        if d.exists():
            shutil.rmtree(d)

    for data in eval_data[1:]:
        rows[data] = _eval(final, data)
    for data, row in rows.items():
        log(f"  {data}/val: BPB {row['bpb']:.4f}  xz -9 {row['xz']:.4f}  ({row['seconds']} s)")
    check = _eval(final, None, max_batches=check_batches)
    check["tolerance"] = CHECK_TOLERANCE
    log(f"  check ({check['data']}/val, {check_batches} batches): BPB {check['bpb']:.6f}")

    command, command_note = fit_command(run_cfg, run_dir)
    n_params = count_parameters(model)
    stamp = re.fullmatch(r"(\d{4}-\d\d-\d\d)_(\d\d)-(\d\d)-(\d\d)", run_dir.name) if run_dir else None
    started = training_start(run_dir)  # a run folder named otherwise (hydra.run.dir=...): its log's first line
    card: dict[str, Any] = {
        "name": name,
        "family": spec["model"].get("family"),
        "description": description or default_description(spec),
        "parameters": n_params,
        "weights": chosen,
        "file_bytes": (final / "model.safetensors").stat().st_size,
        "data": own_data,
        "layout": spec.get("layout"),
        "vocab_size": spec["vocab_size"],
        "n_ctx": spec["n_ctx"],
        "command": command,
        "trained": (f"{stamp[1]} {stamp[2]}:{stamp[3]}" if stamp
                    else started.strftime("%Y-%m-%d %H:%M") if started else None),
        "training_seconds": training_wall_time(run_dir),
        "run": _relative(run_dir) if run_dir else None,
        "published": dt.date.today().isoformat(),
        "machine": machine_description(),
        "precision_check": checks,
        "eval": rows,
        "check": check,
    }
    if command_note:
        card["command_note"] = command_note
    report = _read_json(run_dir / "report.json") if run_dir else None
    metrics = {"card": card, "train_report": report}
    (final / METRICS).write_text(json.dumps(metrics, indent=1))
    (final / CARD).write_text(render_card(card, spec))
    write_checksums(final)

    target = _install(final, root, name, card)
    log(f"  wrote {target} and {root / MANIFEST}")
    if table:
        update_zoo_page(root, log)
    return card


def _install(final: Path, root: Path, name: str, card: Mapping[str, Any]) -> Path:
    """Move ``final`` to ``root/name`` (the old folder is kept until the new one is in place)
    and record it in the manifest."""
    target, old = root / name, root / f".{name}.old"
    with manifest_lock(root):
        if old.exists():
            shutil.rmtree(old)
        if final != target:
            if target.exists():
                target.rename(old)
            final.rename(target)
            if final.parent.name.endswith(".staging"):
                shutil.rmtree(final.parent, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        manifest = read_manifest(root)
        manifest["models"][name] = manifest_entry(card, target)
        write_manifest(manifest, root)
    return target


def recard(name: str, table: bool = True, log: Any = print) -> dict[str, Any]:
    """Re-render ``checkpoints/NAME/card.md`` from its ``metrics.json`` (no re-evaluation: the
    weights and measured numbers stay), refresh the training-command note, the checksums, the
    manifest entry and the zoo page. For card-format changes."""
    folder, metrics = _published(name)
    root, card = folder.parent, dict(metrics["card"])
    spec = yaml.safe_load((folder / "config.yaml").read_text())
    run_dir = Path(card["run"]) if card.get("run") and Path(card["run"]).is_dir() else None
    card["command"], note = fit_command(dict(spec.get("run") or {}), run_dir)
    card.pop("command_note", None)
    if note:
        card["command_note"] = note
    if card.get("run"):
        card["run"] = _relative(Path(card["run"]))
    metrics["card"] = card
    _rewrite(folder, metrics, spec, log)
    log(f"re-rendered {folder / CARD}")
    if table:
        update_zoo_page(root, log)
    return card


def recompress(name: str, table: bool = True, log: Any = print) -> dict[str, Any]:
    """Score ``checkpoints/NAME`` again on each data group of its card and add to every row the
    classical compressors it lacks (:data:`zoo.compression.COMPRESSORS`), on the same scored
    text. The model's own numbers must come out as the card has them (BPB within
    :data:`CHECK_TOLERANCE`, the same tokens and bytes), or nothing is written; the weights
    and every number already on the card stay. For cards published before zstd and PPMd."""
    folder, metrics = _published(name)
    root, card = folder.parent, dict(metrics["card"])
    rows = {}
    for data, old in card["eval"].items():
        new = _eval(folder, data)
        if (abs(new["bpb"] - old["bpb"]) > CHECK_TOLERANCE or new.get("tokens") != old.get("tokens")
                or new.get("bytes") != old.get("bytes")):
            raise ZooError(f"{name}: {data}/val scores BPB {new['bpb']:.6f} on {new.get('bytes')} bytes, the card "
                           f"{old['bpb']:.6f} on {old.get('bytes')}: the card does not reproduce, nothing written")
        rows[data] = {**old, **{c: new[c] for c in COMPRESSORS if c not in old}}
        log(f"  {data}/val: BPB {new['bpb']:.4f} (card {old['bpb']:.4f}); "
            + ", ".join(f"{c} {rows[data][c]:.4f}" for c in COMPRESSORS))
    card["eval"] = rows
    metrics["card"] = card
    _rewrite(folder, metrics, yaml.safe_load((folder / "config.yaml").read_text()), log)
    log(f"added the compressors to {folder / CARD}")
    if table:
        update_zoo_page(root, log)
    return card


def _published(name: str) -> tuple[Path, dict[str, Any]]:
    """``checkpoints/NAME`` and its metrics.json (which holds the card)."""
    folder = checkpoints_dir() / name
    metrics = _read_json(folder / METRICS)
    if not metrics or "card" not in metrics:
        raise ZooError(f"{folder} has no {METRICS} with a card; publish it with run=... instead")
    return folder, metrics


def _rewrite(folder: Path, metrics: Mapping[str, Any], spec: Mapping[str, Any], log: Any) -> None:
    """Write a published folder's metrics.json and card.md, its checksums and its manifest entry."""
    (folder / METRICS).write_text(json.dumps(metrics, indent=1))
    (folder / CARD).write_text(render_card(metrics["card"], spec))
    write_checksums(folder)
    _install(folder, folder.parent, folder.name, metrics["card"])


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def default_description(spec: Mapping[str, Any]) -> str:
    """The card's one line when none is given: the family's own summary of its options."""
    options = {k: v for k, v in spec["model"].items() if k != "family"}
    return family_class(str(spec["model"].get("family"))).summarize(options)


def verify_all(log: Any = print) -> int:
    """Check every published folder against the manifest; the number of failures."""
    manifest = read_manifest()["models"]
    failures = 0
    for name in manifest:
        try:
            verify_manifest(name)
            log(f"ok    {name}")
        except ZooError as e:
            failures += 1
            log(f"FAIL  {name}: {e}")
    return failures


def update_zoo_page(root: Path | None = None, log: Any = print) -> Path:
    """Regenerate ``docs/zoo.md`` from the cards, and say so when the README's static copy of the
    table (which no code rewrites) no longer matches it."""
    root = root or checkpoints_dir()
    path = write_zoo_page(root)
    log(f"  wrote the model-zoo table to {path}")
    readme = path.parent.parent / "README.md"  # beside docs/
    if readme.is_file():
        static = readme_table(readme.read_text())
        if static is not None and static != zoo_table(root).strip():
            log(f"  {readme}'s model-zoo table differs from it now: paste the table of {path} between its "
                "zoo-table markers (tests/test_zoo_table.py checks)")
    return path
