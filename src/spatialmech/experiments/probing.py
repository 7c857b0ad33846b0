"""Linear probes on recorded activations: training, evaluation, and the safetensors probe file.

Both probe experiments use this module. `probe` (paper §5.2.1) fits a 3-class ordinal-position probe
per axis on object tokens and applies it to every image token; `amplify` (§5.4) fits a 2-class
first/second probe per axis whose weight columns are the directions it amplifies. The paper trains
both the same way: one linear layer, cross-entropy, AdamW (lr 1e-3, weight decay 1e-4), 200
full-batch epochs; `ProbeTraining` holds those defaults so experiments can expose them as config.

A probe's weight is stored as W (hidden, classes), column c scoring class c: that is the paper's
D x C matrix the amplification reads, so no transposes leak into experiment code. Probe files are
safetensors (tensors `<name>.weight`, `<name>.bias`) with JSON metadata (site, classes, model
fingerprint, ...) under the `spatialmech` key; nothing is pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from spatialmech.errors import UserInputError
from spatialmech.io import atomic_write_bytes, to_jsonable

PROBE_FORMAT = "spatialmech-probes/1"
METADATA_KEY = "spatialmech"


@dataclass(frozen=True)
class ProbeTraining:
    """The paper's probe optimisation (identical for both probe experiments)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 200

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProbeTraining:
        return cls(lr=float(config["lr"]), weight_decay=float(config["weight_decay"]), epochs=int(config["epochs"]))


@dataclass
class LinearProbe:
    """logits = features @ weight + bias, with weight (hidden, classes) and bias (classes,)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # per-probe facts kept in files (axis, accuracy, ...)

    def __post_init__(self) -> None:
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32)
        self.bias = torch.as_tensor(self.bias, dtype=torch.float32)
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[1],) or len(self.classes) != self.weight.shape[1]:
            raise UserInputError(
                f"probe has weight {tuple(self.weight.shape)}, bias {tuple(self.bias.shape)} and {len(self.classes)} class names",
                "a probe needs weight (hidden, classes), bias (classes,) and one name per class",
            )

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.hidden_size:
            raise UserInputError(
                f"probe expects features of size {self.hidden_size}, got {features.shape[-1]}",
                "apply the probe to activations of the model and site it was trained on",
            )
        return features.float() @ self.weight.to(features.device) + self.bias.to(features.device)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=-1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of rows predicted right (NaN for no rows)."""
        if labels.numel() == 0:
            return float("nan")
        return float((self.predict(features).cpu() == labels.cpu()).float().mean())

    # JSON form, for resumable units: float32 -> Python float -> float32 is exact.
    def to_json(self) -> dict[str, Any]:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist(), "classes": list(self.classes), "info": to_jsonable(self.info)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinearProbe:
        return cls(torch.tensor(data["weight"]), torch.tensor(data["bias"]), list(data["classes"]), dict(data.get("info", {})))


def train_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    training: ProbeTraining = ProbeTraining(),
    seed: int = 0,
) -> LinearProbe:
    """Fit a linear probe by full-batch AdamW on cross-entropy, deterministically from `seed`.

    Initialised like `torch.nn.Linear` (uniform in +-1/sqrt(hidden)) from a private generator, so the
    global RNG is untouched and the same inputs always give the same probe.
    """
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not pair up")
    if features.shape[0] == 0:
        raise UserInputError("no examples to train the probe on", "use more items (or --n), or check the filtering report")
    n_classes = len(classes)
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got {sorted(set(labels.tolist()))}")
    x = features.detach().float()
    hidden = x.shape[1]
    generator = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(hidden)
    weight = ((torch.rand(hidden, n_classes, generator=generator) * 2 - 1) * bound).requires_grad_(True)
    bias = ((torch.rand(n_classes, generator=generator) * 2 - 1) * bound).requires_grad_(True)
    optimizer = torch.optim.AdamW([weight, bias], lr=training.lr, weight_decay=training.weight_decay)
    with torch.enable_grad():
        for _ in range(training.epochs):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, labels)
            loss.backward()
            optimizer.step()
    probe = LinearProbe(weight.detach().clone(), bias.detach().clone(), list(classes))
    probe.info["train_loss"] = float(torch.nn.functional.cross_entropy(probe.logits(x), labels))
    return probe


def split_indices(n: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of range(n) into (train, test), each sorted; `n_test` test indices."""
    if not 0 <= n_test <= n:
        raise ValueError(f"cannot hold out {n_test} of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def held_out_count(n: int, fraction: float) -> int:
    """How many of n to hold out for a fraction: at least one when n >= 2, leaving at least one to train."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def image_key(item: Any) -> str:
    """Items asking different questions about one picture share this key (their image features are
    identical): used to keep a picture on one side of every split."""
    objects = [(o.attribute, list(o.box_px), list(o.color) if o.color else None, o.shape) for o in item.objects]
    return json.dumps(
        [item.task, item.image_path, item.background, list(item.image_size), objects, (item.meta or {}).get("sources")], sort_keys=True
    )


# ------------------------------------------------------------------------------------------ files


@dataclass
class ProbeFile:
    """What a probe file holds: named probes (e.g. one per axis) and the run's metadata."""

    probes: dict[str, LinearProbe]
    metadata: dict[str, Any]


def save_probes(path: str | Path, probes: Mapping[str, LinearProbe], metadata: Mapping[str, Any]) -> Path:
    """Write probes to a safetensors file atomically; `metadata` (JSON-able) is stored alongside."""
    if not probes:
        raise ValueError("no probes to save")
    tensors: dict[str, torch.Tensor] = {}
    for name, probe in probes.items():
        if "." in name:
            raise ValueError(f"probe name {name!r} must not contain '.'")
        tensors[f"{name}.weight"] = probe.weight.detach().float().contiguous().cpu()
        tensors[f"{name}.bias"] = probe.bias.detach().float().contiguous().cpu()
    meta = {
        "format": PROBE_FORMAT,
        **to_jsonable(dict(metadata)),
        "probes": {name: {"classes": list(p.classes), "hidden_size": p.hidden_size, **to_jsonable(p.info)} for name, p in probes.items()},
    }
    data = safetensors_bytes(tensors, metadata={"format": PROBE_FORMAT, METADATA_KEY: json.dumps(meta, sort_keys=True)})
    target = Path(path)
    if target.is_dir():
        raise UserInputError(f"probe file {target} is a folder", "pass a file name such as probes.safetensors")
    try:
        return atomic_write_bytes(target, data)
    except OSError as exc:
        raise UserInputError(f"could not write probe file {target} ({exc.strerror or exc})", "choose a writable path") from exc


def load_probes(path: str | Path) -> ProbeFile:
    """Read a probe file written by `save_probes`, with one-line errors for anything else."""
    source = Path(path)
    fix = "pass a probe file written by `spatialmech run probe` or `spatialmech run amplify --save-probe`"
    if not source.is_file():
        raise UserInputError(f"probe file {source} does not exist", fix)
    try:
        with safe_open(str(source), framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != PROBE_FORMAT or METADATA_KEY not in header:
                raise UserInputError(f"{source} is not a spatialmech probe file", fix)
            meta = json.loads(header[METADATA_KEY])
            names = sorted(meta.get("probes", {}))
            probes = {}
            for name in names:
                spec = meta["probes"][name]
                extra = {k: v for k, v in spec.items() if k not in ("classes", "hidden_size")}
                probes[name] = LinearProbe(handle.get_tensor(f"{name}.weight"), handle.get_tensor(f"{name}.bias"), list(spec["classes"]), extra)
    except UserInputError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"probe file {source} is unreadable or damaged ({type(exc).__name__})", fix) from exc
    if not probes:
        raise UserInputError(f"probe file {source} holds no probes", fix)
    meta.pop("probes", None)
    return ProbeFile(probes, meta)


# The authors' amplification probe arrays (coco_amplification/run_experiment.py writes
# `<model>_coco_spatial_probe_<axis>_<W|b>_<FP32|BF16>.npy`: W float32 (D, 2), b float32 (2,)).
AUTHOR_AXIS_CLASSES = {"horizontal": ["left", "right"], "vertical": ["above", "below"]}


def author_probe_files(path: str | Path) -> dict[str, tuple[Path, Path]]:
    """{axis: (W file, b file)} for the authors' arrays in a folder, or of the set one named file belongs to."""
    import re

    source = Path(path)
    prefix, suffix = "*", "*"
    if not source.is_dir():
        named = re.match(r"^(.*)_probe_(?:horizontal|vertical)_[Wb]_(.*)\.npy$", source.name)
        if named is None:
            return {}
        prefix, suffix = named.groups()
    folder = source if source.is_dir() else source.parent
    found: dict[str, tuple[Path, Path]] = {}
    for axis in AUTHOR_AXIS_CLASSES:
        for weight in sorted(folder.glob(f"{prefix}_probe_{axis}_W_{suffix}.npy"))[:1]:
            bias = weight.with_name(weight.name.replace(f"_probe_{axis}_W_", f"_probe_{axis}_b_"))
            if bias.is_file():
                found[axis] = (weight, bias)
    return found


def is_author_probe_path(path: str | Path) -> bool:
    source = Path(path)
    return (source.is_dir() or source.suffix == ".npy") and bool(author_probe_files(source))


def load_author_probes(path: str | Path) -> ProbeFile:
    """The authors' per-axis probe arrays as a `ProbeFile` (np.load with allow_pickle=False; refuses
    anything but float (D, 2) weights and (2,) biases, in one line)."""
    import numpy as np

    files = author_probe_files(path)
    fix = "pass the folder holding <model>_coco_spatial_probe_<axis>_{W,b}_FP32.npy (coco_amplification/results/<model>/FP32/)"
    if not files:
        raise UserInputError(f"{path} holds none of the authors' probe arrays (*_probe_<axis>_W_*.npy with its _b_ twin)", fix)
    probes: dict[str, LinearProbe] = {}
    for axis, (w_file, b_file) in files.items():
        try:
            weight, bias = np.load(w_file, allow_pickle=False), np.load(b_file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{w_file.name} / {b_file.name} are not readable .npy arrays ({type(exc).__name__})", fix) from exc
        if weight.ndim != 2 or weight.shape[1] != 2 or bias.shape != (2,) or weight.dtype.kind != "f" or bias.dtype.kind != "f":
            raise UserInputError(f"{w_file.name} has shape {weight.shape} ({weight.dtype}) and {b_file.name} {bias.shape}",
                                 "the authors' arrays are float32 W (D, 2) and b (2,)")
        probes[axis] = LinearProbe(torch.from_numpy(weight.astype("float32")), torch.from_numpy(bias.astype("float32")),
                                   list(AUTHOR_AXIS_CLASSES[axis]), {"axis": axis, "source": w_file.name})
    return ProbeFile(probes, {"site": "projector.out", "variant": "projection", "source": "authors' .npy arrays"})
