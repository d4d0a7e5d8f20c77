"""Share tuning and presets in a team.

Two flows, both shown here on the shapes model:
  A. a shared study: every worker joins one study by name on shared storage (PostgreSQL in a team; a journal file
     here unless --storage is given), then anyone rebuilds the presets from it without re-running anything;
  B. a preset pack: export presets to a .zip with hashes, import it into a colleague's presets directory
     (hashes verified, nothing overwritten silently).

    .venv/bin/python examples/share_presets_in_a_team.py
    .venv/bin/python examples/share_presets_in_a_team.py --storage postgresql://user:pass@db/autotune --trials 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from autotune import Editor, EditParams, load_tasks, tune
from autotune.presets.pack import export_pack, import_pack, verify_pack
from autotune.presets.store import PresetStore
from autotune.shapes.scoring import ShapesScorer
from autotune.tuning.search_space import SearchSpace
from autotune.tuning.storage import open_storage
from autotune.tuning.to_preset import presets_from_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--category", default="change_color")
    parser.add_argument("--storage", help="shared Optuna storage URL (default: a journal file under --out)")
    parser.add_argument("--study", default="team-shapes-change_color")
    parser.add_argument("--trials", type=int, default=16, help="trials per worker")
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="team-demo")
    args = parser.parse_args(argv)
    out = Path(args.out)
    storage = args.storage or str(out / "study.journal")

    # A. Two "workers" join the same study (in a team, each runs this on its own machine, same --study/--storage).
    editor = Editor.from_pretrained(args.model, progress=False)
    tasks = load_tasks(f"shapes:{args.category}")[: args.tasks]
    space = SearchSpace.default(base=EditParams(steps=args.steps))
    for worker in range(2):
        tune(
            editor,
            tasks,
            category=args.category,
            trials=args.trials * (worker + 1),
            scorer=ShapesScorer(),
            storage=storage,
            study_name=args.study,
            seed=worker,
            search_space=space,
            save_preset=False,
            project_dir=out,
            progress=False,
        )
    study = optuna.load_study(study_name=args.study, storage=open_storage(storage, project_dir=out).storage)
    print(f"study {args.study}: {len(study.trials)} trials from both workers")

    # ...and anyone rebuilds the presets from the shared study, without re-running anything.
    alice = out / "alice-presets"
    for preset in presets_from_study(study):
        print(PresetStore([]).add(preset, alice))

    # B. Alice exports a pack; Bob verifies and imports it into his presets directory.
    pack = out / "shapes-presets.zip"
    print(export_pack([alice], pack))
    print(verify_pack(pack))
    print(import_pack(pack, out / "bob-presets"))
    print(import_pack(pack, out / "bob-presets"))  # a second import changes nothing and says so
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
