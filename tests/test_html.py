"""`--html FILE`: one self-contained page from real runs, read back by an HTML parser and
rendered by a real browser (headless Chromium): the findings are on the page, nothing is
loaded from the network, and the embedded JSON is the report's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli

# Attributes through which a page can make the browser fetch something.
FETCHING = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}


class Page(HTMLParser):
    """Text, elements and attributes of a page, and the embedded JSON report."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.embedded: str | None = None
        self._in_report = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_report = tag == "script" and dict(attrs).get("id") == "lockprobe-report"

    def handle_endtag(self, tag: str) -> None:
        self._in_report = False

    def handle_data(self, data: str) -> None:
        if self._in_report:
            self.embedded = (self.embedded or "") + data
        else:
            self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Real runs, each written as HTML and as JSON by the same command."""
    out = tmp_path_factory.mktemp("html")
    runner = CliRunner()
    runs = {}
    for name in ("fastapi-self-deadlock", "upgrade-deadlock", "healthy"):
        page, report = out / f"{name}.html", out / f"{name}.json"
        args = ["run", name, "-q", "--html", str(page), "--json", str(report)]
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[name] = (page, json.loads(report.read_text()))
    return runs


@pytest.mark.parametrize("name", ["fastapi-self-deadlock", "upgrade-deadlock"])
def test_page_shows_every_finding_with_its_evidence_and_advice(pages, name) -> None:
    path, report = pages[name]
    page = Page(path.read_text())
    assert report["findings"]
    for finding in report["findings"]:
        for text in (finding["pattern"], finding["title"], finding["explanation"]):
            assert squash(text) in page.plain
        for line in finding["evidence"]["lines"]:
            assert squash(line) in page.plain
        for advice in finding["advice"]:
            assert squash(advice["text"]) in page.plain
            for code in advice["snippets"].values():
                assert squash(code) in page.plain
    assert page.count("svg") >= 1 and page.count("rect") > 0


def test_page_embeds_the_same_json_report(pages) -> None:
    path, report = pages["upgrade-deadlock"]
    page = Page(path.read_text())
    assert page.embedded is not None
    embedded = json.loads(page.embedded)
    assert embedded["findings"] == report["findings"]
    assert embedded["summary"]["total"] == report["summary"]["total"]


@pytest.mark.parametrize("name", ["fastapi-self-deadlock", "upgrade-deadlock", "healthy"])
def test_page_needs_no_network(pages, name) -> None:
    html = pages[name][0].read_text()
    page = Page(html)
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "img", "object", "embed"), tag
        for key, value in attrs.items():
            if key in FETCHING or key.endswith(":href"):
                assert (value or "").startswith("#"), (tag, key, value)
    assert "@import" not in html and "url(http" not in html and "url(//" not in html
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "lockprobe-report"}]


def test_healthy_page_says_no_problems_found(pages) -> None:
    path, report = pages["healthy"]
    assert report["findings"] == []
    assert "No lock problems found" in Page(path.read_text()).plain


def test_timeline_labels_the_waiter_and_the_holder(pages) -> None:
    page = Page(pages["fastapi-self-deadlock"][0].read_text())
    assert "session_a#0 (waiter)" in page.plain and "session_b#0 (holder)" in page.plain
    assert page.count("line") > 0  # the waits-for arrow (and the row grid)


def rendered_dom(path: Path) -> str:
    """The DOM after headless Chromium loaded the page; with a dead proxy, so nothing could
    have come from the network."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        # A contributor's machine may have only Python; CI must run these (.ci/run sets it).
        why = "chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
        if os.environ.get("LOCKPROBE_REQUIRE_BROWSER") == "1":
            pytest.fail(why + "; LOCKPROBE_REQUIRE_BROWSER=1 makes this a failure")
        pytest.skip(why)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--proxy-server=127.0.0.1:9",
                f"--user-data-dir={profile}",
                "--dump-dom",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=300,  # a guard against a hung browser, not a speed requirement
        )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", ["fastapi-self-deadlock", "upgrade-deadlock"])
def test_chromium_renders_the_findings_and_the_timeline(pages, name) -> None:
    path, report = pages[name]
    dom = Page(rendered_dom(path))
    for finding in report["findings"]:
        assert squash(finding["title"]) in dom.plain
        assert squash(finding["evidence"]["lines"][0]) in dom.plain
    sections = [a for t, a in dom.tags if t == "section" and a.get("data-pattern")]
    assert sorted(a["data-pattern"] for a in sections) == sorted(
        f["pattern"] for f in report["findings"]
    )
    assert dom.count("svg") >= 1 and dom.count("rect") > 0
    assert "Worst wait:" in dom.plain
