"""py-spy around a worker process: record while a benchmark runs, then summarise the samples.

`record()` attaches `py-spy record --gil --nonblocking --format raw` (Python frames only,
`--native` off; `--gil` keeps the samples of the thread holding the GIL, i.e. where the
worker spends CPU rather than where it waits). `summarise()` prints the top of stack (self
samples) and the inclusive share of sf-bridge's own functions.

    .venv/bin/python bench/pyspy.py PROFILE.txt   # summarise a recorded profile
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::(?P<line>\d+))?\)$")


def record(pid: int, out: Path, *, seconds: int, rate: int = 50) -> subprocess.Popen[bytes]:
    exe = str(PY_SPY) if PY_SPY.exists() else (shutil.which("py-spy") or "py-spy")
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--gil",
            "--nonblocking",
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise(path: Path, top: int = 25) -> str:
    """Top of stack and inclusive shares, as Markdown tables."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        leaf_file = frames[-1].rsplit("(", 1)[-1]
        by_package[leaf_file.split("/")[0].rstrip(")")] += n
        for frame in dict.fromkeys(frames):
            if "sf_bridge/" in frame:
                inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"samples: {total}", "", "top of stack (self):", "", "| share | function |"]
    lines.append("|---:|---|")
    lines += [f"| {n / total:.1%} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "self samples by package of the leaf frame:", "", "| share | package |"]
    lines.append("|---:|---|")
    lines += [f"| {n / total:.1%} | {p} |" for p, n in by_package.most_common(12)]
    lines += ["", "inclusive, sf-bridge functions:", "", "| share | function |", "|---:|---|"]
    lines += [f"| {n / total:.1%} | `{f}` |" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
