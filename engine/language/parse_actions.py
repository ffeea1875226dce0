"""Parsing, the actions: the converted children of a rule's action in lark's parse tree in, the AST's Action,
Ranking, ScoreTerm and Constraint nodes out (a base of engine/language/parse_tree.py's converter)."""

from __future__ import annotations

from typing import Any

from lark import Token

from engine.language import nodes as n
from engine.language.lark_grammar import _tok_span, literal


class ActionRules:
    """One method per grammar rule of an action (use, prefer, balance, split, race, consensus, best_of), its
    rankings, score terms, where-constraints and fallbacks; the converter provides `file` and the helpers below."""

    file: str

    def _span(self, meta) -> n.Span:
        raise NotImplementedError

    def _ref(self, tok: Token) -> n.ModelRef:
        raise NotImplementedError

    def _value(self, item):
        raise NotImplementedError

    # actions
    def action(self, meta, children):
        kind, model, rankings, extra = children[0]
        where, fallbacks, cache = (), (), None
        for part in children[1:]:
            if part[0] == "where":
                where = part[1]
            elif part[0] == "cache":
                cache = part[1]
            else:
                fallbacks = part[1]
        return n.Action(kind, model, rankings, where, fallbacks, self._span(meta), cache=cache, **extra)

    def use(self, meta, children):
        return ("use", self._ref(children[0]), (), {})

    def prefer(self, meta, children):
        rankings = tuple(c for c in children if isinstance(c, n.Ranking))
        among = next((c[1] for c in children if isinstance(c, tuple) and c[0] == "among"), ())
        return ("prefer", None, rankings, {"among": among} if among else {})

    def among_clause(self, meta, children):
        return ("among", children[0])

    def model_list(self, meta, children):
        return tuple(self._ref(c) for c in children)

    def balance(self, meta, children):
        mode, members = children
        return ("balance", None, (), {"members": members, "mode": literal(mode, self.file)})

    def split_item(self, meta, children):
        return (literal(children[0], self.file), self._ref(children[1]))

    def split(self, meta, children):
        items = [c for c in children if isinstance(c, tuple)]
        extra: dict[str, Any] = {"members": tuple(c[1] for c in items), "weights": tuple(c[0] for c in items)}
        named = [c for c in children if isinstance(c, Token)]
        if named:
            extra["experiment"] = literal(named[0], self.file)
        return ("split", None, (), extra)

    def race(self, meta, children):
        return ("race", None, (), {"members": children[0]})

    def consensus(self, meta, children):
        extra = {"min_agreement": literal(children[1], self.file)} if len(children) > 1 else {}
        return ("consensus", None, (), {"members": children[0], **extra})

    def best_of(self, meta, children):
        return ("best_of", None, (), {"members": children[0], "judge": self._ref(children[1])})

    def rank_least_busy(self, meta, children):
        return n.Ranking("least_busy", None, self._span(meta))

    def rank_healthiest(self, meta, children):
        return n.Ranking("healthiest", None, self._span(meta))

    def rank_score(self, meta, children):
        return n.Ranking("score", None, self._span(meta), children[0])

    def score_sum(self, meta, children):
        terms: list[n.ScoreTerm] = []
        sign = 1.0
        for c in children:
            if isinstance(c, Token):
                sign = -1.0 if str(c) == "-" else 1.0
            else:
                terms.append(n.ScoreTerm(sign * c.coef, c.factor, c.name, c.span, c.call))
                sign = 1.0
        return tuple(terms)

    def term_scaled(self, meta, children):
        coef, factor = children
        return self._term(literal(coef, self.file).value, factor, meta)

    def term_scaled_after(self, meta, children):
        factor, coef = children
        return self._term(literal(coef, self.file).value, factor, meta)

    def term_plain(self, meta, children):
        return self._term(1.0, children[0], meta)

    def _term(self, coef: Any, factor: tuple, meta) -> n.ScoreTerm:
        """A score term from its factor: (kind, name) or, for `similarity(code)`, (kind, task, function name)."""
        call = factor[2] if len(factor) > 2 else None
        return n.ScoreTerm(float(coef), factor[0], factor[1], self._span(meta), call)

    def factor_capability(self, meta, children):
        return ("capability", str(children[0]))

    def factor_cost(self, meta, children):
        return ("cost", None)

    def factor_price(self, meta, children):
        return ("price", None)

    def factor_latency(self, meta, children):
        return ("latency", None)

    def factor_context(self, meta, children):
        return ("context", None)

    def factor_tokens(self, meta, children):
        return ("tokens", None)

    def factor_call(self, meta, children):
        return ("call", str(children[0]))

    def factor_task_call(self, meta, children):
        return ("similarity", str(children[1]), str(children[0]))

    def factor_attr(self, meta, children):
        return ("attr", str(children[0]))

    def rank_capability(self, meta, children):
        return n.Ranking("capability", str(children[0]), self._span(meta))

    def rank_custom(self, meta, children):
        return n.Ranking("custom", None, self._span(meta), ranker=str(children[0]))

    def rank_cheapest(self, meta, children):
        return n.Ranking("cheapest", None, self._span(meta))

    def rank_fastest(self, meta, children):
        return n.Ranking("fastest", None, self._span(meta))

    def where_clause(self, meta, children):
        return ("where", tuple(children))

    def fallback_clause(self, meta, children):
        return ("fallback", tuple(self._ref(c) for c in children))

    def cache_clause(self, meta, children):
        return ("cache", literal(children[0], self.file))

    def constraint_compare(self, meta, children):
        (metric, cap, mspan), op, value = children
        return n.Constraint(metric, str(op), self._value(value), cap, self._span(meta), mspan)

    def constraint_provider(self, meta, children):
        mspan = n.Span(self.file, meta.line, meta.column, meta.line, meta.column + len("provider"))
        return n.Constraint("provider", "in", children[0], None, self._span(meta), mspan)

    def constraint_supports(self, meta, children):
        tok = children[0]
        value = n.Literal("name", str(tok), str(tok), _tok_span(tok, self.file))
        return n.Constraint("supports", "has", value, None, self._span(meta), self._span(meta))

    def metric_latency(self, meta, children):
        return ("latency", None, self._span(meta))

    def metric_price(self, meta, children):
        return ("price", None, self._span(meta))

    def metric_cost(self, meta, children):
        return ("cost", None, self._span(meta))

    def metric_context(self, meta, children):
        return ("context", None, self._span(meta))

    def metric_capability(self, meta, children):
        return ("capability", str(children[0]), self._span(meta))
