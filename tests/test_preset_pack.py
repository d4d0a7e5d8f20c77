"""Preset packs: export, verify and import as untrusted data."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile

import pytest

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.pack import INDEX_NAME, export_pack, import_pack, verify_pack
from autotune.presets.preset import FrontPoint, Preset
from autotune.presets.store import preset_filename

OBJ = [
    {"name": "fidelity", "direction": "maximize", "metrics": {"preservation": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}},
]


def tuned(model_id: str, category: str, fidelity: float = 0.8, fingerprint: str = "T") -> Preset:
    point = FrontPoint(EditParams(w_tgt=7.0), {"fidelity": fidelity, "edit_strength": 0.5}, {}, 0)
    return Preset.from_front([point], category=category, model={"id": model_id}, objectives=OBJ,
                             provenance={"kind": "tuned", "task_fingerprint": fingerprint})


@pytest.fixture
def source(tmp_path):
    directory = tmp_path / "team"
    for category in ("change_color", "change_style"):
        tuned("shapes", category).save(directory / preset_filename("shapes", category))
    return directory


def _index(files: dict[str, bytes]) -> bytes:
    entries = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()]
    return json.dumps({"format": "autotune.presets.preset-pack", "pack_version": 1, "files": entries}).encode()


@pytest.mark.parametrize("suffix", [".zip", ""])
def test_export_verify_import_round_trip(source, tmp_path, suffix):
    pack = tmp_path / f"pack{suffix}"
    report = export_pack([source], pack)
    assert report.count("exported") == 2
    verified = verify_pack(pack)
    assert verified.ok and verified.count("verified") == 2
    target = tmp_path / "mine"
    report = import_pack(pack, target)
    assert report.ok and report.count("added") == 2
    for category in ("change_color", "change_style"):
        name = preset_filename("shapes", category)
        assert Preset.load(target / name) == Preset.load(source / name)
    again = import_pack(pack, target)
    assert again.count("unchanged") == 2


def test_index_lists_sha256_of_each_file(source, tmp_path):
    pack = tmp_path / "p.zip"
    export_pack([source], pack)
    with zipfile.ZipFile(pack) as zf:
        index = json.loads(zf.read(INDEX_NAME))
        for entry in index["files"]:
            assert hashlib.sha256(zf.read(entry["path"])).hexdigest() == entry["sha256"]
    assert index["format"] == "autotune.presets.preset-pack"


def test_tampered_file_fails_and_nothing_is_imported(source, tmp_path):
    pack = tmp_path / "pack"
    export_pack([source], pack)
    victim = pack / preset_filename("shapes", "change_color")
    victim.write_text(victim.read_text().replace('"w_tgt": 7.0', '"w_tgt": 70.0'))
    report = verify_pack(pack)
    assert not report.ok
    assert any(i.action == "rejected" and "sha256 mismatch" in i.reason for i in report.items)
    target = tmp_path / "mine"
    report = import_pack(pack, target)
    assert not report.ok and report.count("skipped") == 1
    assert not target.exists() or list(target.iterdir()) == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.json", "a/../../escape.json", "C:/x.json", "a\\b.json"])
def test_zip_names_escaping_the_pack_are_rejected(tmp_path, name):
    data = tuned("m", "change_color").dumps().encode()
    pack = tmp_path / "evil.zip"
    with zipfile.ZipFile(pack, "w") as zf:
        zf.writestr(INDEX_NAME, _index({name: data}))
        zf.writestr(name, data)
    report = import_pack(pack, tmp_path / "target")
    assert not report.ok
    assert report.items[0].action == "rejected"
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "target").exists()


def test_zip_symlink_member_is_rejected(tmp_path):
    pack = tmp_path / "link.zip"
    info = zipfile.ZipInfo("p.json")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(pack, "w") as zf:
        zf.writestr(INDEX_NAME, _index({"p.json": b"/etc/passwd"}))
        zf.writestr(info, "/etc/passwd")
    report = verify_pack(pack)
    assert not report.ok and "symbolic link" in report.items[0].reason


def test_directory_symlink_escaping_the_pack_is_rejected(tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text(tuned("m", "change_color").dumps())
    pack = tmp_path / "pack"
    pack.mkdir()
    os.symlink(outside, pack / "p.json")
    (pack / INDEX_NAME).write_bytes(_index({"p.json": outside.read_bytes()}))
    report = verify_pack(pack)
    assert not report.ok and "outside the pack" in report.items[0].reason


def test_zip_bomb_and_oversized_entries_are_refused_before_reading(tmp_path):
    pack = tmp_path / "bomb.zip"
    with zipfile.ZipFile(pack, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(INDEX_NAME, _index({"p.json": b"x"}))
        zf.writestr("p.json", b" " * (5 * 1024 * 1024))
    report = verify_pack(pack)
    assert not report.ok and "limit" in report.items[0].reason


def test_not_a_pack(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(PresetError, match="not a readable zip"):
        verify_pack(tmp_path / "x.zip")
    (tmp_path / "dir").mkdir()
    with pytest.raises(PresetError, match="no usable index.json"):
        verify_pack(tmp_path / "dir")
    with pytest.raises(PresetError, match="does not exist"):
        verify_pack(tmp_path / "nope")


def test_unlisted_files_are_ignored_and_reported(source, tmp_path):
    pack = tmp_path / "pack"
    export_pack([source], pack)
    (pack / "extra.json").write_text("{}")
    report = verify_pack(pack)
    assert report.ok and [i.path for i in report.items if i.action == "ignored"] == ["extra.json"]


def test_import_keeps_better_existing_and_replaces_with_better_or_force(tmp_path):
    target = tmp_path / "mine"
    name = preset_filename("shapes", "change_color")
    tuned("shapes", "change_color", fidelity=0.9).save(target / name)

    def pack_of(preset: Preset, where: str):
        export_pack([preset], tmp_path / where)
        return tmp_path / where

    report = import_pack(pack_of(tuned("shapes", "change_color", fidelity=0.5), "worse.zip"), target)
    assert report.items[0].action == "kept" and "--force" in report.items[0].reason
    report = import_pack(pack_of(tuned("shapes", "change_color", fidelity=0.95), "better.zip"), target)
    assert report.items[0].action == "replaced"
    assert Preset.load(target / name).front[0].values["fidelity"] == 0.95
    report = import_pack(tmp_path / "worse.zip", target, force=True)
    assert report.items[0].action == "replaced" and "forced" in report.items[0].reason


def test_export_refuses_duplicates_and_non_empty_directories(source, tmp_path):
    with pytest.raises(PresetError, match="two presets for the same model and category"):
        export_pack([source / preset_filename("shapes", "change_color")] * 2, tmp_path / "p.zip")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PresetError, match="not an empty directory"):
        export_pack([source], tmp_path / "full")
