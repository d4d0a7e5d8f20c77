"""Presets rebuilt from a study's stored record (in memory, journal file, PostgreSQL), nothing re-run."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autotune.cli import main
from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.preset import Preset
from autotune.presets.store import preset_filename
from autotune.tuning.to_preset import presets_from_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [
    {"name": "fidelity", "direction": "minimize", "metrics": {"structure_distance": 1.0, "background_lpips": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"clip_edited": 1.0}},
]
MODEL = {"id": "shapes", "revision": None, "weights": "abcd1234", "scheduler": {"beta_start": 0.001}}
# (w_src, w_tgt, fidelity distance, clip, paper point)
TRIALS = [
    (0.5, 7.5, 0.10, 24.0, "siminversion"),
    (1.0, 7.5, 0.30, 25.0, "ddim"),
    (0.2, 4.0, 0.02, 18.0, None),
    (0.8, 9.0, 0.15, 26.0, None),
    (0.6, 6.0, 0.05, 23.0, None),
    (0.9, 3.0, 0.40, 15.0, None),  # dominated
]


def fill(study: optuna.Study, storage_label: str = "journal:/tmp/x.journal") -> optuna.Study:
    base = EditParams().to_dict()
    attrs = {
        "autotune.version": "0.1.0",
        "autotune.model": MODEL,
        "autotune.category": "change_color",
        "autotune.search_space": {"w_src": [0.0, 1.0], "w_tgt": [1.0, 12.0]},
        "autotune.base_params": base,
        "autotune.objectives": OBJECTIVES,
        "autotune.scorer": {"mode": "piebench", "backbones": {"clip": "ViT-L-14"}},
        "autotune.task_fingerprint": "fp-123",
        "autotune.task_count": 12,
        "autotune.sampler": {"name": "NSGAIISampler", "seed": 7},
        "autotune.storage": storage_label,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    dist = {"w_src": FloatDistribution(0.0, 1.0), "w_tgt": FloatDistribution(1.0, 12.0)}
    for w_src, w_tgt, fid, clip, paper in TRIALS:
        user = {"params": EditParams(w_src=w_src, w_tgt=w_tgt).to_dict(),
                "metrics": {"structure_distance": fid / 2, "background_lpips": fid / 2, "clip_edited": clip}}
        if paper:
            user["paper_point"] = paper
        study.add_trial(create_trial(params={"w_src": w_src, "w_tgt": w_tgt}, distributions=dist,
                                     values=[fid, clip], user_attrs=user))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    return study


def new_study(storage=None, name="shapes-change_color") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, directions=["minimize", "maximize"])


def test_preset_from_in_memory_study():
    (preset,) = presets_from_study(fill(new_study()))
    fids = [p.values["fidelity"] for p in preset.front]
    # The ddim point (0.30, 25) and trial 5 are dominated; best (lowest) distance first.
    assert fids == [0.02, 0.05, 0.10, 0.15]
    assert preset.params("conservative") == EditParams(w_src=0.2, w_tgt=4.0)
    assert preset.params("aggressive") == EditParams(w_src=0.8, w_tgt=9.0)
    # normalised: fid = (0.15-d)/0.13, clip = (c-18)/8 -> sums 1.0, 1.394, 1.135, 1.0: the knee is d=0.05
    assert preset.params() == EditParams(w_src=0.6, w_tgt=6.0)
    # Paper points stay on record as references even when dominated.
    assert [r.paper_point for r in preset.references] == ["siminversion", "ddim"]
    prov = preset.provenance
    assert (prov["kind"], prov["n_trials"], prov["n_complete"]) == ("tuned", 7, 6)
    assert prov["task_fingerprint"] == "fp-123" and prov["sampler"] == {"name": "NSGAIISampler", "seed": 7}
    assert prov["study"]["name"] == "shapes-change_color" and prov["created"].endswith("+00:00")
    assert preset.model["file_hash"] == "abcd1234" and preset.scorer["backbones"]["clip"] == "ViT-L-14"
    assert preset.front[0].metrics == {"structure_distance": 0.01, "background_lpips": 0.01, "clip_edited": 18.0}
    assert Preset.loads(preset.dumps(), strict=True) == preset


def test_study_without_autotune_attrs_or_trials():
    with pytest.raises(PresetError, match="not written by `autotune tune`"):
        presets_from_study(new_study())
    study = new_study()
    for key in ("model", "category", "objectives"):
        study.set_user_attr(f"autotune.{key}", {"model": MODEL, "category": "change_color",
                                                "objectives": OBJECTIVES}[key])
    with pytest.raises(PresetError, match="no completed trial"):
        presets_from_study(study)


def test_author_from_environment(monkeypatch):
    monkeypatch.setenv("AUTOTUNE_AUTHOR", "Ada")
    (preset,) = presets_from_study(fill(new_study()))
    assert preset.provenance["author"] == "Ada"


def test_cli_from_study_on_a_journal_file(tmp_path, capsys):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "studies.journal"
    fill(new_study(JournalStorage(JournalFileBackend(str(journal)))))
    out = tmp_path / "presets"
    assert main(["presets", "from-study", "--study", "shapes-change_color", "--storage", str(journal),
                 "--out", str(out)]) == 0
    assert "added" in capsys.readouterr().out
    preset = Preset.load(out / preset_filename("shapes", "change_color"), strict=True)
    assert preset.params() == EditParams(w_src=0.6, w_tgt=6.0)
    # Same study again: dated by its last trial, so the rebuilt preset is identical.
    assert main(["presets", "from-study", "--storage", str(journal), "--out", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out
    # More trials on other tasks would not silently replace it either: a hand-made rival is kept out.
    rival = preset.to_dict()
    rival["provenance"]["task_fingerprint"] = "other-tasks"
    rival.pop("content_hash")
    Preset.from_dict(rival).save(out / preset_filename("shapes", "change_color"))
    assert main(["presets", "from-study", "--storage", str(journal), "--out", str(out)]) == 0
    assert "kept" in capsys.readouterr().out
    assert main(["presets", "from-study", "--study", "nope", "--storage", str(journal), "--out", str(out)]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def test_cli_from_study_on_postgresql_never_prints_the_password(tmp_path, capsys, postgres_url):
    from sqlalchemy.engine import make_url

    password = make_url(postgres_url).password
    name = f"preset-test-{uuid.uuid4().hex[:8]}"
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        fill(new_study(storage, name), storage_label=postgres_url)  # a careless tuner: the study holds the raw URL
        out = tmp_path / "presets"
        assert main(["presets", "from-study", "--study", name, "--storage", postgres_url, "--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert password and password not in captured.out + captured.err
        text = (out / preset_filename("shapes", "change_color")).read_text()
        assert password not in text and ":***@" in text
        bad = postgres_url.replace(password, "wrong-password")
        assert main(["presets", "from-study", "--study", name, "--storage", bad, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert "wrong-password" not in captured.out + captured.err and "error" in captured.err
    finally:
        optuna.delete_study(study_name=name, storage=storage)
