"""Fast parsing, conditions and actions: the tokens of a rule in, its condition and action nodes (with the
first and last token each takes up) out; the statement forms are in engine/language/fastparse.py."""

from __future__ import annotations

from typing import Any

from engine.language import nodes as n
from engine.language.fastparse_lex import (
    _METRICS,
    _SCALARS,
    _SCORE_WORDS,
    _VALUE_WORDS,
    GRAMMAR_WORDS,
    Cursor,
    GiveUp,
    literal_of,
    unescape,
)
from engine.language.literals import count_value


class ConditionsAndActions(Cursor):
    """The rule parts a `when` or `otherwise` statement is made of: conditions, values, model refs, actions."""

    # ---- conditions: each returns (node, first token, last token) of the text it takes up: its own span, or for
    # a parenthesized one the parentheses too (lark's "container"), which is what a parent's span reaches to
    def cond(self) -> tuple[n.Cond, int, int]:
        parts = [self.and_cond()]
        while self.word("or"):
            self.i += 1
            parts.append(self.and_cond())
        return self.combine(n.Or, parts)

    def and_cond(self) -> tuple[n.Cond, int, int]:
        parts = [self.not_cond()]
        while self.word("and"):
            self.i += 1
            parts.append(self.not_cond())
        return self.combine(n.And, parts)

    def combine(self, kind: Any, parts: list[tuple[n.Cond, int, int]]) -> tuple[n.Cond, int, int]:
        if len(parts) == 1:
            return parts[0]
        first, last = parts[0][1], parts[-1][2]
        return kind(tuple(p[0] for p in parts), self.span(first, last)), first, last

    def not_cond(self) -> tuple[n.Cond, int, int]:
        if self.word("not"):
            first = self.i
            self.deeper(first)
            self.i += 1
            operand, _, last = self.not_cond()
            self.depth -= 1
            return n.Not(operand, self.span(first, last)), first, last
        return self.atom()

    def atom(self) -> tuple[n.Cond, int, int]:
        t = self.peek()
        if t is None:
            raise GiveUp
        if t[1] == "(" and t[0] == "PUNCT":
            first = self.i
            self.deeper(first)
            self.i += 1
            inner = self.cond()[0]
            self.depth -= 1
            # the node keeps its own span; what contains it (a parent's span) reaches to the parentheses
            return inner, first, self.take("PUNCT", ")")
        if t[0] == "NAME" and t[1] == "task":
            first = self.i
            self.i += 1
            if self.peek() is not None and self.peek()[1] == "~":  # type: ignore[index]
                self.i += 1
                pattern = self.pattern()
                return n.TaskMatch(pattern, self.span(first, self.i - 1)), first, self.i - 1
            self.take("NAME", "is")
            name = self.name()
            return n.TaskIs(self.toks[name][1], self.tok_span(name), self.span(first, name)), first, name
        first = self.i
        if t[0] == "NAME" and t[1] == "tokens":
            self.i += 1
            operand, end = n.Operand("tokens", True, self.tok_span(first)), first
        else:
            end = self.take("NAME")
            if self.toks[end][1] in _VALUE_WORDS:
                raise GiveUp
            if self.punct("("):  # `complexity()`: a Python function's value; `similarity(code)`: a task's
                self.i += 1
                if self.punct(")"):
                    end = self.take("PUNCT", ")")
                    operand = n.Operand(self.toks[first][1], False, self.span(first, end), True)
                else:
                    task = self.name()
                    end = self.take("PUNCT", ")")
                    fn, arg = self.toks[first][1], self.toks[task][1]
                    operand = n.Operand(fn, False, self.span(first, end), False, arg, self.tok_span(task))
            else:
                operand = n.Operand(self.toks[end][1], False, self.tok_span(end))
        t = self.peek()
        if t is not None and t[0] == "COMPARE":
            self.i += 1
            value, last = self.value()
            return n.Compare(operand, t[1], value, self.span(first, last)), first, last
        if t is not None and t[0] == "NAME" and t[1] == "in":
            self.i += 1
            items, last = self.list_lit()
            return n.InList(operand, items, self.span(first, last)), first, last
        return n.Truthy(operand, operand.span), first, end

    # ---- values
    def value(self) -> tuple[n.Value, int]:
        t = self.peek()
        if t is not None and t[0] == "PUNCT" and t[1] == "[":
            return self.list_lit()
        return self.scalar(), self.i - 1

    def scalar(self) -> n.Literal:
        t = self.peek()
        if t is None or t[0] not in _SCALARS or (t[0] == "NAME" and t[1] in _VALUE_WORDS):
            raise GiveUp
        self.i += 1
        try:
            return literal_of(t[0], t[1], self.tok_span(self.i - 1))
        except ValueError:
            raise GiveUp from None  # lark reports the bad literal

    def list_lit(self) -> tuple[n.ListLit, int]:
        first = self.take("PUNCT", "[")
        items: list[n.Literal] = []
        if not (self.peek() is not None and self.peek()[1] == "]"):  # type: ignore[index]
            items.append(self.scalar())
            while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.i += 1
                items.append(self.scalar())
        last = self.take("PUNCT", "]")
        return n.ListLit(tuple(items), self.span(first, last)), last

    def pattern(self) -> n.Pattern:
        t = self.peek()
        if t is None or t[0] not in ("STRING", "REGEX"):
            raise GiveUp
        self.i += 1
        span = self.tok_span(self.i - 1)
        if t[0] == "STRING":
            return n.Pattern(unescape(t[1][1:-1]), "", False, span)
        body, _, flags = t[1][1:].rpartition("/")
        return n.Pattern(body.replace("\\/", "/"), flags, True, span)

    def ref(self) -> tuple[n.ModelRef, int]:
        t = self.peek()
        if t is not None and t[0] == "STRING":
            self.i += 1
            return n.ModelRef(unescape(t[1][1:-1]), self.tok_span(self.i - 1)), self.i - 1
        at = self.name()
        return n.ModelRef(self.toks[at][1], self.tok_span(at)), at

    # ---- actions
    def action(self) -> tuple[n.Action, int]:
        first = self.i
        model: n.ModelRef | None = None
        rankings: list[n.Ranking] = []
        among: tuple[n.ModelRef, ...] = ()
        if self.word("use"):
            self.i += 1
            model, last = self.ref()
            kind = "use"
        elif self.word("prefer"):
            self.i += 1
            rankings.append(self.ranking())
            while self.word("then"):
                self.i += 1
                rankings.append(self.ranking())
            kind, last = "prefer", self.i - 1
            if self.word("among"):
                self.i += 1
                among = self.refs_list()
                last = self.i - 1
        else:
            raise GiveUp  # balance, split, race, consensus, best_of: lark
        where: list[n.Constraint] = []
        if self.word("where"):
            self.i += 1
            where.append(self.constraint())
            while self.word("and"):
                self.i += 1
                where.append(self.constraint())
            last = self.i - 1
        fallbacks: list[n.ModelRef] = []
        if self.word("fallback"):
            self.i += 1
            fallbacks.append(self.ref()[0])
            while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.i += 1
                fallbacks.append(self.ref()[0])
            last = self.i - 1
        cache: n.Literal | None = None
        if self.word("cache"):
            self.i += 1
            cache, last = self.scalar(), self.i - 1
        span = self.span(first, last)
        action = n.Action(kind, model, tuple(rankings), tuple(where), tuple(fallbacks), span, among=among, cache=cache)
        return action, last

    def refs_list(self) -> tuple[n.ModelRef, ...]:
        """`[a, b, c]`: one model reference or more."""
        self.take("PUNCT", "[")
        refs = [self.ref()[0]]
        while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
            self.i += 1
            refs.append(self.ref()[0])
        self.take("PUNCT", "]")
        return tuple(refs)

    def ranking(self) -> n.Ranking:
        first = self.i
        t = self.take("NAME")
        word = self.toks[t][1]
        if word == "capability":
            self.take("PUNCT", "(")
            name = self.name()
            last = self.take("PUNCT", ")")
            return n.Ranking("capability", self.toks[name][1], self.span(first, last))
        if word in ("cheapest", "fastest", "least_busy", "healthiest"):
            return n.Ranking(word, None, self.tok_span(first))
        if word == "custom":
            self.take("PUNCT", "(")
            name = self.name()
            last = self.take("PUNCT", ")")
            return n.Ranking("custom", None, self.span(first, last), ranker=self.toks[name][1])
        if word == "score":
            self.take("PUNCT", "(")
            terms = []
            sign = 1.0
            tok = self.peek()
            if tok is not None and tok[0] == "SIGN":
                sign = -1.0 if tok[1] == "-" else 1.0
                self.i += 1
            while True:
                terms.append(self.score_term(sign))
                tok = self.peek()
                if tok is None or tok[0] != "SIGN":
                    break
                sign = -1.0 if tok[1] == "-" else 1.0
                self.i += 1
            last = self.take("PUNCT", ")")
            return n.Ranking("score", None, self.span(first, last), tuple(terms))
        raise GiveUp

    def score_term(self, sign: float) -> n.ScoreTerm:
        """`NUMBER * factor`, `factor * NUMBER` or `factor`, its coefficient times `sign`."""
        first = self.i
        t = self.peek()
        coef = 1.0
        if t is not None and t[0] == "NUMBER":
            self.i += 1
            coef = count_value(t[1])
            self.take("PUNCT", "*")
            factor = self.score_factor()
        else:
            factor = self.score_factor()
            t = self.peek()
            if t is not None and t[0] == "PUNCT" and t[1] == "*":
                self.i += 1
                coef = count_value(self.toks[self.take("NUMBER")][1])
        call = factor[2] if len(factor) == 3 else None
        return n.ScoreTerm(sign * coef, factor[0], factor[1], self.span(first, self.i - 1), call)

    def score_factor(self) -> tuple[str, str | None] | tuple[str, str | None, str]:
        at = self.take("NAME")
        word = self.toks[at][1]
        if word == "capability":
            self.take("PUNCT", "(")
            name = self.toks[self.name()][1]
            self.take("PUNCT", ")")
            return "capability", name
        if word in _SCORE_WORDS:
            return word, None
        if word in GRAMMAR_WORDS:
            raise GiveUp
        if self.punct("("):  # `complexity()`: a Python function's value; `similarity(code)`: a task's
            self.i += 1
            if not self.punct(")"):
                task = self.toks[self.name()][1]
                self.take("PUNCT", ")")
                return "similarity", task, word
            self.take("PUNCT", ")")
            return "call", word
        return "attr", word

    def constraint(self) -> n.Constraint:
        first = self.i
        word = self.toks[self.take("NAME")][1]
        if word == "provider":
            self.take("NAME", "in")
            items, last = self.list_lit()
            t = self.toks[first]
            mspan = n.Span(self.file, t[3], t[4], t[3], t[4] + len("provider"))
            return n.Constraint("provider", "in", items, None, self.span(first, last), mspan)
        if word == "supports":
            at = self.name()
            feature = n.Literal("name", self.toks[at][1], self.toks[at][1], self.tok_span(at))
            span = self.span(first, at)
            return n.Constraint("supports", "has", feature, None, span, span)
        capability = None
        if word == "capability":
            self.take("PUNCT", "(")
            capability = self.toks[self.name()][1]
            mlast = self.take("PUNCT", ")")
        elif word in _METRICS:
            mlast = first
        else:
            raise GiveUp
        op = self.toks[self.take("COMPARE")][1]
        value, last = self.value()
        return n.Constraint(word, op, value, capability, self.span(first, last), self.span(first, mlast))
