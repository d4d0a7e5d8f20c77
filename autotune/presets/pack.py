"""Preset packs: a directory or .zip of preset files with an `index.json` of their sha256 hashes.

A pack is how a team hands presets around outside git. Import treats it as untrusted data: every
name is checked (no absolute paths, no `..`, no links escaping the pack), every file's size is capped
before it is read and its sha256 checked against the index, every preset is validated, and nothing
is written unless the whole pack verifies. Existing presets are never overwritten silently
(`PresetStore.add`). The result is a report of what happened to each file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autotune.errors import PresetError
from autotune.presets.preset import Preset
from autotune.presets.provenance import utc_now
from autotune.presets.schema import MAX_PRESET_BYTES, PresetWarning, atomic_write_text, parse_json
from autotune.presets.store import PresetStore, load_entry, preset_filename

INDEX_NAME = "index.json"
PACK_FORMAT = "autotune.presets.preset-pack"
PACK_VERSION = 1
MAX_INDEX_BYTES = 1024 * 1024
MAX_PACK_FILES = 10_000


@dataclass
class PackItem:
    """One file of a pack and what happened to it."""

    path: str
    action: str  # exported | verified | added | replaced | unchanged | kept | rejected | ignored | skipped
    reason: str = ""
    preset: Preset | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.action:9s} {self.path}" + (f"  ({self.reason})" if self.reason else "")


@dataclass
class PackReport:
    pack: Path
    items: list[PackItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.action == "rejected" for i in self.items)

    def count(self, action: str) -> int:
        return sum(1 for i in self.items if i.action == action)

    def lines(self) -> list[str]:
        return [str(i) for i in self.items]


# ---------------------------------------------------------------------------------------------------------------------
# Export


def export_pack(sources: Iterable[str | Path | Preset], out: str | Path) -> PackReport:
    """Write the presets in `sources` (files, directories of *.json, or Preset objects) as a pack.

    `out` ending in `.zip` gives a zip file (written to a temp file, then renamed); otherwise a new or
    empty directory. Each preset is stored under its canonical name `<model>__<category>.json`.
    """
    out = Path(out)
    presets: list[tuple[str, Preset]] = []
    for source in sources:
        presets.extend(_collect(source))
    if not presets:
        raise PresetError("nothing to export: no preset files found in the given sources")
    names: dict[str, str] = {}
    files: list[tuple[str, bytes, Preset]] = []
    for origin, preset in presets:
        name = preset_filename(preset.model["id"], preset.category)
        if name in names:
            raise PresetError(f"two presets for the same model and category ({name}): {names[name]} and {origin}")
        names[name] = origin
        files.append((name, preset.dumps().encode("utf-8"), preset))
    index = {
        "format": PACK_FORMAT,
        "pack_version": PACK_VERSION,
        "created": utc_now(),
        "files": [
            {
                "path": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "category": preset.category,
                "model": preset.model["id"],
                "kind": preset.kind,
                "task_fingerprint": preset.task_fingerprint,
                "content_hash": preset.content_hash,
            }
            for name, data, preset in files
        ],
    }
    index_bytes = (json.dumps(index, indent=2) + "\n").encode("utf-8")
    report = PackReport(out, [PackItem(name, "exported", f"from {names[name]}", preset) for name, _, preset in files])
    if out.suffix.lower() == ".zip":
        _write_zip(out, files, index_bytes)
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PresetError(f"{out} exists and is not an empty directory; choose a new directory or a .zip name")
        for name, data, _ in files:
            atomic_write_text(out / name, data.decode("utf-8"), what="pack file")
        atomic_write_text(out / INDEX_NAME, index_bytes.decode("utf-8"), what="pack index")
    return report


def _collect(source: str | Path | Preset) -> list[tuple[str, Preset]]:
    if isinstance(source, Preset):
        return [(source.label, source)]
    path = Path(source)
    if path.is_dir():
        found = []
        for file in sorted(path.glob("*.json")):
            if file.name == INDEX_NAME or file.name.startswith("."):
                continue
            entry = load_entry(file, "export")
            if entry.preset is None:
                raise PresetError(f"cannot export {file}: {entry.error}")
            found.append((str(file), entry.preset))
        return found
    return [(str(path), Preset.load(path))]


def _write_zip(out: Path, files: list[tuple[str, bytes, Preset]], index_bytes: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise PresetError(f"cannot write the pack {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(INDEX_NAME, index_bytes)
                for name, data, _ in files:
                    zf.writestr(name, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise PresetError(f"cannot write the pack {out}: {exc.strerror}; nothing was written") from None
        raise


# ---------------------------------------------------------------------------------------------------------------------
# Reading a pack safely


def check_member_name(name: object) -> str:
    """A pack member name must be a plain relative POSIX path inside the pack."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise PresetError(f"invalid file name {name!r}")
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PresetError(f"{name!r} is an absolute or Windows path; pack files must be relative")
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".", "") for part in parts):
        raise PresetError(f"{name!r} contains '..' or '.'; pack files must stay inside the pack")
    return name


class _DirPack:
    def __init__(self, root: Path):
        self.root = root
        self.real = root.resolve()

    def names(self) -> list[str]:
        out = []
        for folder, _, files in os.walk(self.root):  # does not follow links to directories
            out.extend((Path(folder) / f).relative_to(self.root).as_posix() for f in files)
        return sorted(out)

    def read(self, name: str, limit: int) -> bytes:
        check_member_name(name)
        path = self.root / name
        target = path.resolve()
        if not target.is_relative_to(self.real):
            raise PresetError(f"{name!r} is a link to {target}, outside the pack")
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise PresetError(f"{name!r} is listed in the index but missing from the pack") from None
        if not stat.S_ISREG(info.st_mode):
            raise PresetError(f"{name!r} is not a regular file")
        if info.st_size > limit:
            raise PresetError(f"{name!r} is {info.st_size} bytes, over the {limit}-byte limit")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise PresetError(f"{name!r} is over the {limit}-byte limit")
        return data


class _ZipPack:
    def __init__(self, path: Path):
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PresetError(f"{path} is not a readable zip file: {exc}") from None
        infos = self.zf.infolist()
        if len(infos) > MAX_PACK_FILES:
            raise PresetError(f"{path} has {len(infos)} entries, over the {MAX_PACK_FILES} limit")
        self.infos = {i.filename: i for i in infos}

    def names(self) -> list[str]:
        return sorted(n for n, i in self.infos.items() if not i.is_dir())

    def read(self, name: str, limit: int) -> bytes:
        check_member_name(name)
        info = self.infos.get(name)
        if info is None:
            raise PresetError(f"{name!r} is listed in the index but missing from the pack")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise PresetError(f"{name!r} is a symbolic link; packs hold plain files only")
        if info.file_size > limit:
            raise PresetError(f"{name!r} is {info.file_size} bytes, over the {limit}-byte limit")
        with self.zf.open(info) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise PresetError(f"{name!r} expands past the {limit}-byte limit")
        return data

    def close(self) -> None:
        self.zf.close()


def _open_pack(pack: Path) -> _DirPack | _ZipPack:
    if pack.is_dir():
        return _DirPack(pack)
    if pack.is_file():
        return _ZipPack(pack)
    raise PresetError(f"pack {pack} does not exist (give a pack directory or a .zip file)")


def _read_index(reader: _DirPack | _ZipPack, pack: Path) -> list[dict]:
    try:
        raw = reader.read(INDEX_NAME, MAX_INDEX_BYTES)
    except PresetError as exc:
        raise PresetError(f"{pack}: no usable {INDEX_NAME} ({exc}); is this a preset pack?") from None
    index = parse_json(raw.decode("utf-8", errors="replace"), f"{pack}:{INDEX_NAME}")
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        raise PresetError(f"{pack}: {INDEX_NAME} is not an autotune preset pack index (format {PACK_FORMAT!r})")
    version = index.get("pack_version")
    if version != PACK_VERSION:
        raise PresetError(f"{pack}: pack_version {version!r} is not supported (this autotune reads {PACK_VERSION})")
    files = index.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise PresetError(f"{pack}: {INDEX_NAME} 'files' must be a list of objects")
    return files


def verify_pack(pack: str | Path) -> PackReport:
    """Check every indexed file: safe name, present, size, sha256, a valid preset with a matching content hash.

    The report's items are `verified` or `rejected` (with the reason); files in the pack that the index
    does not list are `ignored`.
    """
    pack = Path(pack)
    reader = _open_pack(pack)
    report = PackReport(pack)
    try:
        files = _read_index(reader, pack)
        listed: set[str] = set()
        for i, entry in enumerate(files):
            name = entry.get("path")
            label = name if isinstance(name, str) else f"files[{i}]"
            try:
                check_member_name(name)
                if name in listed:
                    raise PresetError("listed twice in the index")
                listed.add(name)
                expected = entry.get("sha256")
                if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
                    raise PresetError("the index has no valid sha256 for it")
                data = reader.read(name, MAX_PRESET_BYTES)
                actual = hashlib.sha256(data).hexdigest()
                if actual != expected:
                    raise PresetError(
                        f"sha256 mismatch: the index says {expected[:12]}..., the file is {actual[:12]}..."
                    )
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise PresetError("not UTF-8 text") from None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PresetWarning)
                    preset = Preset.loads(text, source=f"{pack}:{name}", strict=True)
                report.items.append(PackItem(label, "verified", f"{preset.category}, {preset.model['id']}", preset))
            except PresetError as exc:
                report.items.append(PackItem(str(label), "rejected", str(exc)))
        for name in reader.names():
            if name != INDEX_NAME and name not in listed:
                report.items.append(PackItem(name, "ignored", "not listed in the index"))
    finally:
        if isinstance(reader, _ZipPack):
            reader.close()
    return report


def import_pack(pack: str | Path, target: str | Path | None = None, force: bool = False) -> PackReport:
    """Verify a pack, then add its presets to `target` (default: the user's presets directory).

    All or nothing on verification: if any indexed file is rejected, nothing is written. Each verified
    preset then goes through `PresetStore.add`: added, unchanged, replaced (same task fingerprint and a
    better front, or `force`) or kept (the existing file wins; the reason says why).
    """
    report = verify_pack(pack)
    if not report.ok:
        for item in report.items:
            if item.action == "verified":
                item.action, item.reason = "skipped", "not imported: the pack failed verification"
        return report
    store = PresetStore([])
    for item in report.items:
        if item.action != "verified" or item.preset is None:
            continue
        result = store.add(item.preset, target, force=force)
        item.action, item.reason = result.action, f"{result.path}: {result.reason}"
    return report
