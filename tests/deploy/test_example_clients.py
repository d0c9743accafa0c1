"""The example clients file shipped in deploy/ is accepted by `idp clients sync` as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "clients.example.toml"
IDP = Path(sys.executable).with_name("idp")


def test_the_example_clients_file_syncs_as_it_is(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(IDP_DATABASE_URL=f"sqlite:///{tmp_path}/idp.db", IDP_DATA_DIR=str(tmp_path / "var"))
    # as the README's set-up does: the group its default_allowed_groups names comes first
    for args in (["db", "upgrade"], ["group", "add", "staff"], ["clients", "sync", str(EXAMPLE)]):
        done = subprocess.run([str(IDP), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clients: 3 added, 0 updated, 0 removed"
    # the one warning left is the placeholder back-channel URI, which idp would not call
    # (example.com is outside IDP_OUTBOUND_ALLOWED_NETWORKS, or does not resolve here)
    warnings = [line for line in done.stderr.splitlines() if "IDP_OUTBOUND_ALLOWED_NETWORKS" not in line]
    assert not any("warning" in line for line in warnings), done.stderr
