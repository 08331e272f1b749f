"""Who got the CPUs during a benchmark run: this process tree, and everything else on the machine.

A ratio between two runs on a shared machine says as much about the neighbours as about the code,
so every bench prints, for each run, the cores its own process tree obtained (CPU seconds of the
bench process and all its descendants: Ray's raylet, GCS and workers included, / wall seconds) and
the CPU seconds *other* processes took meanwhile (the machine's busy time from ``/proc/stat``
minus the tree's). When others took more than ``BUSY_SHARE`` of the machine, the run is marked
busy and its ratio is not valid (``--strict`` turns that into a non-zero exit).

The tree is sampled every ``interval`` seconds from ``/proc/<pid>/stat`` (each process's own utime +
stime; a process that exits keeps its last sample). What a process spends after its last sample,
and a process that starts and exits between two samples, is missed: that under-counts the tree
and over-counts "others" by at most ``interval`` CPU seconds per exited process.
Linux only (``/proc``); elsewhere the figures are ``None``.

Also here: the machine's ceiling (:func:`side_by_side_runs`: plain loops side by side in their own
processes, warmed up first) and whose CPU per frame Ray's extra is (:func:`cpu_per_frame_lines`:
the machine's, which the side-by-side loops pay too, or Ray's own).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

BUSY_SHARE = 0.10  # others above this share of the machine's CPU time: "machine busy, ratio not valid"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all CPUs; idle and iowait left out)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user / nice
    return (sum(fields) - idle - guest) / _TICKS


def _proc_times() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, own CPU s) for every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()  # fields after the command name, from field 3 (state)
        ppid, utime, stime = int(rest[1]), int(rest[11]), int(rest[12])
        out[int(name)] = (ppid, (utime + stime) / _TICKS)
    return out


def _tree(root: int, procs: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return seen


def process_tree(root: int) -> set[int]:
    """``root`` and every process descending from it now (one scan of ``/proc``)."""
    return _tree(root, _proc_times())


@dataclass
class CpuShares:
    """CPU seconds of one run: this process tree's, other processes', and the machine's cores."""

    wall_s: float
    tree_cpu_s: float | None
    others_cpu_s: float | None
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def tree_cores(self) -> float | None:
        return None if self.tree_cpu_s is None or self.wall_s <= 0 else self.tree_cpu_s / self.wall_s

    @property
    def others_share(self) -> float | None:
        """Share of the machine's CPU time (cpus x wall) that other processes took."""
        if self.others_cpu_s is None or self.wall_s <= 0:
            return None
        return max(0.0, self.others_cpu_s) / (self.cpus * self.wall_s)

    @property
    def busy(self) -> bool:
        share = self.others_share
        return share is not None and share > BUSY_SHARE

    def line(self, name: str) -> str:
        cores = "n/a" if self.tree_cores is None else f"{self.tree_cores:.2f}"
        others = "n/a" if self.others_cpu_s is None else f"{max(0.0, self.others_cpu_s):.1f} CPU s ({100 * (self.others_share or 0):.0f}% of the machine)"
        flag = "  <- machine busy, ratio not valid" if self.busy else ""
        return f"  {name:<10} {self.wall_s:7.1f} s wall, cores obtained {cores} of {self.cpus}; other processes took {others}{flag}"

    def to_dict(self) -> dict:
        return {**asdict(self), "tree_cores": self.tree_cores, "others_share": self.others_share, "busy": self.busy}


class CpuMeter:
    """``with CpuMeter() as m: run()`` then ``m.shares``: the tree's and others' CPU during the block."""

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root = root or os.getpid()
        self.interval = interval
        self._last: dict[int, float] = {}  # pid -> latest own CPU s seen
        self._start: dict[int, float] = {}
        self._stop = threading.Event()
        self.shares: CpuShares | None = None

    def _sample(self) -> None:
        procs = _proc_times()
        for pid in _tree(self.root, procs):
            self._last[pid] = procs[pid][1]
            self._start.setdefault(pid, 0.0)  # started during the run: all its CPU time counts

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuMeter:
        if not os.path.isdir("/proc/self"):
            self._thread = None
            self._t0 = time.perf_counter()
            return self
        procs = _proc_times()
        for pid in _tree(self.root, procs):  # processes alive now count from their current CPU time
            self._start[pid] = self._last[pid] = procs[pid][1]
        self._busy0 = _machine_busy_s()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        if self._thread is None:
            self.shares = CpuShares(wall, None, None)
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        busy1 = _machine_busy_s()
        tree = sum(self._last[pid] - self._start.get(pid, 0.0) for pid in self._last)
        others = None if busy1 is None or self._busy0 is None else (busy1 - self._busy0) - tree
        self.shares = CpuShares(wall, tree, others)


# ---- which stage starved: Ray's task timeline ----------------------------------------------------


@dataclass
class SlotUse:
    """How the Ray run used its task slots (from ``ray.timeline()``'s map-task events)."""

    slots: int  # tasks the run could run at once (its CPUs / CPUs per task, or the pool size)
    tasks: int
    mean_running: float  # tasks running at once, averaged over the whole run
    ramp_s: float  # from the start until ``slots`` tasks first ran at once (worker processes starting)
    tail_s: float  # from the last moment ``slots`` tasks ran at once until the end (the last items alone)
    wall_s: float
    idle_slot_s: dict[str, float] = field(default_factory=dict)  # slot-seconds without a task: ramp, middle, tail

    def diagnosis(self, cores: float | None, cpus: int) -> str:
        """One line: whether the run kept its cores busy, and if not, which part lost them."""
        got = "n/a" if cores is None else f"{cores:.2f}"
        use = (f"{self.mean_running:.1f} of {self.slots} task slots in use on average, ramp-up {self.ramp_s:.1f} s, "
               f"tail {self.tail_s:.1f} s of {self.wall_s:.1f} s")
        if cores is not None and cores >= 0.9 * cpus:
            return f"  Ray kept the cores busy ({got} of {cpus}); {use}"
        names = {"ramp": "start-up (worker processes starting, models loading)", "tail": "tail (the last items running alone)",
                 "middle": "pool size / concurrency (slots idle mid-run)"}
        worst = max(self.idle_slot_s, key=lambda k: self.idle_slot_s[k]) if self.idle_slot_s else "middle"
        if self.mean_running >= 0.9 * self.slots:
            why = "every slot held a task, but the tasks did not keep a core each busy: they waited (I/O, the driver, transfers)"
        else:
            why = f"most idle slot time was in the {names[worst]}: {self.idle_slot_s.get(worst, 0.0):.1f} slot-s"
        return f"  Ray left cores idle ({got} of {cpus}): {use}; {why}"

    def to_dict(self) -> dict:
        return asdict(self)


def _running_area(edges: list[tuple[float, int]], lo: float, hi: float) -> float:
    """Integral of the number of running tasks over [lo, hi] (edges: (time, +1 start / -1 end))."""
    running, last, area = 0, None, 0.0
    for t, step in edges:
        if last is not None:
            a, b = max(last, lo), min(t, hi)
            if b > a:
                area += running * (b - a)
        running += step
        last = t
    if last is not None and hi > last:
        area += running * (hi - max(last, lo))
    return area


def slot_use(start_epoch_s: float, end_epoch_s: float, slots: int) -> SlotUse | None:
    """Map-task concurrency of the Ray Data run between two ``time.time()`` instants (call while Ray
    is still up, right after the run). None if Ray recorded no task events."""
    import ray

    try:
        events = ray.timeline()
    except Exception:  # noqa: BLE001 - task events off or the API changed: no diagnosis, the figures stand
        return None
    lo, hi = start_epoch_s * 1e6, end_epoch_s * 1e6
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events
             if e.get("ph") == "X" and str(e.get("name", "")).endswith("_map_task") and lo <= e["ts"] <= hi]
    if not spans:
        return None
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running, first_full, last_full = 0, None, None
    for t, step in edges:
        was_full = running >= slots
        running += step
        if running >= slots and first_full is None:
            first_full = t
        if was_full and running < slots:
            last_full = t
    first_full = hi if first_full is None else first_full
    last_full = first_full if last_full is None or last_full < first_full else last_full
    idle = {
        "ramp": slots * (first_full - lo) - _running_area(edges, lo, first_full),
        "middle": slots * (last_full - first_full) - _running_area(edges, first_full, last_full),
        "tail": slots * (hi - last_full) - _running_area(edges, last_full, hi),
    }
    wall = max(hi - lo, 1.0)
    return SlotUse(slots, len(spans), _running_area(edges, lo, hi) / wall, (first_full - lo) / 1e6, (hi - last_full) / 1e6,
                   wall / 1e6, {k: round(max(0.0, v) / 1e6, 2) for k, v in idle.items()})


# ---- whose CPU per frame: the machine's or Ray's -------------------------------------------------


def ms_per_frame(cpu_s: float | None, frames: int) -> float | None:
    """CPU milliseconds per frame (None when the CPU time is not known)."""
    return None if cpu_s is None else 1000.0 * cpu_s / max(frames, 1)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.0f}%"


def cpu_per_frame_lines(work: str, loop: tuple[float | None, float | None], ray: tuple[float | None, float | None],
                        side: tuple[float | None, float | None] | None = None, processes: int = 2) -> list[str]:
    """The CPU per frame of the plain loop, the loops side by side (the ceiling) and Ray, each as
    (inside the work, whole process tree) in ms, and whose Ray's extra is: the side-by-side loops
    run the loop's code with no framework, so what they spend over the one loop is the machine's
    (busy vCPUs make every process slower: shared cores, caches, memory bandwidth, clock), and what
    Ray spends over them is Ray's own. ``work`` names where the inside figure is measured."""
    names = [("loop", loop), *([(f"{processes} loops side by side", side)] if side else []), ("Ray", ray)]
    lines = [f"  CPU per frame {work}: " + ", ".join(f"{n} {_ms(v[0])}" for n, v in names) + " (goal: Ray within 10% of the loop)",
             "  CPU per frame of the whole process tree: " + ", ".join(f"{n} {_ms(v[1])}" for n, v in names)]
    for i, what in enumerate((work, "of the whole tree")):
        base, top = loop[i], ray[i]
        if not base or not top:
            continue
        if side is None or not side[i]:
            lines.append(f"  Ray's CPU per frame {what}: {_pct(top / base)} over the loop (the side-by-side ceiling splits it)")
            continue
        lines.append(f"  Ray's CPU per frame {what}: {_pct(top / base)} over the loop; of it {_pct(side[i] / base)} is the machine's "
                     f"(the side-by-side loops over one loop), then {_pct(top / side[i])} Ray's own (Ray over the side-by-side loops)")
    return lines


# ---- the ceiling: plain loops side by side, no framework -----------------------------------------

_POOL_BARRIER: Any = None


def _join_pool(barrier: Any) -> None:
    global _POOL_BARRIER
    _POOL_BARRIER = barrier


def _warm_once(fn: Callable[..., Any], args: tuple) -> int:
    """``fn(*args)`` (a tiny run), then wait for every process of the pool: each runs exactly one."""
    try:
        fn(*args)
    finally:
        _POOL_BARRIER.wait(timeout=900)
    return os.getpid()


@dataclass
class SideBySide:
    """What the side-by-side processes returned, their wall time and the CPU shares meanwhile."""

    wall_s: float
    results: list
    shares: CpuShares


def side_by_side_runs(fn: Callable[..., Any], jobs: Sequence[tuple], warm_jobs: Sequence[tuple]) -> SideBySide:
    """``fn(*job)`` for every job at once, one spawned process each, timed with a :class:`CpuMeter`
    (the processes are this one's children: the meter counts them). First each process runs one
    ``warm_jobs`` entry untimed (imports, model loads, first calls), as the Ray runs' warm-up takes
    worker start-up and model loads out of Ray's clock."""
    import multiprocessing as mp

    if len(warm_jobs) != len(jobs):
        raise ValueError("one warm-up job per process")
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(jobs), initializer=_join_pool, initargs=(ctx.Barrier(len(jobs)),)) as pool:
        pool.starmap(_warm_once, [(fn, tuple(args)) for args in warm_jobs], chunksize=1)
        start = time.perf_counter()
        with CpuMeter() as meter:
            results = pool.starmap(fn, jobs, chunksize=1)
        wall = time.perf_counter() - start
    assert meter.shares is not None
    return SideBySide(wall, results, meter.shares)
