"""The VAE problems' data: scikit-learn's 8×8 digits and FashionMNIST, their splits, binarization.

Datasets (``problem.dataset``):
  digits         scikit-learn's bundled handwritten digits: 1797 images of 8×8 = 64 pixels with
                 values 0..16, shipped inside the package (no download). Splits: ``train`` the
                 first 1438 images, ``test`` the last 359 (⌊1797/5⌋, 20%), ``all`` every image.
  fashion_mnist  FashionMNIST (Xiao et al. 2017): 28×28 = 784 pixels with values 0..255, read with
                 numpy from its idx files (``train-images-idx3-ubyte`` and
                 ``t10k-images-idx3-ubyte``, gzip'd or not) in ``problem.data_dir``, by default
                 ``/usr/share/datasets/fashion-mnist`` where Debian's ``dataset-fashion-mnist``
                 package installs them. Never downloaded. Splits as in DisARM's code: ``train`` the
                 first 50 000 training images, ``test`` the 10 000 test images (the training file's
                 last 10 000, DisARM's validation set, are not used), ``all`` the 60 000 + 10 000.

Binarization (``problem.binarization``) of a pixel value v whose maximum is m (16 or 255):
  threshold  x = 1[v > m/2]: digits' v > 8 (the VAE problems' original scheme); FashionMNIST's
             v/255 > ½ (the papers' "static" binarization).
  dynamic    x ~ Bernoulli(v/m), the DisARM/RELAX/REBAR "dynamic binarization", drawn from an
             explicit generator, so a seed fixes it.
``auto`` is the dataset's own: threshold for digits (the numbers stay those of before), dynamic for
FashionMNIST. Likewise ``split: auto`` is ``all`` for digits (as before: no held-out images) and
``train`` for FashionMNIST.

The pixels are held in memory once per process as uint8 (FashionMNIST: 55 MB); nothing is cached
on disk.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.errors import ConfigError

AUTO = "auto"
SPLITS = ("train", "test", "all")
BINARIZATIONS = ("threshold", "dynamic")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
FASHION_TRAIN = 50_000  # DisARM: train[:50000] trains, train[50000:] validates, "test" tests
IDX_IMAGES_MAGIC = 2051  # idx3: unsigned bytes, 3 dimensions
HELD_OUT_STREAM = 1 << 40  # the test split's dynamic binarization: seed HELD_OUT_STREAM + data_seed


@dataclass(frozen=True)
class Dataset:
    name: str
    n_pixels: int
    max_value: int  # the largest pixel value: x ~ Bernoulli(v / max_value) when dynamic
    train: int  # images in the train split
    test: int  # images in the test split
    default_split: str
    default_binarization: str

    def size(self, split: str) -> int:
        return {"train": self.train, "test": self.test, "all": self.train + self.test}[split]


DATASETS = {
    "digits": Dataset("digits", 64, 16, 1438, 359, "all", "threshold"),
    "fashion_mnist": Dataset("fashion_mnist", 784, 255, FASHION_TRAIN, 10_000, "train", "dynamic"),
}


@dataclass(frozen=True)
class DataSpec:
    """A problem's data, resolved from its config: which images, which split, which binarization."""

    dataset: Dataset
    split: str  # train | test | all: where the measured minibatch comes from
    binarization: str  # threshold | dynamic
    data_dir: Path | None  # FashionMNIST's folder (None for digits)

    @property
    def training_split(self) -> str:
        """What ``state=trained`` trains on: every image under ``all``, else the train split."""
        return "all" if self.split == "all" else "train"

    @property
    def dynamic(self) -> bool:
        return self.binarization == "dynamic"


def choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"problem.{key}", f"unknown value {value!r}; valid choices: {', '.join(choices)}")
    return value


def resolve(dataset: Any, split: Any, binarization: Any, data_dir: Any) -> DataSpec:
    """Check the data keys and resolve ``auto``; FashionMNIST's files must exist (else ConfigError)."""
    data = DATASETS[choice("dataset", dataset, tuple(DATASETS))]
    split = choice("split", split, (*SPLITS, AUTO))
    binarization = choice("binarization", binarization, (*BINARIZATIONS, AUTO))
    if data_dir is not None and not isinstance(data_dir, (str, Path)):
        raise ConfigError("problem.data_dir", f"expected a folder path or null, got {data_dir!r}")
    folder = None
    if data.name == "fashion_mnist":  # digits ship with scikit-learn: data_dir does not apply
        folder = Path(data_dir) if data_dir is not None else FASHION_DIR
        fashion_paths(folder)  # fail now, with the remedy, rather than when the data is first used
    return DataSpec(
        data,
        data.default_split if split == AUTO else split,
        data.default_binarization if binarization == AUTO else binarization,
        folder,
    )


def fashion_paths(folder: Path) -> dict[str, Path]:
    """FashionMNIST's image files in ``folder`` (``.gz`` or not), else a ConfigError saying how to
    get them."""
    paths, missing = {}, []
    for part, stem in FASHION_FILES.items():
        found = [path for path in (folder / f"{stem}.gz", folder / stem) if path.is_file()]
        if found:
            paths[part] = found[0]
        else:
            missing.append(f"{stem}.gz")
    if missing:
        raise ConfigError(
            "problem.data_dir",
            f"FashionMNIST not found in {folder} (missing {', '.join(missing)}). On Debian or Ubuntu "
            f"install it with `apt-get install dataset-fashion-mnist` (files under {FASHION_DIR}, "
            f"the default when problem.data_dir is null); elsewhere put the idx files "
            f"{', '.join(f'{stem}.gz' for stem in FASHION_FILES.values())} (gzip'd or not) in a folder "
            "and set problem.data_dir to it. bench never downloads data.",
        )
    return paths


def read_idx_images(path: Path) -> np.ndarray:
    """An idx3 file of unsigned bytes (gzip'd when its name ends in .gz): (n, rows·cols) uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    header = [int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4)]
    magic, n, rows, cols = header
    if magic != IDX_IMAGES_MAGIC or len(raw) != 16 + n * rows * cols:
        raise ConfigError("problem.data_dir", f"{path} is not an idx3 image file of unsigned bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


@functools.cache
def fashion_file(folder: Path, part: str) -> Tensor:
    """One FashionMNIST file's images (part: train | test): (n, 784) uint8, read once per process."""
    return torch.from_numpy(read_idx_images(fashion_paths(folder)[part]).copy())


@functools.cache
def digits_pixels() -> Tensor:
    """scikit-learn's 1797 digits: (1797, 64) uint8 with values 0..16, loaded once per process."""
    from sklearn.datasets import load_digits  # imported here: importing sklearn takes ~1 s

    return torch.from_numpy(load_digits().data).to(torch.uint8)


def pixels(spec: DataSpec, split: str) -> Tensor:
    """A split's raw pixels: (N, D) uint8 (callers must not modify it)."""
    data = spec.dataset
    if data.name == "digits":
        every = digits_pixels()
        return {"train": every[: data.train], "test": every[data.train :], "all": every}[split]
    assert spec.data_dir is not None
    if split == "test":
        return fashion_file(spec.data_dir, "test")
    train = fashion_file(spec.data_dir, "train")[:FASHION_TRAIN]
    return train if split == "train" else torch.cat([train, fashion_file(spec.data_dir, "test")])


def binarize(values: Tensor, spec: DataSpec, uniforms: Tensor | None = None) -> Tensor:
    """Pixels (..., D) uint8 → 0/1 float64: threshold 1[v > m/2]; dynamic 1[u < v/m] for the given
    uniforms u ~ U[0, 1) of the same shape, i.e. x ~ Bernoulli(v/m)."""
    if not spec.dynamic:
        return (2 * values.to(torch.int32) > spec.dataset.max_value).to(torch.float64)
    if uniforms is None or uniforms.shape != values.shape:
        raise ValueError("dynamic binarization needs uniforms of the pixels' shape")
    return (uniforms < values.to(torch.float64) / spec.dataset.max_value).to(torch.float64)


def binarize_with(values: Tensor, spec: DataSpec, generator: torch.Generator) -> Tensor:
    """``binarize``, drawing the uniforms (when dynamic) from ``generator``."""
    uniforms = None
    if spec.dynamic:
        uniforms = torch.rand(values.shape, generator=generator, dtype=torch.float64)
    return binarize(values, spec, uniforms)


def choose_minibatch(spec: DataSpec, batch_size: int, data_seed: int) -> tuple[Tensor, Tensor | None]:
    """The measured minibatch: ``batch_size`` distinct images of the split, chosen by a generator
    seeded with ``data_seed`` (randperm), and, when dynamic, the uniforms of their binarization
    drawn next from the same generator, (B, D). Needs no data (only the split's size)."""
    generator = torch.Generator().manual_seed(data_seed)
    indices = torch.randperm(spec.dataset.size(spec.split), generator=generator)[:batch_size]
    uniforms = None
    if spec.dynamic:
        shape = (batch_size, spec.dataset.n_pixels)
        uniforms = torch.rand(shape, generator=generator, dtype=torch.float64)
    return indices, uniforms


def held_out_images(spec: DataSpec, data_seed: int, chunk: int = 4096) -> Tensor:
    """The test split binarized once (dynamic: by a generator seeded with HELD_OUT_STREAM +
    data_seed, so fixed per seed): (N_test, D) uint8 of 0/1."""
    values = pixels(spec, "test")
    generator = torch.Generator().manual_seed(HELD_OUT_STREAM + data_seed)
    parts = [
        binarize_with(values[start : start + chunk], spec, generator).to(torch.uint8)
        for start in range(0, values.shape[0], chunk)
    ]
    return torch.cat(parts)
