"""Sources on the Hugging Face hub (``hub``, ``fineweb-edu``, ``finemath``), streamed with
``datasets``, or local parquet shards of the same schema (``data_files=``), read with pyarrow.

Nothing touches the network before the first read; an unreachable or switched-off hub is a
one-line error within seconds, never a hang.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.data.sources.base import CORPUS_HINT, UNIT_BYTES, Source, Unit, clean_text
from zoo.data.sources.options import check_count, check_string, check_string_list
from zoo.data.sources.readers import file_stats, parquet_units, read_parquet, resolve_paths
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError, did_you_mean

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / ...)."""
    if any(
        os.environ.get(var, "").strip().upper() in _TRUE
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        import datasets.config
    except ImportError:
        return False
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _hub_error(source: str, path: str, why: str) -> ZooError:
    return ZooError(
        f"source '{source}': cannot stream '{path}' from the Hugging Face hub: {why}. "
        f"To train without network, point it at local parquet files with the same columns "
        f"(data_files=...), or use the embedded corpora: source 'edu' (FineWeb-edu stand-in) or "
        f"'math' (FineMath stand-in), installed with {CORPUS_HINT}"
    )


def _probe_hub(source: str, path: str, revision: str | None) -> None:
    """Ask the hub about the dataset once, with a short timeout and no retries.

    ``datasets`` retries an unreachable hub with back-off (about 25 s here, far longer where
    packets are dropped rather than refused), so one quick ``dataset_info`` call first turns
    "no network", "no such dataset" and "gated" into a prompt, clear :class:`ZooError`. The
    timeout is ``HF_HUB_ETAG_TIMEOUT`` (default 10 s).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    timeout = float(getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10) or 10)
    try:
        HfApi().dataset_info(path, revision=revision, timeout=timeout)
    except hub_errors.GatedRepoError:
        raise _hub_error(
            source,
            path,
            "the dataset is gated; accept its terms on huggingface.co and log in (hf auth login)",
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise _hub_error(
            source, path, "no such dataset (or it is private: log in with hf auth login)"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise _hub_error(source, path, f"no revision '{revision}'") from None
    except hub_errors.HfHubHTTPError as e:
        raise _hub_error(source, path, f"the hub answered with an error ({e})") from None
    except Exception as e:  # no DNS, refused, timed out, proxy trouble: all mean unreachable
        raise _hub_error(
            source, path, f"the hub is unreachable ({type(e).__name__}: {e}; timeout {timeout:g} s)"
        ) from None


@register_source("hub")
@register_source("fineweb-edu", path="HuggingFaceFW/fineweb-edu", config="sample-10BT")
@register_source("finemath", path="HuggingFaceTB/finemath", config="finemath-4plus")
class HubSource(Source):
    """A text column streamed with ``datasets.load_dataset(..., streaming=True)``.

    ``path``/``config``/``revision`` name a hub dataset; ``data_files`` instead reads local
    parquet files of the same schema (how FineWeb-edu/FineMath shards are used offline, and
    how the tests exercise this path). ``max_documents`` caps the rows read (before
    splitting).

    Units: local parquet files are cut into runs of row groups of about 64 MB of text (the
    footer says where, so a capped read needs no pass over the data); a hub stream is one
    unit per hub file, or one unit in all when ``max_documents`` caps it. Nothing touches the network before the first
    :meth:`documents` call; with the hub unreachable or switched off that call raises a
    :class:`ZooError` within seconds.
    """

    OPTIONS = {
        "path": None,
        "config": None,
        "revision": None,
        "text_column": "text",
        "max_documents": None,
        "data_files": None,
        "min_chars": 1,
        "unit_bytes": UNIT_BYTES,
    }

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.path = check_string(name, options, "path", optional=True)
        self.config = check_string(name, options, "config", optional=True)
        self.revision = check_string(name, options, "revision", optional=True)
        self.text_column = check_string(name, options, "text_column")
        self.max_documents = check_count(name, options, "max_documents", minimum=1, optional=True)
        self.min_chars = check_count(name, options, "min_chars", minimum=1)
        self.unit_bytes = check_count(name, options, "unit_bytes", minimum=1)
        self.data_files: list[Path] | None = None
        if options["data_files"] is not None:
            patterns = check_string_list(name, options, "data_files")
            self.data_files = resolve_paths(name, "data_files", patterns, (".parquet",))
        elif self.path is None:
            raise ZooError(
                f"source '{name}' needs path= (a hub dataset id such as HuggingFaceFW/fineweb-edu) "
                f"or data_files= (local parquet files)"
            )
        self._dataset: Any = None
        self._where = ""

    def _content_key(self) -> dict[str, Any]:
        return {"data_files": file_stats(self.data_files) if self.data_files else None}

    def _open(self) -> Any:
        """The hub ``IterableDataset`` holding only the text column (built once, then reused)."""
        if self._dataset is not None:
            return self._dataset
        import datasets

        where = f"'{self.path}'" + (f" config '{self.config}'" if self.config else "")
        if hub_offline():
            raise _hub_error(
                self.name,
                self.path,
                "the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)",
            )
        _probe_hub(self.name, self.path, self.revision)
        try:
            dataset = datasets.load_dataset(
                self.path,
                name=self.config,
                split="train",
                streaming=True,
                revision=self.revision,
            )
        except ValueError as e:  # e.g. an unknown config: the message lists the available ones
            raise ZooError(f"source '{self.name}': cannot open {where}: {e}") from None
        except (OSError, datasets.exceptions.DatasetsError) as e:
            raise _hub_error(self.name, self.path, f"{type(e).__name__}: {e}") from None
        columns = dataset.column_names
        if columns is not None and self.text_column not in columns:
            raise ZooError(
                f"source '{self.name}': {where} has no text column "
                f"'{self.text_column}'{did_you_mean(self.text_column, columns)}; "
                f"columns present: {', '.join(columns)}; set text_column="
            )
        feature = (dataset.features or {}).get(self.text_column)
        dtype = getattr(feature, "dtype", "string")
        if dtype not in ("string", "large_string", "string_view"):
            raise ZooError(
                f"source '{self.name}': column '{self.text_column}' of {where} is {feature}, not text"
            )
        self._where = where
        self._dataset = dataset.select_columns([self.text_column])
        return self._dataset

    def units(self) -> list[Unit]:
        if self.data_files is not None:
            return self._file_units()
        if self.max_documents is not None:  # a capped stream: where it stops is known only by reading
            return [Unit(0, f"{self.path} (first {self.max_documents:,} rows)")]
        n = self._open().num_shards
        return [Unit(i, f"{self.path} shard {i + 1}/{n}", 0, ("shard", i, n)) for i in range(n)]

    def _file_units(self) -> list[Unit]:
        assert self.data_files is not None
        units: list[Unit] = []
        left = self.max_documents
        for path in self.data_files:
            if left is not None and left <= 0:
                break
            before = 0
            for a, b, size, rows in parquet_units(path, self.text_column, self.unit_bytes, max_rows=left):
                n, before = rows - before, rows
                cap = left if left is not None and n > left else None
                units.append(Unit(len(units), f"{path.name} row groups {a}-{b - 1}", size, ("parquet", str(path), a, b, cap)))
                if left is not None:
                    left -= min(n, left)
        return units

    def _raw(self, unit: Unit) -> Iterator[str]:
        if unit.locator and unit.locator[0] == "parquet":
            _, path, a, b, cap = unit.locator
            return read_parquet(Path(path), self.text_column, row_groups=(a, b), max_rows=cap)
        stream = self._open()
        if unit.locator:  # one hub file
            _, i, n = unit.locator
            stream = stream.shard(num_shards=n, index=i, contiguous=True)
        return self._rows(itertools.islice(iter(stream), self.max_documents))

    def _rows(self, rows: Iterator[dict]) -> Iterator[str]:
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except (OSError, ValueError) as e:  # a corrupt shard, a dropped connection
                raise ZooError(
                    f"source '{self.name}': error while streaming {self._where}: {e}"
                ) from None
            yield row[self.text_column]

    def unit_documents(self, unit: Unit) -> Iterator[str]:
        for text in self._raw(unit):
            if isinstance(text, str):
                text = clean_text(text)
                if len(text) >= self.min_chars:
                    yield text

    def _all_documents(self) -> Iterator[str]:
        for unit in self.units():
            yield from self.unit_documents(unit)
