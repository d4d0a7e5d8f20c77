"""Where presets live and how a name like `change_color:aggressive` becomes a file.

Lookup order (first match wins):
  1. an explicit path (`path/to/file.json`, optionally `:style`);
  2. `./presets` (the project you are in, e.g. a team's git repository of presets), unless that is the shipped
     folder itself (running from autotune's own checkout), which keeps its place at the end;
  3. the user's presets directory: `$AUTOTUNE_PRESETS_DIR`, else `$XDG_CONFIG_HOME/autotune/presets`, else
     `~/.config/autotune/presets`; where `autotune tune` writes by default;
  4. the presets shipped with autotune (the repository's top-level `presets/`, or `autotune/_presets` in a wheel).

One file per (model, category), named `<model slug>__<category>.json`. Nothing overwrites a preset silently:
`PresetStore.add` (import, from-study) replaces only a better preset, `save_preset` (tune) replaces any, and both
keep the file they replace as a dated copy in `<directory>/history/` and say so.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import atomic, flow_defaults
from autotune.errors import InputError, PresetError
from autotune.params import EditParams
from autotune.presets.predictor import AUTO_STYLE
from autotune.presets.preset import STYLES, Preset, PresetWarning
from autotune.task import CATEGORIES, category_name

PRESETS_DIR_ENV = "AUTOTUNE_PRESETS_DIR"
ORIGINS = ("explicit", "local", "user", "shipped")
HISTORY_DIR = "history"  # in a presets directory: the presets replaced there, as dated copies (never looked up)


def user_presets_dir() -> Path:
    """`$AUTOTUNE_PRESETS_DIR`, else `$XDG_CONFIG_HOME/autotune/presets`, else `~/.config/autotune/presets`."""
    env = os.environ.get(PRESETS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(config) if config else Path.home() / ".config") / "autotune" / "presets"


def shipped_presets_dir() -> Path | None:
    """The presets that come with autotune: `<repo>/presets` in a checkout or editable install,
    `autotune/_presets` in an installed wheel (pyproject maps the top-level `presets/` there)."""
    package = Path(__file__).resolve().parent.parent  # autotune/
    for candidate in (package / "_presets", package.parent / "presets"):
        if candidate.is_dir():
            return candidate
    return None


def search_dirs(cwd: str | Path | None = None) -> list[tuple[str, Path]]:
    """(origin, directory) in lookup order; directories that do not exist are kept (and skipped when read)."""
    shipped = shipped_presets_dir()
    dirs = [("local", Path(cwd or Path.cwd()) / "presets"), ("user", user_presets_dir())]
    if shipped is not None:
        dirs.append(("shipped", shipped))
    out: list[tuple[str, Path]] = []
    seen: set[Path] = {_key(shipped)} if shipped is not None else set()  # in autotune's checkout ./presets is the
    for origin, path in dirs:  # shipped folder: it stays last, below the user's own presets
        key = _key(path)
        if key not in seen or origin == "shipped":
            seen.add(key)
            out.append((origin, path))
    return out


def _key(path: Path) -> Path:
    return path.resolve() if path.exists() else path.absolute()


def is_shipped_dir(path: str | Path) -> bool:
    """Whether `path` is the folder of presets shipped with autotune (read-only to `tune`)."""
    shipped = shipped_presets_dir()
    return shipped is not None and _key(Path(path)) == _key(shipped)


def model_slug(model_id: str) -> str:
    """A file-name-safe form of a model id: `org/name` -> `org--name`; long or path-like ids get a short hash."""
    text = str(model_id).strip().rstrip("/\\")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "--").replace("\\", "--")).strip("._-")
    if not slug or len(slug) > 100 or text.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:", text):
        tail = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name)[:60].strip("._-") or "model"
        slug = f"{tail}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return slug


def preset_filename(model_id: str, category: str | int) -> str:
    return f"{model_slug(model_id)}__{category_name(category)}.json"


@dataclass
class PresetEntry:
    """A preset file found in a store directory (or the error that stopped it from loading)."""

    path: Path
    origin: str
    preset: Preset | None
    error: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class InstallResult:
    """What `PresetStore.add` or `save_preset` did with one preset: added, replaced, unchanged or kept (the
    existing one); `previous` is where a replaced preset was kept."""

    action: str
    path: Path
    reason: str
    previous: Path | None = None

    def __str__(self) -> str:
        kept = f"; the previous one is kept as {self.previous}" if self.previous else ""
        return f"{self.action:9s} {self.path}  ({self.reason}{kept})"


def parse_spec(spec: str) -> tuple[str, str | None, bool]:
    """`change_color`, `change_color:aggressive`, `change_color:auto`, `dir/file.json[:style]` -> (name or path, style,
    is_path)."""
    text = spec.strip()
    style = None
    head, sep, tail = text.rpartition(":")
    if sep and (tail in STYLES or tail == AUTO_STYLE):
        text, style = head, tail
    looks_like_path = text.endswith(".json") or "/" in text or "\\" in text or Path(text).is_file()
    return text, style, looks_like_path


class PresetStore:
    """Presets in a list of directories, searched in order."""

    def __init__(self, dirs: list[tuple[str, Path]] | list[Path] | None = None, cwd: str | Path | None = None):
        if dirs is None:
            self.dirs = search_dirs(cwd)
        else:
            self.dirs = [d if isinstance(d, tuple) else ("dir", Path(d)) for d in dirs]  # type: ignore[misc]

    def entries(self) -> list[PresetEntry]:
        """Every `*.json` in every directory, in lookup order; files that fail to load carry their error."""
        return list(self._iter_entries())

    def _iter_entries(self) -> Iterator[PresetEntry]:
        for origin, directory in self.dirs:
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.json")):
                if path.name.startswith("."):
                    continue
                yield load_entry(path, origin)

    def find(self, category: str | int, model: Mapping[str, Any] | str | None = None) -> PresetEntry:
        """The first preset in lookup order for this category (and model, when given)."""
        category = category_name(category)
        all_entries = self.entries()
        entries = [e for e in all_entries if e.preset is not None and e.preset.category == category]
        for entry in all_entries:
            if entry.error and (model is None or _filename_fits(entry.path, category, model)):
                warnings.warn(f"skipping broken preset {entry.path}: {entry.error}", PresetWarning, stacklevel=2)
        for origin, directory in self.dirs:
            here = [e for e in entries if e.path.parent == directory and e.origin == origin]
            if model is not None:
                here = [e for e in here if e.preset.matches_model(model)]  # type: ignore[union-attr]
                exact = [e for e in here if _same_id(e.preset.model.get("id"), model)]  # type: ignore[union-attr]
                here = exact or here
            elif len({e.preset.model.get("id") for e in here}) > 1:  # type: ignore[union-attr]
                models = ", ".join(sorted({str(e.preset.model.get("id")) for e in here}))  # type: ignore[union-attr]
                raise PresetError(
                    f"{directory} holds {category} presets for several models ({models}): say which model, "
                    "with --model ID on the command line (model= in Python)"
                )
            if here:
                return here[0]
        raise PresetError(self._not_found(category, model, entries))

    def resolve(self, spec: str, model: Mapping[str, Any] | str | None = None) -> tuple[Preset, str]:
        """A spec (`change_color`, `change_color:aggressive`, `path/to/file.json[:style]`) -> (preset, style)."""
        name, style, is_path = parse_spec(spec)
        if is_path:
            preset = Preset.load(name)
        else:
            try:
                category = category_name(name)
            except ValueError:
                known = ", ".join(CATEGORIES.values())
                raise PresetError(
                    f"preset {spec!r}: not a category ({known}) and not a .json file; "
                    f"write CATEGORY[:STYLE] or PATH.json[:STYLE] with STYLE one of {', '.join(STYLES)}"
                ) from None
            preset = self.find(category, model).preset  # type: ignore[assignment]
        style = style or preset.default_style
        if style == AUTO_STYLE:
            preset.check_auto()  # a clear error when the file carries no usable predictor
        else:
            preset.params(style)  # raises a clear error for a style the file does not have
        return preset, style

    def params_for(
        self, category: str | int, style: str | None, model_info: Mapping[str, Any] | str, override: bool = False
    ) -> EditParams:
        """The parameters `Editor.edit(category=..., style=...)` uses: the first matching preset in lookup
        order, checked against the editor's model and scheduler (`Preset.check_compatible`)."""
        return self.preset_for(category, model_info, override).params(style)

    def preset_for(self, category: str | int, model_info: Mapping[str, Any] | str, override: bool = False) -> Preset:
        """The first matching preset in lookup order, checked against the editor's model and scheduler."""
        try:
            category = category_name(category)
        except ValueError as exc:
            raise PresetError(str(exc)) from None
        preset = self.find(category, model_info).preset
        assert preset is not None
        preset.check_compatible(model_info, override=override)
        return preset

    def find_preset(self, category: str | int, model_info: Mapping[str, Any] | str) -> Preset | None:
        """The preset `params_for` uses for `category` on this model, or None; unchecked (`preset_for` checks
        it against the model), for reading what a finished run used."""
        return self.find(category, model_info).preset

    def add(self, preset: Preset, directory: str | Path | None = None, force: bool = False) -> InstallResult:
        """Write `preset` into `directory` (default: the user's directory) as `<model>__<category>.json`.

        Never overwrites silently: an existing file is replaced only when it is identical (unchanged), when
        the new preset was tuned on the same task fingerprint and scores better (`Preset.improves_on`), or
        with `force`, and a replaced file is kept in `history/` (`keep_previous`). The decision and the write
        happen under a lock on the directory.
        """
        directory = Path(directory) if directory is not None else user_presets_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PresetError(f"cannot create the presets directory {directory}: {exc.strerror}") from None
        path = directory / preset_filename(preset.model["id"], preset.category)
        with _directory_lock(directory):
            if not path.exists():
                preset.save(path)
                return InstallResult("added", path, "new")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PresetWarning)
                    existing = Preset.load(path)
            except PresetError as exc:
                if force:
                    previous = keep_previous(path)
                    preset.save(path)
                    return InstallResult("replaced", path, f"forced; the existing file did not load: {exc}", previous)
                return InstallResult(
                    "kept", path, f"the existing file does not load ({exc}); use --force to replace it"
                )
            if existing.content_hash == preset.content_hash:
                return InstallResult("unchanged", path, "identical content")
            if force:
                previous = keep_previous(path)
                preset.save(path)
                return InstallResult("replaced", path, "forced", previous)
            if existing.category != preset.category or not _same_id(existing.model.get("id"), preset.model):
                return InstallResult("kept", path, "the file holds a preset for another model or category; use --force")
            better, why = preset.improves_on(existing)
            if better:
                previous = keep_previous(path)
                preset.save(path)
                return InstallResult("replaced", path, why, previous)
            return InstallResult("kept", path, f"existing preset kept: incoming {why}; use --force to replace it")

    def _not_found(self, category: str, model: Mapping[str, Any] | str | None, entries: list[PresetEntry]) -> str:
        model_id = model if isinstance(model, str) or model is None else model.get("id")
        where = "; ".join(
            f"{origin} {directory}{'' if directory.is_dir() else ' (missing)'}" for origin, directory in self.dirs
        )
        others = sorted({str(e.preset.model.get("id")) for e in entries})  # type: ignore[union-attr]
        text = f"no {category} preset" + (f" for model {model_id!r}" if model_id else "") + f"; looked in: {where}."
        if others:
            text += f" {category} presets exist for: {', '.join(others)}."
        return text + " Tune one with `autotune tune`, or give a preset file path."


def save_preset(preset: Preset, directory: str | Path | None = None, *, same_result_only: bool = False
                ) -> InstallResult:
    """Write a freshly tuned preset as `<directory>/<model>__<category>.json` (default: the user's presets
    directory), whatever was there: the study is the newer measurement. A different file already there is first
    kept as a dated copy (`keep_previous`); an identical one is left as it is, and so is the same result carrying a
    predictor when `preset` has none (re-running a finished study must not drop a fitted predictor). With
    `same_result_only` (fitting a predictor), a file holding another result is refused instead. The shipped presets
    are refused."""
    directory = Path(directory) if directory is not None else user_presets_dir()
    if is_shipped_dir(directory):
        raise PresetError(_SHIPPED_READ_ONLY.format(directory=directory, user=user_presets_dir()))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PresetError(f"cannot write the preset in {directory}: the folder cannot be created "
                          f"({exc.strerror or exc}); nothing was written") from None
    path = directory / preset_filename(preset.model["id"], preset.category)
    with _directory_lock(directory):
        if not path.exists():
            preset.save(path)
            return InstallResult("added", path, "new")
        existing = _load_quietly(path)
        if existing is not None and existing.content_hash == preset.content_hash:
            return InstallResult("unchanged", path, "identical content")
        same_result = existing is not None and \
            existing.with_predictor(None).content_hash == preset.with_predictor(None).content_hash
        if same_result and preset.predictor is None and existing.predictor is not None:
            return InstallResult("unchanged", path, "the same tuning result; its fitted predictor kept")
        if same_result_only and not same_result:
            what = "a file that does not load as a preset" if existing is None else \
                "a different preset (another study, or edited)"
            raise PresetError(f"{path} holds {what}; use --force to replace it (it is kept in history/), or write "
                              "into another directory")
        # The same result without a predictor is all in the new file: nothing to keep.
        previous = None if same_result and existing.predictor is None else keep_previous(path)
        preset.save(path)
        why = "its predictor fitted" if same_result else "a newer tuning result"
        return InstallResult("replaced", path, why, previous)


def _load_quietly(path: Path) -> Preset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        try:
            return Preset.load(path)
        except PresetError:
            return None


def keep_previous(path: Path) -> Path:
    """Copy the preset file `path` to `<its directory>/history/<stem>.<UTC time it was written>.json` (e.g.
    `shapes__change_color.2026-12-05T13-18-00.123Z.json`) before it is replaced, and return the copy's path.

    A dated copy rather than a history inside the file: each version stays a complete preset that loads, diffs
    (`autotune presets diff OLD NEW`) and is restored by copying it back, with its own content hash, and the
    current file stays as small as one result, which is what packs and teams share. `history/` is not searched."""
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    stamp = written.strftime("%Y-%m-%dT%H-%M-%S.") + f"{written.microsecond // 1000:03d}Z"  # sorts in time order
    history = path.parent / HISTORY_DIR
    target = history / f"{path.stem}.{stamp}.json"
    n = 1
    while target.exists():  # two versions written within one second
        n += 1
        target = history / f"{path.stem}.{stamp}-{n}.json"
    try:
        atomic.write_bytes(target, path.read_bytes())
    except OSError as exc:
        raise PresetError(f"cannot keep the previous preset {path} in {history} ({exc.strerror or exc}); it was not "
                          "replaced") from None
    return target


_SHIPPED_READ_ONLY = (
    "{directory} holds the presets shipped with autotune, which tune does not overwrite; tuned presets go to "
    "your presets directory ({user}, the default, searched before the shipped ones) or to the --presets-dir you give"
)


def check_presets_dir(folder: Path) -> None:
    """Create the presets folder or fail now, before hours of trials whose preset could not be written."""
    if is_shipped_dir(folder):
        raise InputError(_SHIPPED_READ_ONLY.format(directory=folder, user=user_presets_dir()))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"presets folder {folder} exists and is not a directory; choose another --presets-dir") \
            from None
    except OSError as exc:
        raise InputError(f"cannot create the presets folder {folder} ({exc.strerror or exc}); choose another "
                         "--presets-dir") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the presets folder {folder} is not writable; choose another --presets-dir")


def open_presets(value: Any = "auto", cwd: str | Path | None = None) -> PresetStore | Preset | None:
    """What `Editor.from_pretrained(model, presets=...)` accepts, as an object with `params_for`:

    None/False -> None (no presets); True or "auto" -> the standard lookup order; a directory -> that
    directory first, then the standard lookup order; a `.json` file -> that Preset; a Preset or PresetStore
    -> itself.
    """
    if value is None or value is False:
        return None
    if isinstance(value, (Preset, PresetStore)):
        return value
    if value is True or value == "auto":
        return PresetStore(cwd=cwd)
    path = Path(value)
    if path.is_dir():
        return PresetStore([("explicit", path), *search_dirs(cwd)])
    if path.suffix == ".json" or path.is_file():
        return Preset.load(path)
    raise PresetError(f"presets={value!r}: not a directory or a .json preset file (or use True for the lookup order)")


def load_entry(path: Path, origin: str) -> PresetEntry:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PresetWarning)
        try:
            preset = Preset.load(path)
        except PresetError as exc:
            return PresetEntry(path, origin, None, str(exc))
    messages = tuple(str(w.message) for w in caught if issubclass(w.category, PresetWarning))
    return PresetEntry(path, origin, preset, None, messages)


def _same_id(preset_id: Any, model: Mapping[str, Any] | str) -> bool:
    other = model if isinstance(model, str) else (model.get("id") or "")
    return str(preset_id or "").strip().rstrip("/").lower() == str(other).strip().rstrip("/").lower()


def _filename_fits(path: Path, category: str, model: Mapping[str, Any] | str) -> bool:
    model_id = model if isinstance(model, str) else str(model.get("id") or "")
    return path.name == preset_filename(model_id, category) if model_id else path.name.endswith(f"__{category}.json")


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the directory itself (POSIX flock); no lock file is left behind."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic renames still keep every file whole
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------------
# The shipped Stable Diffusion 1.x presets: published defaults, not tuned

SD1_MODEL = {
    "id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "revision": None,
    "file_hash": None,
    # `sd15` and `sd14` are autotune's short names for them (what `editor.model_info()["id"]` then says).
    "applies_to": ["CompVis/stable-diffusion-v1-4", "runwayml/stable-diffusion-v1-5", "sd15", "sd14"],
    # PIE-Bench's DDIM scheduler (autotune's scheduler="piebench").
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 0,
        "timestep_spacing": "leading",
    },
    "scheduler_mode": "piebench",
    "notes": "Stable Diffusion 1.x. PIE-Bench and SimInversion report on SD v1.4 (CompVis/stable-diffusion-v1-4), "
    "which shares v1.5's architecture, text encoder and noise schedule; these defaults apply to both.",
}
SD1_CITATION = (
    "Guidance pair: Qian, Xu, Yan, Hu, 'SimInversion: A Simple Framework for Inversion-Based Text-to-Image Editing', "
    "2024, arXiv:2409.10476 (w_src = 0.5, w_tgt = 7.5). Prompt-to-Prompt settings: PIE-Bench, Ju et al., "
    "'PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code', ICLR 2024 (50 DDIM steps, "
    "cross-attention replace 0.4, self-attention replace 0.6, re-weight 2, LocalBlend threshold 0.3)."
)


# The shipped SDXL presets: published defaults, not tuned

SDXL_MODEL = {
    "id": "stabilityai/stable-diffusion-xl-base-1.0",
    "revision": None,
    "file_hash": None,
    # `sdxl` is autotune's short name for it (what `editor.model_info()["id"]` then says); the fine-tune shares its
    # architecture, text encoders and noise schedule, and these defaults are not tuned on any weights.
    "applies_to": ["sdxl", "SG161222/RealVisXL_V4.0"],
    # SDXL base's own noise schedule, read into DDIM as autotune's default scheduler="checkpoint" does.
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    },
    "scheduler_mode": "checkpoint",
    "notes": "SDXL base 1.0 (1024 px) and fine-tunes of it that keep its noise schedule.",
}
SDXL_CITATION = (
    SD1_CITATION + " Model: Podell et al., 'SDXL: Improving Latent Diffusion Models for High-Resolution Image "
    "Synthesis', 2023, arXiv:2307.01952."
)
SDXL_NOTES = (
    "SimInversion's published pair (reported on Stable Diffusion 1.x) and PIE-Bench's Prompt-to-Prompt settings, "
    "carried over unchanged: no setting has been published for SDXL with a DDIM inversion and a guided target branch. "
    "LEDITS++'s SDXL defaults (source guidance 3.5, edit guidance 5) are not used: they belong to its DDPM "
    "edit-friendly inversion and per-concept semantic guidance, another scheme. SDXL's own text-to-image default "
    "guidance is 5, so a tuned preset may land below 7.5 (the default search range, 1 to 12, covers it)."
)
PAPER_DEFAULT_MODELS = {SD1_MODEL["id"]: (SD1_MODEL, SD1_CITATION, ""), SDXL_MODEL["id"]: (SDXL_MODEL, SDXL_CITATION,
                                                                                        SDXL_NOTES)}


def paper_default_presets(model: str | None = None) -> list[Preset]:
    """One untuned preset per PIE-Bench category for each model of `PAPER_DEFAULT_MODELS` (or only `model`, one of its
    ids): SimInversion's 0.5 / 7.5 with PIE-Bench's P2P settings.

    These are the files shipped in `presets/`, with `flow_paper_default_presets` (regenerate one model's with
    `python -c "from autotune.presets.store import write_paper_defaults; write_paper_defaults('presets', MODEL_ID)"`).
    """
    if model is not None and model not in PAPER_DEFAULT_MODELS:
        raise InputError(f"no paper defaults for {model!r}; known: {', '.join(PAPER_DEFAULT_MODELS)}")
    params = EditParams(
        method="siminversion",
        w_src=0.5,
        w_tgt=7.5,
        steps=50,
        cross_replace=0.4,
        self_replace=0.6,
        reweight=2.0,
        blend_threshold=0.3,
    )
    untuned = (
        "Untuned: the published defaults, the same for every category and every pick. Tune on your own tasks "
        "(`autotune tune`) to get a measured front and real conservative/balanced/aggressive picks."
    )
    return [
        Preset.paper_default(category, record, params, citation, f"{untuned} {why}".strip())
        for model_id, (record, citation, why) in PAPER_DEFAULT_MODELS.items()
        if model in (None, model_id)
        for category in CATEGORIES.values()
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The shipped SD3 / SD3.5 / FLUX.1-dev presets: FlowEdit's published settings, not tuned

FLOW_NOTES = (
    "Untuned: FlowEdit's published setting for this model, the same for every category and every pick (FlowEdit "
    "publishes one setting per model; its authors note that structural edits may need other values). Tune on your "
    "own tasks (`autotune tune --method flowedit`) to get a measured front and real picks."
)


def flow_paper_default_presets() -> list[Preset]:
    """One untuned FlowEdit preset per PIE-Bench category for SD3-medium, SD3.5 (FlowEdit's SD3 setting) and
    FLUX.1-dev (`autotune.flow_defaults`)."""
    models = ((flow_defaults.SD3_MEDIUM_MODEL, flow_defaults.FLOWEDIT_SD3),
              (flow_defaults.SD35_MODEL, flow_defaults.FLOWEDIT_SD3),
              (flow_defaults.FLUX_DEV_MODEL, flow_defaults.FLOWEDIT_FLUX_DEV))
    return [Preset.paper_default(category, model, EditParams(**setting), flow_defaults.FLOWEDIT_CITATION, FLOW_NOTES)
            for model, setting in models for category in CATEGORIES.values()]


def write_paper_defaults(directory: str | Path, model: str | None = None) -> list[Path]:
    """Write the shipped paper-default presets (every model's, or only `model`'s, by its id) into `directory`."""
    chosen = [p for p in paper_default_presets() + flow_paper_default_presets() if model in (None, p.model["id"])]
    if not chosen:
        known = sorted({p.model["id"] for p in paper_default_presets() + flow_paper_default_presets()})
        raise InputError(f"no paper defaults for {model!r}; known: {', '.join(known)}")
    return [p.save(Path(directory) / preset_filename(p.model["id"], p.category)) for p in chosen]
