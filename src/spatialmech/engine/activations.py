"""Recorded activations, in memory (`Activations`) or streamed to safetensors shards (`ActivationStore`).

Both keep, per site, one flat (rows, hidden) tensor plus per-item row counts, so an item's values
are a zero-copy view and a batch goes to disk without re-packing. On disk a store is a folder of
shards `shard-00000.safetensors`, ... (each written atomically) and `index.json` (rewritten
atomically after every shard), so an interrupted run leaves a valid store of the items written so
far. Readers open shards lazily and never load more than they are asked for.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spatialmech.errors import UserInputError
from spatialmech.io import atomic_write_text, read_json

STORE_FORMAT = "spatialmech-activations/1"


@dataclass
class SiteValues:
    """One site's values for a group of items: flat rows, row offsets per item, LM positions per item."""

    flat: torch.Tensor  # (rows, hidden)
    offsets: torch.Tensor  # (items + 1,) row offsets into `flat`
    positions: torch.Tensor  # (positions,) LM positions, concatenated over items
    position_offsets: torch.Tensor  # (items + 1,)

    @property
    def num_items(self) -> int:
        return int(self.offsets.numel()) - 1

    def item(self, i: int) -> torch.Tensor:
        return self.flat[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def item_positions(self, i: int) -> torch.Tensor:
        return self.positions[int(self.position_offsets[i]) : int(self.position_offsets[i + 1])]


def _offsets(counts: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(list(counts), dtype=torch.long).cumsum(0).tolist()], dtype=torch.long)


class Activations:
    """Values recorded in one run (one batch): `acts[site]` -> list over rows of (n_rows_i, hidden).

    `n_rows_i` is the number of selected positions (times `rows_per_lm_token` for `vision.out`).
    `acts.positions(site)` gives the LM positions each row was recorded at.
    """

    def __init__(self, sites: Mapping[str, SiteValues]):
        self.sites = dict(sites)

    @classmethod
    def from_flat(
        cls, values: Mapping[str, tuple[torch.Tensor, Sequence[int]]], positions: Mapping[str, Sequence[torch.Tensor]]
    ) -> Activations:
        out = {}
        for site, (flat, counts) in values.items():
            pos = list(positions[site])
            out[site] = SiteValues(
                flat=flat,
                offsets=_offsets(counts),
                positions=torch.cat(pos) if pos else torch.zeros(0, dtype=torch.long),
                position_offsets=_offsets([int(p.numel()) for p in pos]),
            )
        return cls(out)

    def __contains__(self, site: str) -> bool:
        return site in self.sites

    def __getitem__(self, site: str) -> list[torch.Tensor]:
        values = self._site(site)
        return [values.item(i) for i in range(values.num_items)]

    def _site(self, site: str) -> SiteValues:
        if site not in self.sites:
            raise UserInputError(f"site {site} was not recorded", f"record it (recorded: {', '.join(self.sites)})")
        return self.sites[site]

    def positions(self, site: str) -> list[torch.Tensor]:
        values = self._site(site)
        return [values.item_positions(i) for i in range(values.num_items)]

    def flat(self, site: str) -> torch.Tensor:
        """All rows of all items, concatenated: (sum of n_rows_i, hidden)."""
        return self._site(site).flat

    def stacked(self, site: str) -> torch.Tensor:
        """(batch, n, hidden) when every row recorded the same number of positions."""
        rows = self[site]
        if len({r.shape[0] for r in rows}) > 1:
            raise UserInputError(f"rows of {site} have different position counts", "use acts[site] (a list) instead")
        return torch.stack(rows)

    @property
    def num_items(self) -> int:
        return next(iter(self.sites.values())).num_items if self.sites else 0

    @property
    def nbytes(self) -> int:
        return sum(v.flat.numel() * v.flat.element_size() for v in self.sites.values())


# ------------------------------------------------------------------------------------------ on disk


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors save to a temporary sibling, fsync, rename: a shard is either complete or absent."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={"format": STORE_FORMAT})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserInputError(f"could not write {path} ({exc.strerror or exc})", "free disk space or choose another folder") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ActivationWriter:
    """Appends batches of `Activations` to a store folder, writing a shard every `shard_items` items.

    Memory held: the batches not yet written (at most `shard_items` items plus one batch). Reopening
    an existing folder appends after the items already stored (resume).
    """

    def __init__(self, folder: str | os.PathLike, shard_items: int = 256):
        if shard_items < 1:
            raise UserInputError(f"shard_items must be >= 1, got {shard_items}", "pass a positive number of items per shard")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_items = shard_items
        self.index = self._read_or_new_index()
        self.pending: list[Activations] = []
        self.pending_items = 0

    def _read_or_new_index(self) -> dict:
        path = self.folder / "index.json"
        if path.exists():
            index = read_json(path, "activation store index")
            if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
                raise UserInputError(f"{path} is not a spatialmech activation store index", "choose an empty folder")
            return index
        return {"format": STORE_FORMAT, "sites": {}, "shards": [], "num_items": 0}

    @property
    def num_items(self) -> int:
        """Items written to disk plus items waiting for the next shard."""
        return int(self.index["num_items"]) + self.pending_items

    def add(self, acts: Activations) -> None:
        if not acts.sites:
            raise UserInputError("nothing was recorded", "pass at least one site to record")
        known = self.index["sites"]
        for site, values in acts.sites.items():
            spec = {"hidden": int(values.flat.shape[-1]), "dtype": str(values.flat.dtype).removeprefix("torch.")}
            if site in known and known[site] != spec:
                raise UserInputError(f"site {site} changed shape/dtype within a store ({known[site]} -> {spec})", "use one store per model")
            known.setdefault(site, spec)
        if known and set(acts.sites) != set(known):
            raise UserInputError(
                f"batch records sites {sorted(acts.sites)}, the store holds {sorted(known)}", "record the same sites for every batch"
            )
        self.pending.append(acts)
        self.pending_items += acts.num_items
        if self.pending_items >= self.shard_items:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        tensors: dict[str, torch.Tensor] = {}
        for site in self.index["sites"]:
            parts = [a.sites[site] for a in self.pending]
            tensors[f"{site}/values"] = parts[0].flat.contiguous() if len(parts) == 1 else torch.cat([p.flat for p in parts])
            tensors[f"{site}/counts"] = torch.cat([p.offsets.diff() for p in parts])
            tensors[f"{site}/positions"] = torch.cat([p.positions for p in parts])
            tensors[f"{site}/position_counts"] = torch.cat([p.position_offsets.diff() for p in parts])
        number = len(self.index["shards"])
        name = f"shard-{number:05d}.safetensors"
        _atomic_save_file(tensors, self.folder / name)
        del tensors
        self.index["shards"].append({"file": name, "first_item": int(self.index["num_items"]), "items": self.pending_items})
        self.index["num_items"] = int(self.index["num_items"]) + self.pending_items
        self.pending, self.pending_items = [], 0
        atomic_write_text(self.folder / "index.json", json.dumps(self.index, indent=1))

    def close(self) -> ActivationStore:
        self.flush()
        if not (self.folder / "index.json").exists():
            atomic_write_text(self.folder / "index.json", json.dumps(self.index, indent=1))
        return ActivationStore(self.folder)

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.flush()  # keep what was computed; a resumed run appends after it


class ActivationStore:
    """Read side of a store folder: `store.item(site, i)`, `store.iter(site)`, `store.load(site, items)`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise UserInputError(f"{self.folder} is not an activation store (no index.json)", "pass the folder given to cache_to_disk")
        self.index = read_json(index_path, "activation store index")
        if not isinstance(self.index, dict) or self.index.get("format") != STORE_FORMAT:
            raise UserInputError(f"{index_path} is not a spatialmech activation store index", "pass the folder given to cache_to_disk")
        self._counts: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_items(self) -> int:
        return int(self.index["num_items"])

    @property
    def sites(self) -> list[str]:
        return list(self.index["sites"])

    def _shard_of(self, item: int) -> tuple[int, int]:
        if not 0 <= item < self.num_items:
            raise UserInputError(f"item {item} is outside the store (0..{self.num_items - 1})", "ask for a stored item")
        for number, shard in enumerate(self.index["shards"]):
            if shard["first_item"] <= item < shard["first_item"] + shard["items"]:
                return number, item - shard["first_item"]
        raise RuntimeError(f"store index of {self.folder} does not cover item {item}")

    def _offsets(self, number: int, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (number, site)
        if key not in self._counts:
            self._check_site(site)
            with safe_open(self.folder / self.index["shards"][number]["file"], framework="pt") as shard:
                counts = shard.get_tensor(f"{site}/counts")
                position_counts = shard.get_tensor(f"{site}/position_counts")
            self._counts[key] = (_offsets(counts.tolist()), _offsets(position_counts.tolist()))
        return self._counts[key]

    def _check_site(self, site: str) -> None:
        if site not in self.index["sites"]:
            raise UserInputError(f"site {site} is not in the store", f"stored sites: {', '.join(self.sites)}")

    def item(self, site: str, item: int) -> torch.Tensor:
        """One item's (n_rows, hidden) values, read from its shard alone."""
        number, local = self._shard_of(item)
        offsets, _ = self._offsets(number, site)
        with safe_open(self.folder / self.index["shards"][number]["file"], framework="pt") as shard:
            return shard.get_slice(f"{site}/values")[int(offsets[local]) : int(offsets[local + 1])]

    def positions(self, site: str, item: int) -> torch.Tensor:
        number, local = self._shard_of(item)
        _, offsets = self._offsets(number, site)
        with safe_open(self.folder / self.index["shards"][number]["file"], framework="pt") as shard:
            return shard.get_slice(f"{site}/positions")[int(offsets[local]) : int(offsets[local + 1])]

    def iter_shards(self, site: str) -> Iterator[SiteValues]:
        """One shard at a time (the unit to stream over without holding the store)."""
        self._check_site(site)
        for number, shard_info in enumerate(self.index["shards"]):
            offsets, position_offsets = self._offsets(number, site)
            with safe_open(self.folder / shard_info["file"], framework="pt") as shard:
                yield SiteValues(shard.get_tensor(f"{site}/values"), offsets, shard.get_tensor(f"{site}/positions"), position_offsets)

    def iter(self, site: str) -> Iterator[torch.Tensor]:
        """Every item's values in order, holding one shard at a time."""
        for values in self.iter_shards(site):
            for i in range(values.num_items):
                yield values.item(i)

    def load(self, site: str, items: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The values of the given items (default all); loads only the shards they live in."""
        if items is None:
            return [t.clone() for t in self.iter(site)]
        return [self.item(site, int(i)) for i in items]
