"""Debian's Apache httpd with mod_auth_openidc, started by a test on a free port with a
configuration of its own (ServerRoot, PidFile, ErrorLog, runtime directory and mutexes all
in a private directory): the system's apache2 service and /etc/apache2 are neither used nor
touched. The caller writes the site part (the mod_auth_openidc directives and locations);
`base_config` supplies what every test server needs around it.

As root (CI), httpd's children run as www-data, as on a Debian server: the private
directory is created world-readable under the system's temporary directory (pytest's own
directories are 0700 and closed to them)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import unavailable
from tests.support.processes import log_tail

MODULES = Path("/usr/lib/apache2/modules")
READY_TIMEOUT_SECONDS = 20.0
# Each module the sites here use; Debian builds core, so, log_config, logio, unixd, version
# and watchdog into the binary.
NEEDED_MODULES = ("mpm_prefork", "authn_core", "authz_core", "authz_user", "mime", "cgi", "alias", "auth_openidc")


def apache_binary() -> str:
    found = shutil.which("apache2") or ("/usr/sbin/apache2" if os.access("/usr/sbin/apache2", os.X_OK) else None)
    if found is None:
        unavailable("apache2 not found (apt-get install apache2 libapache2-mod-auth-openidc)")
    missing = [name for name in NEEDED_MODULES if not (MODULES / f"mod_{name}.so").exists()]
    if missing:
        unavailable(
            f"Apache modules missing in {MODULES}: {', '.join(missing)} (apt-get install libapache2-mod-auth-openidc)"
        )
    return str(found)


def _run_as() -> str:
    """`User`/`Group` lines: httpd refuses to serve as root, so as root its children run as
    www-data (nobody if the machine has no www-data); as anyone else httpd stays that user."""
    if os.getuid() != 0:
        return ""
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(user)
            return f"User {user}\nGroup {group}\n"
        except KeyError:
            continue
    return ""


def base_config(root: Path, port: int) -> str:
    """Server-wide settings: modules, the listener on 127.0.0.1:port, prefork (so mod_cgi
    runs the scripts), logs, pid file and locks under `root`."""
    modules = "".join(f"LoadModule {name}_module {MODULES}/mod_{name}.so\n" for name in NEEDED_MODULES)
    return f"""\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}"
Mutex file:{root} default
ErrorLog "{root}/error.log"
LogLevel warn auth_openidc:info
LogFormat "%h \\"%r\\" %>s" brief
CustomLog "{root}/access.log" brief
{modules}{_run_as()}StartServers 2
MinSpareServers 1
MaxSpareServers 4
Timeout 30
KeepAlive Off
TypesConfig /dev/null
AddType text/html .html
DocumentRoot "{root}/htdocs"
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory "{root}/htdocs">
  Require all granted
</Directory>
"""


@dataclass
class Apache:
    root: Path  # ServerRoot: configuration, logs, htdocs, cgi-bin
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self, lines: int = 60) -> str:
        return log_tail(self.root / "error.log", lines)

    def access_log(self, lines: int = 60) -> str:
        return log_tail(self.root / "access.log", lines)

    def start(self, config: str) -> None:
        binary = apache_binary()
        conf = self.root / "httpd.conf"
        conf.write_text(config, encoding="utf-8")
        with open(self.root / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [binary, "-d", str(self.root), "-f", str(conf), "-DFOREGROUND"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM to the group we created (httpd's parent stops its children), then SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if (status := self.process.poll()) is not None:
                self.process = None
                pytest.fail(
                    f"apache2 exited with status {status}:\n{log_tail(self.root / 'stdout.log')}\n{self.error_log()}",
                    pytrace=False,
                )
            try:
                httpx.get(self.origin + "/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"apache2 did not answer on {self.origin} within {READY_TIMEOUT_SECONDS:.0f} s:\n{self.error_log()}",
            pytrace=False,
        )


@contextmanager
def running_apache(port: int, site: Callable[[Path], str], files: dict[str, tuple[str, int]]) -> Iterator[Apache]:
    """httpd on 127.0.0.1:port with base_config plus `site(server_root)`; `files` are written
    under the ServerRoot first (relative path → (content, mode)). The ServerRoot is a fresh directory,
    removed afterwards (a failed start puts the logs in the failure message)."""
    root = Path(tempfile.mkdtemp(prefix="idp-rp-apache-"))
    root.chmod(0o755)
    try:
        (root / "htdocs").mkdir(mode=0o755)
        for relative, (content, mode) in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.parent.chmod(0o755)
            target.write_text(content, encoding="utf-8")
            target.chmod(mode)
        server = Apache(root=root, port=port)
        server.start(base_config(root, port) + site(root))
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
