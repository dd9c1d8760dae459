"""Timing loops, interleaved repeats and the result model.

Every contender of a workload is built and calibrated first; then each repeat takes one
sample of every contender, round-robin, starting one place later each repeat so that no
contender always runs first (or right after the most expensive one). The reported figure
is the median of the samples.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import statistics
import textwrap
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

Role = Literal["ours", "peer", "ref"]
Unit = Literal["ns/call", "calls/s", "B/breaker"]

perf_ns = time.perf_counter_ns
T = TypeVar("T")


class BenchSetupError(Exception):
    """A contender could not be set up or did not behave as the workload needs."""


@dataclass(frozen=True)
class Settings:
    """How hard to measure: quick mode for CI, the full run for the README."""

    quick: bool
    repeats: int
    budget_ns: int  # aim of one sample's duration when calibrating
    max_n: int  # cap on loop iterations of one sample
    threads: int = 8
    max_per_thread: int = 200_000
    memory_count: int = 10_000

    @classmethod
    def make(cls, *, quick: bool, repeats: int | None) -> Settings:
        if quick:
            return cls(
                quick=True,
                repeats=repeats or 3,
                budget_ns=5_000_000,
                max_n=3_000,
                max_per_thread=500,
                memory_count=2_000,
            )
        return cls(quick=False, repeats=repeats or 7, budget_ns=100_000_000, max_n=2_000_000)


class Runner(Protocol):
    """One contender, ready to measure."""

    n: int

    def calibrate(self, settings: Settings) -> None: ...

    def sample(self) -> float: ...

    def close(self) -> None: ...


def _compile_loop(stmt: str, namespace: dict[str, Any], *, is_async: bool) -> Callable[..., Any]:
    """Compile ``for _ in it: <stmt>`` into a function, with the namespace bound as locals.

    Like timeit: the statement is inlined in the loop, so the only overhead is the loop
    itself, the same for every contender.
    """
    for name in namespace:
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"bad namespace name {name!r}")
    params = "".join(f", {name}=_ns_[{name!r}]" for name in namespace)
    body = textwrap.indent(textwrap.dedent(stmt).strip("\n"), " " * 8)
    prefix = "async " if is_async else ""
    src = (
        f"{prefix}def inner(_it, _timer{params}):\n"
        "    _t0 = _timer()\n"
        "    for _ in _it:\n"
        f"{body}\n"
        "    return _timer() - _t0\n"
    )
    scope: dict[str, Any] = {"_ns_": namespace}
    exec(compile(src, f"<bench: {stmt.strip()[:40]}>", "exec"), scope)
    inner: Callable[..., Any] = scope["inner"]
    return inner


APP_CONTEXT_VARS = ("request_id", "trace_span", "log_fields", "tenant")


def _app_context() -> contextvars.Context:
    """The context every timed loop runs in: a few variables set, as in a real service.

    ``ContextVar.set`` costs more once the context holds anything (it is a HAMT), and a
    library that leaves a variable set would otherwise make every later measurement of
    a ContextVar user depend on the run order. Each sample gets a fresh copy of this.
    """
    ctx = contextvars.Context()

    def fill() -> None:
        for name in APP_CONTEXT_VARS:
            var: contextvars.ContextVar[str] = contextvars.ContextVar(f"bench_{name}")
            var.set(name)

    ctx.run(fill)
    return ctx


APP_CONTEXT = _app_context()


def _gc_quiet() -> bool:
    """Disable the collector for a timed region; returns whether it was on.

    Collection itself happens once per round (in ``run_workload``), not before every
    sample: with tens of thousands of live objects a full collection costs more than a
    quick sample.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    return was_enabled


def _autorange(run: Callable[[int], int], budget_ns: int, max_n: int) -> int:
    """Smallest n in 1, 2, 5, 10, 20, 50, ... whose run takes at least budget_ns."""
    for exp in itertools.count():
        for mult in (1, 2, 5):
            n: int = mult * 10**exp
            if n >= max_n:
                return max_n
            if run(n) >= budget_ns:
                return n
    raise AssertionError("unreachable")


class LoopRunner:
    """ns per execution of a statement, sync or awaited in an event loop."""

    def __init__(
        self, stmt: str, namespace: dict[str, Any] | None = None, *, is_async: bool = False
    ) -> None:
        self.n = 0
        self._inner = _compile_loop(stmt, namespace or {}, is_async=is_async)
        self._loop = asyncio.new_event_loop() if is_async else None

    def _run(self, n: int) -> int:
        it = itertools.repeat(None, n)
        was_enabled = _gc_quiet()
        try:
            ctx = APP_CONTEXT.copy()
            if self._loop is None:
                elapsed: int = ctx.run(self._inner, it, perf_ns)
            else:
                # A task copies the context current at its creation: create it in ctx.
                task = ctx.run(self._loop.create_task, self._inner(it, perf_ns))
                elapsed = self._loop.run_until_complete(task)
        finally:
            if was_enabled:
                gc.enable()
        return elapsed

    def calibrate(self, settings: Settings) -> None:
        self._run(min(100, settings.max_n))  # warm up (specialising interpreter, caches)
        self.n = _autorange(self._run, settings.budget_ns, settings.max_n)

    def sample(self) -> float:
        return self._run(self.n) / self.n

    def run_coro(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine (e.g. a setup or check) in this runner's event loop."""
        if self._loop is None:
            raise TypeError("not an async runner")
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


class ThreadRunner:
    """Total calls per second of N threads running the same statement on shared objects."""

    def __init__(self, stmt: str, namespace: dict[str, Any], *, threads: int = 8) -> None:
        self.n = 0  # calls per thread
        self._threads = threads
        self._inner = _compile_loop(stmt, namespace, is_async=False)

    def _run(self, per_thread: int) -> int:
        barrier = threading.Barrier(self._threads + 1)
        errors: list[BaseException] = []

        def worker() -> None:
            barrier.wait()
            try:
                APP_CONTEXT.copy().run(self._inner, itertools.repeat(None, per_thread), perf_ns)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(self._threads)]
        for t in workers:
            t.start()
        was_enabled = _gc_quiet()
        try:
            barrier.wait()
            t0 = perf_ns()
            for t in workers:
                t.join()
            elapsed = perf_ns() - t0
        finally:
            if was_enabled:
                gc.enable()
        if errors:
            raise BenchSetupError(f"a worker thread failed: {errors[0]!r}") from errors[0]
        return max(elapsed, 1)

    def calibrate(self, settings: Settings) -> None:
        self._inner(itertools.repeat(None, 100), perf_ns)
        self.n = _autorange(self._run, settings.budget_ns, settings.max_per_thread)

    def sample(self) -> float:
        return self._threads * self.n * 1e9 / self._run(self.n)

    def close(self) -> None:
        pass


class MemoryRunner:
    """Bytes per object (tracemalloc) of ``count`` objects made by ``make(name)``.

    ``make`` returns what a user would hold on to (the breaker); it may return None when
    the library keeps the state itself (a factory's registry). Names are made before
    tracing starts and the holding list is allocated before the baseline, so neither is
    counted.
    """

    def __init__(self, make: Callable[[str], object], prefix: str) -> None:
        self.n = 0
        self._make = make
        self._prefix = prefix
        self._round = 0

    def calibrate(self, settings: Settings) -> None:
        self.n = settings.memory_count
        self._make(f"{self._prefix}-warmup")

    def sample(self) -> float:
        self._round += 1
        names = [f"{self._prefix}-{self._round}-{i}" for i in range(self.n)]
        held: list[object] = [None] * self.n
        gc.collect()
        was_enabled = _gc_quiet()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i, name in enumerate(names):
                held[i] = self._make(name)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            if was_enabled:
                gc.enable()
        del held
        return (after - before) / self.n

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Target:
    """A goal for a ratio, from the issue; informational only."""

    op: Literal["<=", ">=", "<"]
    value: float

    def met(self, ratio: float) -> bool:
        if self.op == "<=":
            return ratio <= self.value
        if self.op == "<":
            return ratio < self.value
        return ratio >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Pair:
    """An explicit comparison numerator/denominator (e.g. cost at 10k / cost at 10)."""

    numerator: str
    denominator: str
    target: Target | None = None


@dataclass
class Contender:
    label: str
    role: Role
    build: Callable[[Settings], Runner]
    note: str = ""


@dataclass
class Workload:
    key: str
    title: str
    unit: Unit
    contenders: list[Contender]
    targets: dict[str, Target] = field(default_factory=dict)  # peer label -> target
    fastest_peer_target: Target | None = None
    fastest_among: tuple[str, ...] | None = None  # peers the fastest-peer target considers
    pairs: list[Pair] | None = None  # replaces the default ours x peer comparisons
    ratio_label: str = "ours/peer"
    description: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "calls/s"


@dataclass
class ContenderResult:
    label: str
    role: Role
    note: str = ""
    n: int = 0
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None


@dataclass
class Comparison:
    numerator: str
    denominator: str
    numerator_value: float | None
    denominator_value: float | None
    ratio: float | None
    target: str | None
    status: str  # PASS, MISS, ERROR or "" (no target)


@dataclass
class WorkloadResult:
    key: str
    title: str
    unit: Unit
    ratio_label: str
    description: str
    contenders: list[ContenderResult]
    comparisons: list[Comparison]
    seconds: float


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _rotations(labels: list[str], repeats: int) -> Iterator[list[str]]:
    for rep in range(repeats):
        k = rep % len(labels) if labels else 0
        yield labels[k:] + labels[:k]


def run_workload(
    workload: Workload, settings: Settings, log: Callable[[str], None]
) -> WorkloadResult:
    """Build, calibrate, then sample every contender round-robin, ``repeats`` times."""
    started = perf_ns()
    results = {
        c.label: ContenderResult(label=c.label, role=c.role, note=c.note)
        for c in workload.contenders
    }
    runners: dict[str, Runner] = {}

    def fail(label: str, exc: BaseException) -> None:
        results[label].error = _describe(exc)
        results[label].samples.clear()
        log(f"  ERROR {workload.key} / {label}: {results[label].error}")
        log(textwrap.indent("".join(traceback.format_exception(exc)[-3:]).rstrip(), "    "))

    for contender in workload.contenders:
        try:
            runner = contender.build(settings)
            runners[contender.label] = runner
            runner.calibrate(settings)
            results[contender.label].n = runner.n
        except Exception as exc:
            fail(contender.label, exc)

    for order in _rotations(list(runners), settings.repeats):
        gc.collect()
        for label in order:
            if results[label].error:
                continue
            try:
                results[label].samples.append(runners[label].sample())
            except Exception as exc:
                fail(label, exc)

    for runner in runners.values():
        runner.close()
    contenders = list(results.values())
    return WorkloadResult(
        key=workload.key,
        title=workload.title,
        unit=workload.unit,
        ratio_label=workload.ratio_label,
        description=workload.description,
        contenders=contenders,
        comparisons=compare(workload, results),
        seconds=(perf_ns() - started) / 1e9,
    )


def _comparison(
    num: ContenderResult, den: ContenderResult, target: Target | None, den_label: str = ""
) -> Comparison:
    a, b = num.median, den.median
    ratio = a / b if a is not None and b else None
    if ratio is None:
        status = "ERROR"
    elif target is None:
        status = ""
    else:
        status = "PASS" if target.met(ratio) else "MISS"
    return Comparison(
        numerator=num.label,
        denominator=den_label or den.label,
        numerator_value=a,
        denominator_value=b,
        ratio=ratio,
        target=str(target) if target else None,
        status=status,
    )


def compare(workload: Workload, results: dict[str, ContenderResult]) -> list[Comparison]:
    """The ratios of a workload: explicit pairs, or every ours x every peer."""
    if workload.pairs is not None:
        return [
            _comparison(results[p.numerator], results[p.denominator], p.target)
            for p in workload.pairs
        ]
    ours = [r for r in results.values() if r.role == "ours"]
    peers = [r for r in results.values() if r.role == "peer"]
    out: list[Comparison] = []
    for mine in ours:
        out.extend(_comparison(mine, peer, workload.targets.get(peer.label)) for peer in peers)
        if workload.fastest_peer_target is not None:
            among = workload.fastest_among
            timed = [
                p for p in peers if p.median is not None and (among is None or p.label in among)
            ]
            if timed:
                pick = max if workload.higher_is_better else min
                best = pick(timed, key=lambda p: p.median or 0.0)
                label = f"fastest peer ({best.label})"
                out.append(_comparison(mine, best, workload.fastest_peer_target, label))
    return out
