"""What the numbers were measured on: cores, CPU model, tool versions, the commit."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.servers import REPO


@dataclass(frozen=True)
class Machine:
    date: str
    commit: str
    dirty: bool  # the working tree had uncommitted changes
    nproc: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    node: str
    wrk: str


def describe_machine() -> Machine:
    return Machine(
        date=datetime.date.today().isoformat(),
        commit=_output(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
        dirty=bool(_output(["git", "status", "--porcelain", "--untracked-files=no"])),
        nproc=len(os.sched_getaffinity(0)),
        cpu_model=_cpu_model(),
        memory_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        kernel=platform.release(),
        python=platform.python_version(),
        node=_output(["node", "--version"]) or "not found",
        wrk=(_output(["wrk", "--version"]) or "not found").splitlines()[0].split(" Copyright")[0],
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _output(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return ""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout or done.stderr).strip()  # wrk --version prints its banner and exits 1
