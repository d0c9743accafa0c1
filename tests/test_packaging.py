"""The wheel carries what an installed idp needs: templates, migrations, static files and
the password list (DESIGN.md §3: not only an editable install)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_migrations_static_and_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("idp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "idp/templates/steps/password.html",
        "idp/templates/consent.html",
        "idp/migrations/env.py",
        "idp/migrations/versions/0001_initial_schema.py",
        "idp/static/idp.css",
        "idp/data/common-passwords.txt",
        "idp/cli.py",
    ):
        assert required in names, required
