"""A non-editable install (``pip install .``) ships the feature specs and finds them by name.

    .venv/bin/python -m pytest tests/integration/test_install.py -m slow -q

Builds recsys from a copy of the repository (what a clone holds: tracked and not-ignored files,
symlinks kept) into a fresh venv that sees .venv's site-packages for torch & co. (``--no-deps``),
then, from an unrelated working directory, loads every shipped spec through the public API and
checks the import came from the install, not from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _copy_checkout(dst: Path) -> None:
    """Copy the files git would clone (plus new, not-ignored ones), keeping symlinks as symlinks."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, out = REPO / rel, dst / rel
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        elif src.is_file():
            shutil.copy2(src, out)


def _run(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_noneditable_install_ships_every_feature_spec(tmp_path):
    src = tmp_path / "src"
    _copy_checkout(src)
    shipped = sorted(p.stem for p in (REPO / "features").glob("*.yaml"))
    assert {"criteo", "movielens", "synthetic", "synthetic_interactions"} <= set(shipped)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    # .venv's packages (torch, pydantic, pip, setuptools ...) after the venv's own: a plain path
    # entry, so .venv's .pth files (its editable recsys among them) are not processed.
    (purelib / "zz_dot_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)], tmp_path)
    # What the wheel holds is real files, not the source tree's symlink.
    installed = purelib / "recsys" / "features" / "specs"
    assert installed.is_dir() and not installed.is_symlink()
    assert sorted(p.stem for p in installed.glob("*.yaml")) == shipped

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = textwrap.dedent(
        """
        import json, recsys
        from recsys.features import builtin_spec, builtin_spec_names, builtin_spec_path, load_spec
        loaded = {}
        for name in builtin_spec_names():
            spec = builtin_spec(name)
            assert load_spec(builtin_spec_path(name)) == spec
            loaded[name] = [spec.name, len(spec.features)]
        print(json.dumps({"recsys": recsys.__file__, "path": str(builtin_spec_path("criteo")), "loaded": loaded}))
        """
    )
    out = json.loads(_run([str(python), "-c", probe], elsewhere).strip().splitlines()[-1])
    assert out["recsys"].startswith(str(purelib)), out["recsys"]
    assert out["path"].startswith(str(purelib)), out["path"]
    assert sorted(out["loaded"]) == shipped
    assert all(name == spec_name and n > 0 for name, (spec_name, n) in out["loaded"].items())
