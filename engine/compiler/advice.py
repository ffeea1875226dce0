"""Compile advice: a compiled policy's rules and a model lookup in, warnings (severity "warning") out, for policies
that compile but name a model to no effect: an embedding model in a rule that serves chat (W110), a model listed
twice in `among` (W111)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from engine.diagnostics import Diagnostic
from engine.language import nodes as n
from engine.runtime.policy import Entry
from engine.runtime.reserved import EMBEDDINGS_ENDPOINT

__all__ = ["ADVICE_CODES", "advise", "duplicate_warnings", "embedding_warnings"]

#: Stable codes of the advice, in the numbering of the lint warnings (engine/tools/lint.py lists them with its own).
ADVICE_CODES: dict[str, str] = {
    "W110": "embedding model in a rule that serves chat",
    "W111": "model listed twice in `among`",
}
ENDPOINT = "endpoint"  # the reserved attribute naming the API a request came through (engine/runtime/reserved.py)

#: A model reference to the model it names (None: not a catalog model), as the linter resolves it.
Lookup = Callable[[n.ModelRef], Entry | None]


def advise(rules: Iterable[n.Rule], entry: Lookup) -> list[Diagnostic]:
    """Every advice warning for the rules, rule by rule."""
    out: list[Diagnostic] = []
    for rule in rules:
        out += embedding_warnings(rule, entry)
        out += duplicate_warnings(rule, entry)
    return out


def embedding_warnings(rule: n.Rule, entry: Lookup) -> list[Diagnostic]:
    """W110 for each embedding model (`supports: [embeddings]`) the rule names in `use`, a group, `among` or
    `fallback` when its condition does not read `endpoint`: a chat request through the rule never gets that model
    (an embedding model only answers /v1/embeddings). A condition that reads `endpoint` in any way is trusted
    (conservative: no warning where the rule may be meant for embeddings)."""
    if _reads_endpoint(rule.cond):
        return []
    out = []
    for where, ref in _targets(rule.action):
        found = entry(ref)
        if found is not None and found.embeds:
            out.append(
                Diagnostic(
                    "W110",
                    f"`{ref.name}` is an embedding model: it can only answer /v1/embeddings, not the chat requests "
                    f"this rule also takes ({where})",
                    ref.span,
                    "embeddings only",
                    f'route embeddings in their own rule: `when endpoint == "{EMBEDDINGS_ENDPOINT}" use '
                    f"{ref.name}`, and name a chat model here",
                    severity="warning",
                )
            )
    return out


def duplicate_warnings(rule: n.Rule, entry: Lookup) -> list[Diagnostic]:
    """W111 at the second occurrence of a model in `among` (by the same name or through an alias): `among` ranks
    each model once, so the repeat changes nothing and is likely a slip for another model."""
    first: dict[str, n.ModelRef] = {}
    out = []
    for ref in rule.action.among:
        found = entry(ref)
        if found is None:
            continue
        earlier = first.setdefault(found.name, ref)
        if earlier is ref:
            continue
        same = "" if earlier.name == ref.name else f" (`{earlier.name}` and `{ref.name}` are both `{found.name}`)"
        out.append(
            Diagnostic(
                "W111",
                f"`{ref.name}` is listed twice in `among`{same}",
                ref.span,
                "listed again here",
                "remove this one (`among` ranks each model once), or name the model you meant",
                (f"first listed at {earlier.span}",),
                severity="warning",
            )
        )
    return out


def _reads_endpoint(cond: n.Cond | None) -> bool:
    """Whether a condition reads the reserved attribute `endpoint` anywhere."""
    if cond is None:
        return False
    for node in n.walk_cond(cond):
        operand = (
            node.left
            if isinstance(node, (n.Compare, n.InList))
            else node.operand
            if isinstance(node, n.Truthy)
            else None
        )
        if operand is not None and not operand.call and operand.name.partition(".")[0] == ENDPOINT:
            return True
    return False


def _targets(act: n.Action) -> Iterator[tuple[str, n.ModelRef]]:
    """The models an action may send a request to, each with where the action names it."""
    if act.model is not None:
        yield "`use`", act.model
    for ref in act.members:
        yield f"`{act.kind}`", ref
    for ref in act.among:
        yield "`among`", ref
    for ref in act.fallbacks:
        yield "`fallback`", ref
