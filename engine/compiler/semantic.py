"""Semantic pass (compile stage): the declared tasks' `like` items and the rules' `similarity(...)` in, each semantic
task's examples read, checked and embedded (engine/runtime/semantic.SemanticTask, in ctx.semantic) out, with a
diagnostic for every missing, unreadable or empty example file, empty list, threshold outside 0-1, second `like` in
a task, similarity() of a task without examples or compared with a number outside -1..1, and missing or failing
embedder.

Example files are read here (the loader resolved their paths against the file naming them) and join the policy's
files, so a reload watches them and the policy version changes with their content. The examples are embedded only
once everything else compiled, through embed_examples (cached by content across reloads); a policy without `like`
never asks for an embedder, so it never imports numpy."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.compiler.context import Context
from engine.compiler.reuse import semantic_task
from engine.diagnostics import did_you_mean
from engine.language import nodes as n
from engine.language.load import display_name
from engine.runtime.embedder import (
    EXAMPLE_CACHE,
    EXTRA_HINT,
    EmbedderUnavailable,
    default_embedder,
    embed_examples,
    task_text,
)
from engine.runtime.semantic import DEFAULT_THRESHOLD, SemanticTask
from providers.catalog.files import LARGE_FILE_BYTES, read_text

__all__ = ["SIMILARITY", "forget_examples", "fraction", "pass_embed", "pass_semantic", "read_examples"]

#: The one function a condition or a score may call with an argument: `similarity(TASK)`.
SIMILARITY = "similarity"


#: The most examples one task may have: a request no pattern settles is compared with every one, so their number
#: bounds decide()'s time and the vectors' memory.
MAX_EXAMPLES = EXAMPLE_CACHE  # as many as the example-vector cache keeps per embedder


def fraction(lit: n.Literal) -> float | None:
    """A number from 0 to 1 or a percentage up to 100%, as a float; None for anything else."""
    if lit.kind not in ("count", "percent") or isinstance(lit.value, bool):
        return None
    value = float(lit.value)  # type: ignore[arg-type]
    return value if 0.0 <= value <= 1.0 else None


def read_examples(text: str, file: str) -> tuple[tuple[str, ...], tuple[n.Span, ...]]:
    """An example file's examples (one per line; blank lines and lines starting with `#` skipped) and their spans.
    A reload reads every unchanged example file again: files up to _MEMO_CHARS are split once per text."""
    return _read_examples(text, file) if len(text) <= _MEMO_CHARS else _split_examples(text, file)


_MEMO_CHARS = 1 << 18


def forget_examples() -> None:
    """Drop the example files kept split (engine/compiler/reuse.py's forget)."""
    _read_examples.cache_clear()


@functools.lru_cache(maxsize=32)
def _read_examples(text: str, file: str) -> tuple[tuple[str, ...], tuple[n.Span, ...]]:
    return _split_examples(text, file)


def _split_examples(text: str, file: str) -> tuple[tuple[str, ...], tuple[n.Span, ...]]:
    examples, spans = [], []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        col = len(line) - len(line.lstrip()) + 1
        examples.append(stripped)
        spans.append(n.Span(file, number, col, number, col + len(stripped)))
    return tuple(examples), tuple(spans)


def pass_semantic(ctx: Context) -> None:
    """Check every `like` and read its examples into ctx.examples; check every similarity(...) a rule names."""
    for task in ctx.tasks.values():
        if not task.likes:
            continue
        like = task.likes[0]
        for extra in task.likes[1:]:
            ctx.error(
                "E318",
                f"task `{task.name}` has two `like` items",
                extra.span,
                "a second `like`",
                "a task has one `like`: put every example in one list, or in one file",
                (f"the first is at {like.span}",),
            )
        threshold = _threshold(ctx, task.name, like)
        found = _examples(ctx, task.name, like)
        if threshold is not None and found is not None:
            ctx.examples[task.name] = (like, *found, threshold)
    for rule in ctx.rules:
        for operand in _similarity_operands(rule):
            if operand.task is not None and operand.task_span is not None:
                _check_reference(ctx, operand.name, operand.task, operand.task_span, operand.span)
        if rule.cond is not None:
            for node in n.walk_cond(rule.cond):
                if isinstance(node, n.Compare) and node.left.task is not None:
                    _check_cosine(ctx, node)
        for ranking in rule.action.rankings:
            for term in ranking.terms:
                if term.factor == "similarity" and term.name is not None:
                    _check_reference(ctx, term.call or SIMILARITY, term.name, term.span, term.span)


def pass_embed(ctx: Context) -> None:
    """Embed every semantic task's examples (only once the policy is otherwise sound: E320 names a missing
    embedder at the first `like` in any case)."""
    if not ctx.examples:
        cache = ctx.settings.get("cache.semantic")  # the semantic cache embeds requests too
        if cache is not None and ctx.embedder is None:
            try:
                ctx.embedder_used = default_embedder()
            except EmbedderUnavailable as exc:
                ctx.error(
                    "E320",
                    "no embedder for the semantic cache (`cache.semantic`)",
                    cache.span,
                    "needs an embedder",
                    f"{EXTRA_HINT} (the default, WordLlama, works offline), or pass Engine.load(embedder=...)",
                    (str(exc),),
                )
        return
    first = next(iter(ctx.examples.values()))[0]
    embedder = ctx.embedder
    if embedder is None:
        try:
            embedder = default_embedder()
        except EmbedderUnavailable as exc:
            ctx.error(
                "E320",
                "no embedder for semantic tasks (`like`)",
                first.span,
                "needs an embedder",
                f"{EXTRA_HINT} (the default, WordLlama, works offline), or pass Engine.load(embedder=...)",
                (str(exc),),
            )
            return
    if not ctx.ok:
        return
    for name, (like, examples, spans, file, threshold) in ctx.examples.items():
        try:
            rows = embed_examples(embedder, [task_text(e) for e in examples])  # cut as requests are
        except Exception as exc:  # a user's embedder may fail any way: report it at its task, never crash
            ctx.error(
                "E321",
                f"the embedder failed on the examples of task `{name}`: {type(exc).__name__}: {exc}",
                like.span,
                "embedding failed",
                "an embedder takes a list of texts and returns one vector per text (an (n, d) array)",
            )
            continue
        ctx.semantic[name] = semantic_task(
            SemanticTask(name, tuple(examples), tuple(spans), rows, threshold, embedder, file)
        )
    ctx.embedder_used = embedder


def _threshold(ctx: Context, task: str, like: n.Like) -> float | None:
    lit = like.threshold
    if lit is None:
        return DEFAULT_THRESHOLD
    value = fraction(lit)
    if like.op != ">=" or value is None:
        ctx.error(
            "E407",
            f"the threshold of task `{task}` must be `>= t` with t from 0 to 1, not `{like.op} {lit.text}`",
            lit.span,
            "not a similarity threshold",
            f"a cosine similarity is at most 1: write e.g. `>= 0.8` or `>= 80%`, or leave it out (default "
            f"{DEFAULT_THRESHOLD:g})",
        )
        return None
    return value


def _examples(ctx: Context, task: str, like: n.Like) -> tuple[Sequence[str], Sequence[n.Span], str | None] | None:
    """A `like` item's examples and their spans, and its file (None for a list); None after a diagnostic."""
    if like.file is None:
        if not like.examples:
            ctx.error(
                "E205",
                f"task `{task}` has an empty list of examples",
                like.source_span,
                "no examples",
                'write at least one example: like ["an example request", ...]',
            )
            return None
        if _too_many(ctx, task, like, len(like.examples)):
            return None
        return [e.text for e in like.examples], [e.span for e in like.examples], None
    path = Path(like.path or like.file)
    shown = display_name(path)
    try:
        text = read_text(path, LARGE_FILE_BYTES, "utf-8-sig")  # a BOM is not part of the first example
    except (OSError, UnicodeDecodeError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        reason = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or str(exc))
        ctx.error(
            "E204",
            f"example file {shown} of task `{task}` {'does not exist' if missing else f'cannot be read: {reason}'}",
            like.source_span,
            "no such file" if missing else "unreadable",
            "example file paths are relative to the policy file that names them; one example per line",
        )
        return None
    if shown not in ctx.loaded.files:  # watched and reloaded like an included file
        ctx.loaded.files.append(shown)
    ctx.loaded.sources.add(shown, text)
    examples, spans = read_examples(text, shown)
    if not examples:
        ctx.error(
            "E205",
            f"example file {shown} of task `{task}` has no examples",
            like.source_span,
            "empty" if not text.strip() else "only blank lines and # comments",
            "write one example per line (blank lines and lines starting with # are skipped)",
        )
        return None
    if _too_many(ctx, task, like, len(examples)):
        return None
    return examples, spans, shown


def _too_many(ctx: Context, task: str, like: n.Like, count: int) -> bool:
    """E323 past MAX_EXAMPLES: every request a task's patterns miss is compared with each example, so their number
    bounds decide()'s time (and the vectors' memory)."""
    if count <= MAX_EXAMPLES:
        return False
    ctx.error(
        "E323",
        f"task `{task}` has {count:,} examples, more than {MAX_EXAMPLES:,}",
        like.source_span,
        "too many examples",
        "keep the examples that are typical of the task (a few hundred are plenty: `modelroute test --coverage` "
        "lists those never the nearest), or split the task",
    )
    return True


def _check_cosine(ctx: Context, node: n.Compare) -> None:
    """`similarity(X) >= 50`: a cosine compared with a number it can never be (outside -1..1) is E407."""
    lit = node.right
    if not isinstance(lit, n.Literal) or lit.kind not in ("count", "percent") or isinstance(lit.value, bool):
        return
    value = float(lit.value)  # type: ignore[arg-type]
    if -1.0 <= value <= 1.0:
        return
    ctx.error(
        "E407",
        f"similarity({node.left.task}) is compared with {lit.text}, which a cosine similarity never is",
        lit.span,
        "outside -1..1",
        f"a cosine is between -1 and 1; did you mean {value / 100:g} or {lit.text}%?"
        if lit.kind == "count"
        else "a cosine is between -1 and 1 (-100% to 100%)",
    )


def _similarity_operands(rule: n.Rule) -> Iterator[n.Operand]:
    if rule.cond is None:
        return
    for node in n.walk_cond(rule.cond):
        operand = (
            node.operand
            if isinstance(node, n.Truthy)
            else node.left
            if isinstance(node, (n.Compare, n.InList))
            else None
        )
        if isinstance(operand, n.Operand) and operand.task is not None:
            yield operand


def _check_reference(ctx: Context, fn: str, task: str, task_span: n.Span, span: n.Span) -> None:
    """`similarity(TASK)`: the function is similarity, the task is declared and has examples."""
    if fn != SIMILARITY:
        ctx.error(
            "E313",
            f"unknown function `{fn}({task})`",
            span,
            "no such function",
            f"the only function that takes an argument is {SIMILARITY}(TASK), a semantic task's similarity"
            + (f"; did you mean {SIMILARITY}?" if did_you_mean(fn, [SIMILARITY]) else ""),
        )
        return
    declared = ctx.tasks.get(task)
    if declared is None:
        ctx.error(
            "E301",
            f"unknown task `{task}`",
            task_span,
            "no such task declared",
            did_you_mean(task, ctx.tasks) or f'declare it first: task {task} = like ["an example request", ...]',
        )
    elif not declared.likes:
        with_examples = [t.name for t in ctx.tasks.values() if t.likes]
        ctx.error(
            "E319",
            f"task `{task}` has no examples, so it has no similarity",
            task_span,
            "patterns only",
            f'give it examples: task {task} = ..., like ["an example request", ...]'
            + (f"; tasks with examples: {', '.join(with_examples)}" if with_examples else ""),
            (f"`{task}` is declared at {declared.name_span}",),
        )
