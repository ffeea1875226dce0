"""Explain rendering: a Report (the evaluator's structured trace) in, human-readable text out; no evaluation here.

It lives in the runtime because Decision.explain() and NoRouteError.explain() return it; the toolchain
(engine.tools.explain, the CLI) uses the same functions."""

from __future__ import annotations

import io
import json

from rich.console import Console
from rich.markup import escape

from engine.runtime.report import Candidate, Report, RuleTrace
from engine.runtime.units import fmt_seconds

__all__ = ["render_markup", "render_text"]

_OUTCOME = {
    "decided": "[bold green]decided[/]",
    "no match": "[dim]no match[/]",
    "no viable model": "[yellow]matched, no viable model[/]",
}


def _value(v: bool) -> str:
    return "[green]true[/]" if v else "[red]false[/]"


def _rule_lines(t: RuleTrace) -> list[str]:
    ref = t.rule
    out = [f"  {_OUTCOME[t.outcome]}  [cyan]{escape(ref.file)}:{ref.line}[/]  {escape(ref.text)}"]
    if not t.conditions:
        out.append("      (otherwise: always matches)")
    for atom in t.conditions:
        note = f"  [dim]({escape(atom.note)})[/]" if atom.note else ""
        out.append(f"      {'  ' * atom.depth}{escape(atom.text)}: {_value(atom.value)}{note}")
    if t.note:
        out.append(f"      [yellow]{escape(t.note)}[/]")
    if t.outcome == "no viable model":
        for c in t.candidates:
            if c.status == "rejected":
                out.append(f"      [yellow]{escape(c.model)}[/]: {escape(c.reason or '')}")
    return out


def _candidate_lines(cands: list[Candidate], ranking: list[str], strategy: str | None = None) -> list[str]:
    out: list[str] = []
    ranked = [c for c in cands if c.rank is not None]
    rejected = [c for c in cands if c.status == "rejected"]
    unnamed = [c for c in cands if c.status == "not named"]
    width = max((len(c.model) for c in cands), default=10) + 2
    if ranked:
        if ranking:
            out.append(f"[bold]ranked[/] by {escape(' then '.join(ranking))}")
        else:
            out.append(f"[bold]group[/] ({strategy}, in the order listed)" if strategy else "[bold]candidate[/]")
        for c in ranked:
            tag = "[bold green]chosen[/]" if c.status == "chosen" else "[dim]eligible[/]"
            scores = ", ".join(c.scores)
            out.append(f"  {c.rank:>3}. {escape(c.model).ljust(width)} {escape(scores).ljust(28)} {tag}")
    if rejected:
        out.append("[bold]rejected[/]")
        for c in rejected:
            out.append(f"       {escape(c.model).ljust(width)} [yellow]{escape(c.reason or '')}[/]")
    if unnamed:
        out.append(f"[bold]not named[/] {len(unnamed)} other models: the rule names one model")
    return out


def _plan_lines(r: Report) -> list[str]:
    """The failover plan: the models execution tries, in order, each with why it is there."""
    if not r.plan:
        return []
    width = max(len(step.model) for step in r.plan) + 2
    out = ["[bold]plan[/]       [dim](execution tries these in order)[/]"]
    for i, step in enumerate(r.plan, 1):
        out.append(f"  {i:>3}. {escape(step.model).ljust(width)} [dim]{escape(step.reason)}[/]")
    return out


def render_markup(r: Report) -> str:
    """The explain text with rich markup (colour tags)."""
    lines = [
        f"[bold]prompt[/]     {r.prompt_chars:,} chars, ~{r.tokens:,} tokens",
        f"[bold]tasks[/]      {escape(', '.join(r.tasks)) if r.tasks else '[dim](none detected)[/]'}",
    ]
    if r.semantic:
        lines.append("[bold]similar[/]    [dim](semantic tasks: nearest example, cosine vs threshold)[/]")
        width = max(len(s.task) for s in r.semantic)
        lines.extend(f"  {escape(s.text(width))}" for s in r.semantic)
    if r.attrs:
        shown = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in r.attrs.items())
        lines.append(f"[bold]attrs[/]      {escape(shown)}")
    lines.append(f"[bold]policy[/]     {escape(r.policy)} [dim](version {r.policy_version})[/]")
    lines.append("")
    lines.append("[bold]rules tried[/]")
    for t in r.rules:
        lines.extend(_rule_lines(t))
    if r.rules_not_reached:
        word = "rule" if r.rules_not_reached == 1 else "rules"
        lines.append(f"  [dim]{r.rules_not_reached} later {word} not reached[/]")
    lines.append("")
    if r.model is None:
        lines.append("[bold red]no route[/]: no rule matched with a viable model")
    else:
        assert r.rule is not None
        lines.append(
            f"[bold]decision[/]   [bold green]{escape(r.model)}[/] ({escape(r.provider or '')}) "
            f"by rule [cyan]{escape(r.rule.file)}:{r.rule.line}[/]"
        )
        lines.extend(_candidate_lines(r.candidates, r.ranking, r.strategy))
        if r.group and len(r.group) > 1:
            calls = f"calls {', '.join(r.group)} together"
            lines.append(f"[bold]{r.strategy}[/]  {escape(calls)}" + (f"; judge {escape(r.judge)}" if r.judge else ""))
        if r.experiment is not None:
            shown = f'"{r.experiment.name}", variant {r.experiment.variant}'
            lines.append(f"[bold]experiment[/] {escape(shown)}")
        if r.note:
            lines.append(f"[bold]note[/]       [yellow]{escape(r.note)}[/]")
        if r.fallback_checks:
            lines.append("[bold]fallbacks[/]")
            for f in r.fallback_checks:
                if f.status == "kept":
                    lines.append(f"       {escape(f.model)}")
                else:
                    lines.append(f"       [dim]{escape(f.model)}: skipped, {escape(f.reason or '')}[/]")
        else:
            lines.append("[bold]fallbacks[/]  [dim](none)[/]")
        lines.extend(_plan_lines(r))
        if r.cache_ttl is not None:
            shown = (
                "off (the rule's `cache off`)" if r.cache_ttl == 0 else f"{fmt_seconds(r.cache_ttl)} (the rule's TTL)"
            )
            lines.append(f"[bold]cache[/]      {escape(shown)}")
    if r.elapsed_us is not None:
        lines.append(f"[bold]time[/]       {r.elapsed_us:.1f} µs (decide)")
    return "\n".join(lines)


def render_text(r: Report, color: bool = False, width: int = 160) -> str:
    buf = io.StringIO()
    console = Console(
        file=buf,
        force_terminal=color,
        no_color=not color,
        width=width,
        highlight=False,
        soft_wrap=True,
        color_system="standard" if color else None,
    )
    console.print(render_markup(r))
    return buf.getvalue().rstrip("\n")
