"""What every benchmark shares: the machine and versions it ran on, timing, peak memory, the
printed table and the JSON record. Each benchmark runs its variants side by side in one
invocation, so that their ratios compare like with like."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
# CamVid beside the repository; SEGBEAM_CAMVID points elsewhere (a subset carried to a device
# machine: benchmarks/device_prepare.py).
CAMVID = os.environ.get("SEGBEAM_CAMVID") or os.path.join(ROOT, "..", "shared", "data", "camvid")


def machine() -> dict:
    """The facts a reader needs to compare runs: CPU, cores, memory, accelerator, versions."""
    from segbeam.pipeline.provenance import package_versions

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib, 1),
        "accelerator": accelerator(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": package_versions(),
    }


def accelerator() -> Optional[str]:
    """The first GPU's name per nvidia-smi, or None."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = found.stdout.strip().splitlines()
    return names[0] if found.returncode == 0 and names else None


def peak_rss_mib() -> float:
    """The peak resident set size of this process, or of the largest child it has waited for
    (Beam's worker processes), whichever is larger, in MiB.

    This process's own peak is the kernel's high-water mark of its memory (``VmHWM``), not
    ``ru_maxrss``: Linux keeps ``ru_maxrss`` across exec, so a benchmark's child started from
    a parent holding 400 MB reported at least 400 MB whatever it used itself."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        with open("/proc/self/status") as handle:
            own = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def timed(function: Callable, *args, repeats: int = 1, **kwargs) -> tuple[float, object]:
    """The best wall time of ``repeats`` calls (seconds) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def run_child(module: str, args: Sequence[str], env: Optional[dict] = None) -> dict:
    """Runs ``python -m module args`` in a fresh process (its own peak memory, no warm caches
    from other variants) and returns the JSON object it prints on its last line."""
    command = [sys.executable, "-m", module, *args]
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_to_parent(**result) -> None:
    """A child run's result, with its peak memory, as the last stdout line ``run_child``
    reads."""
    print(json.dumps({**result, "peak_rss_mib": round(peak_rss_mib(), 1)}))


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], title: str) -> None:
    """Prints rows as an aligned table; ``columns`` are (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else format(row[key], spec)
                      for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for index, line in enumerate(cells):
        print("  " + "  ".join(cell.rjust(width) if column else cell.ljust(width)
                               for column, (cell, width) in enumerate(zip(line, widths))))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def write_record(name: str, rows, summary: dict, output: Optional[str]) -> str:
    """Writes the run's JSON record (command, machine, rows, summary) and returns its path."""
    path = output or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    record = {
        "benchmark": name,
        "command": shlex.join([os.path.basename(sys.executable), "-m", f"benchmarks.{name}",
                               *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "rows": rows,
        "summary": summary,
    }
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"\nrecord written to {os.path.relpath(path, ROOT)}")
    return path


def camvid_pairs(split: str = "val", limit: Optional[int] = None) -> list[tuple[str, str]]:
    """(image, mask) paths of a CamVid split beside the repository; empty when absent."""
    images = os.path.join(CAMVID, split)
    if not os.path.isdir(images):
        return []
    names = sorted(os.listdir(images))[:limit]
    return [(os.path.join(images, n), os.path.join(CAMVID, f"{split}annot", n)) for n in names]
