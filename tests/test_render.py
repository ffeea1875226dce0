"""explain --format markdown|html (engine/render.py): content, escaping, and a headless Chromium render."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.api import Engine
from engine.tools.render import render_html, render_markdown

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "tests" / "fixtures" / "policies"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(POLICY)


class _Checker(html.parser.HTMLParser):
    """Collects tags and text; fails on unbalanced tags (a cheap well-formedness check)."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data) -> None:
        self.text.append(data)


def _check(page: str) -> _Checker:
    p = _Checker()
    p.feed(page)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


def test_html_is_well_formed_self_contained_and_escaped(engine: Engine) -> None:
    d = engine.decide("Implement <script>alert(1)</script> now", tier="<script>alert('x')</script>", region="a&b")
    page = render_html(d.report())
    parsed = _check(page)
    assert "script" not in parsed.tags  # nothing from the prompt or attrs became markup
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "a&amp;b" in page
    assert "<style>" in page and "http://" not in page and "https://" not in page and "src=" not in page
    text = " ".join("".join(parsed.text).split())
    assert d.model in text and "Rules tried" in text and "Fallbacks" in text and "Rejected" in text
    assert "<script>alert('x')</script>" in text  # shown as text


def test_html_no_route_page(tmp_path: Path, fixture_catalog) -> None:
    eng = Engine.from_source('when tier == "x" use alpha-mini\n', catalog=fixture_catalog)
    from engine.runtime.decision import NoRouteError

    with pytest.raises(NoRouteError) as info:
        eng.decide("hi")
    page = render_html(info.value.report())
    text = "".join(_check(page).text)
    assert "no route" in text and "tier" in text


def test_markdown_content_and_escaping(engine: Engine) -> None:
    d = engine.decide("Implement a | pipe", tier="<b>|x")
    md = render_markdown(d.report())
    assert md.startswith("# modelroute decision\n")
    assert f"**Decision:** `{d.model}`" in md
    assert "## Rules tried" in md and "## Candidates" in md and "## Fallbacks" in md
    assert "&lt;b&gt;\\|x" in md and "<b>" not in md
    for line in md.splitlines():  # every table row has the header's column count
        if line.startswith("| rank"):
            assert line.count(" | ") == 4


def test_cli_formats(cli) -> None:
    for fmt, marker in (("markdown", "# modelroute decision"), ("html", "<!DOCTYPE html>")):
        r = cli("explain", "-p", str(POLICY), "Implement a parser", "--format", fmt)
        assert r.returncode == 0 and r.stdout.startswith(marker) and "Traceback" not in r.stderr


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(engine: Engine, tmp_path: Path) -> None:
    d = engine.decide("Implement <script>window.pwned=1</script>", tier="pro")
    page = tmp_path / "explain.html"
    page.write_text(render_html(d.report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,1600",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert d.model in dom.stdout and "Rules tried" in dom.stdout
    assert "<script>" not in dom.stdout  # the prompt stayed text
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    r = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
