"""Policy tests: a policy path in, the outcome of every `expect` (results as data, with rule and pattern coverage) out.

Test blocks may sit in the policy's own files or in `*_test.route` files in the policy's directory. A test file
holds only `test` blocks (and comments): the runner compiles it together with the policy, so model names in it
resolve against the policy's aliases and catalog, and it cannot change the policy it tests (E800 otherwise).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.api import DECIDE_ARGUMENTS, Engine, RequestError
from engine.compiler.passes import compile_loaded
from engine.diagnostics import Diagnostic, PolicyError
from engine.language import nodes as n
from engine.language.load import Loaded, display_name, load, resolve_entry
from engine.language.parse import parse
from engine.runtime.decision import NoRouteError
from engine.runtime.matcher import to_re2
from engine.runtime.policy import CompiledPolicy
from engine.runtime.qualified import resolve_qualified
from engine.runtime.report import Report
from engine.runtime.semantic import Near, nearest_all
from providers.catalog.files import LARGE_FILE_BYTES, read_text

TEST_FILE_SUFFIX = "_test.route"


# ---- a compiled policy's statements --------------------------------------------------------------------------


def statements(policy: CompiledPolicy) -> list[n.Stmt]:
    """Every statement of the policy's .route files (re-parsed from the sources the policy keeps), in file order."""
    out: list[n.Stmt] = []
    examples = {t.file for t in policy.semantic.values()}
    for f in policy.files:
        if f.endswith((".yaml", ".yml", ".json")) or f not in policy.sources.texts or f in examples:
            continue
        try:
            out.extend(parse(policy.sources.texts[f], f).body)
        except PolicyError:
            continue
    return out


def aliases(policy: CompiledPolicy, stmts: list[n.Stmt] | None = None) -> dict[str, str]:
    """Policy model aliases -> canonical catalog names."""
    out: dict[str, str] = {}
    for s in statements(policy) if stmts is None else stmts:
        if isinstance(s, n.ModelAlias):
            spec = policy.catalog.resolve(out.get(s.target.name, s.target.name))
            if spec is not None:
                out.setdefault(s.name, spec.name)
    return out


# ---- compiling a policy with its test files ------------------------------------------------------------------


def find_test_files(path: str | Path) -> tuple[Path, list[Path]]:
    """(policy entry file, test files to compile with it). A `*_test.route` path selects that file alone."""
    entry = resolve_entry(path)
    if entry.name.endswith(TEST_FILE_SUFFIX):
        return entry.parent / "main.route", [entry]
    found = sorted(p for p in entry.parent.glob("*" + TEST_FILE_SUFFIX) if p.is_file() and p != entry)
    return entry, found


def load_with_tests(path: str | Path) -> tuple[Loaded, list[str]]:
    """The policy's statements plus the test blocks of its test files (never raises: see .diagnostics)."""
    entry, files = find_test_files(path)
    loaded = load(entry)
    added = []
    for f in files:
        shown = display_name(f)
        if shown in loaded.files:  # included by the policy itself: its tests are compiled in already
            continue
        try:
            text = read_text(f, LARGE_FILE_BYTES)  # a regular file only (a FIFO would block the run)
        except (OSError, UnicodeDecodeError) as exc:
            reason = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or str(exc))
            loaded.diagnostics.append(Diagnostic("E200", f"cannot read test file {shown}: {reason}"))
            continue
        loaded.files.append(shown)
        loaded.sources.add(shown, text)
        added.append(shown)
        try:
            module = parse(text, shown)
        except PolicyError as err:
            loaded.diagnostics.extend(err.diagnostics)
            continue
        for stmt in module.body:
            if isinstance(stmt, n.TestBlock):
                loaded.body.append(stmt)
            else:
                what = type(stmt).__name__.lower()
                loaded.diagnostics.append(
                    Diagnostic(
                        "E800",
                        "a test file holds only `test` blocks",
                        stmt.span,
                        f"a {what} statement",
                        f"test files are compiled together with {display_name(entry)}: move this statement into "
                        "the policy" + (" (no include is needed)" if isinstance(stmt, n.Include) else ""),
                    )
                )
    return loaded, added


def compile_with_tests(
    path: str | Path,
    *,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Callable[[list[str]], Any] | None = None,
) -> tuple[CompiledPolicy, list[str]]:
    """Compile a policy together with its test files; raises PolicyError with every diagnostic. `today` is the
    date deprecations count from (None: the date now); `functions` / `rankers`: the Python functions and rankers
    the policy calls (Engine.load's); `embedder`: what embeds semantic tasks' examples (None: the default)."""
    loaded, added = load_with_tests(path)
    compiled = compile_loaded(
        loaded, today=today, functions=functions or None, rankers=rankers or None, embedder=embedder
    )
    return compiled, added


# ---- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """One `expect`: what it asked for, what happened, and (when it failed) the trace of what happened."""

    test: str
    expect: n.Expect
    source: str  # the expect as written
    passed: bool
    problems: tuple[str, ...]  # one line per mismatch
    model: str | None  # the decision (None: no route)
    rule: int | None  # index of the deciding rule
    rule_at: str | None  # file:line of the deciding rule
    fallbacks: tuple[str, ...]
    report: Report | None  # failures only: what happened instead (engine.explain.render_text renders it)
    nearest: tuple[tuple[str, int], ...] = ()  # (semantic task, index of its example nearest the prompt)

    @property
    def span(self) -> n.Span:
        return self.expect.span

    def actual(self) -> str:
        if self.model is None:
            return "no route"
        fb = f" fallback {', '.join(self.fallbacks)}" if self.fallbacks else ""
        return f"{self.model} by rule {(self.rule or 0) + 1} ({self.rule_at}){fb}"

    def to_dict(self) -> dict[str, Any]:
        e = self.expect
        return {
            "test": self.test,
            "file": self.span.file,
            "line": self.span.line,
            "col": self.span.col,
            "expect": self.source,
            "prompt": e.prompt,
            "attrs": _attrs(e),
            "passed": self.passed,
            "problems": list(self.problems),
            "actual": {
                "model": self.model,
                "rule": None if self.rule is None else self.rule + 1,
                "at": self.rule_at,
                "fallbacks": list(self.fallbacks),
            },
            "report": self.report.model_dump(mode="json") if self.report is not None else None,
        }


@dataclass(frozen=True)
class Coverage:
    """What no selected expect exercised: rules that decided none, patterns that matched no prompt."""

    rules: int
    patterns: int
    unused_rules: tuple[tuple[int, str, str], ...]  # (index, file:line, text)
    unused_patterns: tuple[tuple[str, str, str], ...]  # (pattern, file:line, where: "task code" | "rule 3")
    examples: int = 0  # examples of semantic tasks
    unused_examples: tuple[tuple[str, str, str], ...] = ()  # (example, file:line, "task code"): never the nearest

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": {
                "total": self.rules,
                "exercised": self.rules - len(self.unused_rules),
                "unexercised": [{"rule": i + 1, "at": at, "text": t} for i, at, t in self.unused_rules],
            },
            "patterns": {
                "total": self.patterns,
                "exercised": self.patterns - len(self.unused_patterns),
                "unexercised": [{"pattern": p, "at": at, "in": w} for p, at, w in self.unused_patterns],
            },
            "examples": {
                "total": self.examples,
                "exercised": self.examples - len(self.unused_examples),
                "unexercised": [{"example": x, "at": at, "in": w} for x, at, w in self.unused_examples],
            },
        }


@dataclass(frozen=True)
class RunResult:
    policy: CompiledPolicy
    test_files: tuple[str, ...]
    cases: tuple[CaseResult, ...]
    total: int  # expects in the policy and its test files, before -k selection
    coverage: Coverage

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def failed(self) -> int:
        return len(self.cases) - self.passed

    def to_dict(self, coverage: bool = False) -> dict[str, Any]:
        out = {
            "policy": self.policy.entry,
            "version": self.policy.version,
            "test_files": list(self.test_files),
            "passed": self.passed,
            "failed": self.failed,
            "cases": [c.to_dict() for c in self.cases],
        }
        if coverage:
            out["coverage"] = self.coverage.to_dict()
        return out


# ---- running -----------------------------------------------------------------------------------------------


def _value(v: n.Value) -> Any:
    return [i.value for i in v.items] if isinstance(v, n.ListLit) else v.value


def _attrs(e: n.Expect) -> dict[str, Any]:
    return {a.name: _value(a.value) for a in e.attrs}


def _source(policy: CompiledPolicy, span: n.Span) -> str:
    lines = policy.sources.texts.get(span.file, "").splitlines()
    if span.line == span.end_line and span.line <= len(lines):
        return lines[span.line - 1][span.col - 1 : span.end_col - 1]
    part = lines[span.line - 1 : span.end_line]
    if part:
        part[-1] = part[-1][: span.end_col - 1]
        part[0] = part[0][span.col - 1 :]
    return " ".join(p.strip() for p in part)


def run_case(policy: CompiledPolicy, names: dict[str, str], test: str, e: n.Expect) -> CaseResult:
    """Decide one expect's prompt with a fresh engine (so round-robin state starts over) and compare."""

    def resolve(ref: n.ModelRef) -> str:
        name = names.get(ref.name, ref.name)
        spec = policy.catalog.resolve(name) or resolve_qualified(policy.catalog, name)
        return spec.name if spec is not None else name

    engine = Engine(policy)
    report: Report | None = None
    attrs = _attrs(e)
    if reserved := [k for k in DECIDE_ARGUMENTS if k in attrs]:
        why = f"`{reserved[0]}` is the request itself, not an attribute: write the prompt after `expect`"
        return CaseResult(test, e, _source(policy, e.span), False, (why,), None, None, None, (), None)
    err_request = None
    try:
        d = engine.decide(e.prompt, **attrs)
        model, rule, fallbacks = d.model, d.rule, tuple(d.fallbacks)
    except NoRouteError as err:
        d, model, rule, fallbacks, report = None, None, None, (), err.report()
        err_request = err.request
    except RequestError as exc:  # e.g. `with tokens = "many"`: the expect cannot be decided as written
        return CaseResult(test, e, _source(policy, e.span), False, (str(exc),), None, None, None, (), None)
    request = d.request if d is not None else err_request
    near = {x.task: x for x in nearest_all(request, policy.semantic)} if policy.semantic and request else {}
    problems: list[str] = []
    if e.model is None:
        if model is not None:
            problems.append(f"expected no route, got {model}")
    elif model is None:
        problems.append(f"expected {resolve(e.model)}, got no route")
    else:
        want = resolve(e.model)
        if model != want:
            problems.append(f"expected model {want}, got {model}")
        if e.by is not None and rule is not None:
            kind, num = e.by
            if kind == "rule" and rule.index + 1 != num:
                problems.append(f"expected rule {num}, decided by rule {rule.index + 1} ({rule.span})")
            if kind == "line" and not rule.span.line <= num <= rule.span.end_line:
                problems.append(f"expected the rule at line {num}, decided by the rule at {rule.span}")
        if e.fallbacks is not None:
            want_fb = [resolve(f) for f in e.fallbacks]
            if list(fallbacks) != want_fb:
                problems.append(f"expected fallbacks [{', '.join(want_fb)}], got [{', '.join(fallbacks)}]")
        if e.plan is not None and d is not None:
            want_plan, chain = [resolve(f) for f in e.plan], d.chain
            if chain != want_plan:
                problems.append(f"expected plan [{', '.join(want_plan)}], got [{', '.join(chain)}]")
        problems += _semantic_problems(policy, e, near, d.tasks if d is not None else [])
    if problems:  # what happened instead, without the decide time (it differs run to run)
        shown = d.report() if d is not None else report
        report = shown.model_copy(update={"elapsed_us": None}) if shown is not None else None
    else:
        report = None
    return CaseResult(
        test,
        e,
        _source(policy, e.span),
        not problems,
        tuple(problems),
        model,
        rule.index if rule is not None else None,
        f"{rule.file}:{rule.line}" if rule is not None else None,
        fallbacks,
        report,
        tuple((x.task, x.index) for x in near.values()),
    )


def _semantic_problems(policy: CompiledPolicy, e: n.Expect, near: dict[str, Near], tasks: list[str]) -> list[str]:
    """`task T, U` (each detected, by a pattern or by meaning) and `nearest T "example"`."""
    out = []
    for ref in e.tasks:
        if ref.name not in tasks and not (ref.name in near and near[ref.name].hit):
            found = near.get(ref.name)
            why = ""
            if found is not None:
                why = (
                    f" ({found.note})"
                    if found.index < 0
                    else f" (nearest example {found.score:.3f} < {found.threshold:g})"
                )
            out.append(f"expected task {ref.name}, detected [{', '.join(tasks)}]{why}")
    for ref, example in e.nearest:
        found = near.get(ref.name)
        if found is not None and found.example != example:
            got = found.note if found.index < 0 else f"{_json(found.example)} ({found.score:.3f})"
            out.append(f"expected nearest example of {ref.name} {_json(example)}, got {got}")
    return out


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def selected(block: n.TestBlock, e: n.Expect, pattern: str | None) -> bool:
    """`-k PATTERN`: a case-insensitive substring of the test name or of the expect's prompt."""
    return pattern is None or pattern.lower() in block.name.lower() or pattern.lower() in e.prompt.lower()


def run_tests(policy: CompiledPolicy, pattern: str | None = None, test_files: tuple[str, ...] = ()) -> RunResult:
    """Run every (selected) expect of the policy's test blocks, in file order."""
    stmts = statements(policy)
    names = aliases(policy, stmts)
    cases = [run_case(policy, names, b.name, e) for b in policy.tests for e in b.expects if selected(b, e, pattern)]
    total = sum(len(b.expects) for b in policy.tests)
    return RunResult(policy, test_files, tuple(cases), total, coverage(policy, stmts, cases))


def coverage(policy: CompiledPolicy, stmts: list[n.Stmt], cases: list[CaseResult]) -> Coverage:
    decided = {c.rule for c in cases if c.rule is not None}
    rules = tuple((r.index, f"{r.file}:{r.line}", r.text) for r in policy.rules if r.index not in decided)
    matched = 0
    if policy.matcher is not None:
        for c in cases:
            matched |= policy.matcher.scan(c.expect.prompt)
    where: dict[int, tuple[str, str]] = {}  # pid -> (file:line of its first use, where)
    pid_of = {src: i for i, src in enumerate(policy.matcher.sources)} if policy.matcher else {}
    for s in stmts:
        if isinstance(s, n.TaskDecl):
            for p in s.patterns:
                pid = pid_of.get(to_re2(p))
                if pid is not None:
                    where.setdefault(pid, (f"{p.span.file}:{p.span.line}", f"task {s.name}"))
    for r in policy.rules:
        for node in n.walk_cond(r.node.cond) if r.node.cond is not None else ():
            if isinstance(node, n.TaskMatch) and (pid := pid_of.get(to_re2(node.pattern))) is not None:
                where.setdefault(pid, (f"{node.span.file}:{node.span.line}", f"rule {r.index + 1}"))
    pats = tuple(
        (policy.pattern_text[pid], *where.get(pid, ("?", "?")))
        for pid in range(len(policy.pattern_text))
        if not matched >> pid & 1
    )
    nearest = {pair for c in cases for pair in c.nearest}
    examples = tuple(
        (text, f"{span.file}:{span.line}", f"task {name}")
        for name, task in policy.semantic.items()
        for i, (text, span) in enumerate(zip(task.examples, task.spans, strict=True))
        if (name, i) not in nearest
    )
    total = sum(len(t.examples) for t in policy.semantic.values())
    return Coverage(len(policy.rules), len(policy.pattern_text), rules, pats, total, examples)
