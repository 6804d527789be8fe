"""The documentation site, as a reader gets it.

It builds with Sphinx with warnings as errors; every page is reachable from the index
and every internal link (file and anchor) of the built HTML resolves; the index and the
API page of ``daskbatch.run`` render in headless chromium with the theme's CSS and JS,
from the built files alone; and every ```python block of ``docs/*.md`` runs, except
those marked ``<!-- not run -->`` (see docs/contributing.md).
"""

from __future__ import annotations

import fcntl
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
NOT_RUN = "<!-- not run -->"

pytestmark = pytest.mark.slow


def _need(module: str) -> None:
    """Skip without the docs extra, except on CI, where `make test` installs it."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing on CI: `make test` installs the docs extra")
        pytest.skip(f"needs the docs extra: pip install -e '.[docs]' ({module} is missing)")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once per test session (once for all xdist workers) into a tmp folder."""
    _need("sphinx")
    _need("myst_nb")
    _need("pydata_sphinx_theme")
    _need("numpydoc")
    _need("sphinxarg")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    out = base / "docs-site"
    with open(base / "docs-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "ok").exists():
            return out / "html"
        if out.exists():
            shutil.rmtree(out)
        # a copy of docs/: the build writes the API pages into its source (generated/)
        src = out / "src"
        shutil.copytree(
            DOCS,
            src,
            symlinks=False,  # docs/notebooks is a link to ../notebooks: copy the notebooks
            ignore=shutil.ignore_patterns("_build", "generated", "*.zarr", ".ipynb_checkpoints"),
        )
        build = ["-W", "--keep-going", "-q", "-E", "-b", "html", "-d", str(out / "doctrees")]
        r = subprocess.run(
            [sys.executable, "-m", "sphinx", *build, str(src), str(out / "html")],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert r.returncode == 0, f"sphinx-build -W failed:\n{r.stderr[-6000:]}"
        (out / "ok").touch()
    return out / "html"


class _Page(html.parser.HTMLParser):
    """The ids and the references (links, scripts, stylesheets, images) of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []  # <a href>
        self.assets: list[str] = []  # what the page loads: scripts, stylesheets, images

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        elif tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "preload", "icon"):
            self.assets.append(a["href"])
        elif tag == "img" and a.get("src"):
            self.assets.append(a["src"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _external(ref: str) -> bool:
    return bool(urlsplit(ref).scheme) or ref.startswith("//")


def test_every_page_is_reachable_and_every_internal_link_resolves(site: Path) -> None:
    # the pages (the theme's _static/ holds an HTML template, not a page)
    pages = {p: _parse(p) for p in _pages(site) if "_static" not in p.relative_to(site).parts}
    broken = []
    for path, page in pages.items():
        for ref in page.links + page.assets:
            if _external(ref):
                continue
            parts = urlsplit(ref)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            rel = path.relative_to(site)
            if not target.exists():
                broken.append(f"{rel}: {ref} (no such file)")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and unquote(parts.fragment) not in pages[target].ids
            ):
                broken.append(f"{rel}: {ref} (no such anchor)")
    assert not broken, "\n".join(broken)

    # every page is reached from the index by following links
    seen, todo = set(), [site / "index.html"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for ref in pages[path].links:
            parts = urlsplit(ref)
            if not _external(ref) and parts.path.endswith(".html"):
                todo.append((path.parent / unquote(parts.path)).resolve())
    seen.add(site / "search.html")  # the search box's form goes there
    unreached = sorted(str(p.relative_to(site)) for p in pages if p not in seen)
    assert unreached == [], unreached
    names = {str(p.relative_to(site)) for p in pages}
    for expected in (
        "getting-started.html",
        "api.html",
        "cli.html",
        "generated/daskbatch.run.html",
        "store-format.html",
        "reliability.html",
        "performance.html",
    ):
        assert expected in names, expected
    titles = {}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):  # every notebook is rendered
        assert f"notebooks/{notebook.stem}.html" in names, notebook.name
        text = (site / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        titles[notebook.name] = text.count("<h1")
    # with one title each: their Markdown cells are Markdown, not "# # Title" comment text
    assert all(n == 1 for n in titles.values()), f"titles per rendered notebook: {titles}"


def _pages(site: Path) -> list[Path]:
    """The site's HTML pages, not the render probes that another test process writes
    beside them for a moment (``.probe-*``: the site is built once for all processes)."""
    return [p for p in site.rglob("*.html") if not p.name.startswith(".probe-")]


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    """Offline: no page loads a script, stylesheet, font or image from elsewhere, and the
    stylesheets' own url(...) references are files of the site."""
    remote = []
    for path in _pages(site):
        remote += [f"{path.relative_to(site)}: {ref}" for ref in _parse(path).assets if _external(ref)]
    for css in site.rglob("*.css"):
        for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)", css.read_text(encoding="utf-8", errors="replace")):
            if ref.startswith(("data:", "#")):
                continue
            if _external(ref):
                remote.append(f"{css.relative_to(site)}: {ref}")
            elif not (css.parent / unquote(urlsplit(ref).path)).exists():
                remote.append(f"{css.relative_to(site)}: {ref} (missing)")
    assert not remote, "\n".join(remote)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: `make test` installs it (apt-get install chromium)")
        pytest.skip("needs chromium (apt-get install chromium)")
    return exe


# Run in the page after it has loaded: is the theme's CSS applied (its header is
# sticky; unstyled it is static), and did the theme's JS run (it sets data-theme)?
_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const header = document.querySelector(".bd-header");
  const out = document.createElement("pre");
  out.id = "render-probe";
  out.textContent = "header=" + (header ? getComputedStyle(header).position : "none")
    + " theme=" + document.documentElement.dataset.theme;
  document.body.appendChild(out);
}, 200));
</script>"""


@pytest.mark.parametrize("page", ["index.html", "generated/daskbatch.run.html"])
def test_pages_render_in_headless_chromium_from_the_built_files(site: Path, page: str, tmp_path) -> None:
    from PIL import Image

    exe = _chromium()
    path = site / page
    assert path.exists(), page
    for ref in _parse(path).assets:  # every CSS and JS file the page loads is there
        assert not _external(ref), ref
        assert (path.parent / unquote(urlsplit(ref).path)).exists(), ref
    text = path.read_text(encoding="utf-8")
    if page.endswith("daskbatch.run.html"):
        assert 'id="daskbatch.run"' in text and "Parameters" in text

    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    png = tmp_path / "page.png"
    r = subprocess.run(
        [*flags, "--window-size=1280,900", f"--screenshot={png}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.exists(), r.stderr[-2000:]
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, f"a blank page? {len(colours or [])} colours"
    # the largest colour is the page's background, and it covers less than 97% of it
    assert max(colours)[0] < 0.97 * 1280 * 900

    probe = path.with_name(f".probe-{os.getpid()}-{path.name}")  # beside the page: same links
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        dom = subprocess.run(
            [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
        ).stdout
    finally:
        probe.unlink()
    m = re.search(r'id="render-probe">header=(\w+) theme=(\w*)<', dom)
    assert m, dom[-2000:]
    assert m.groups() == ("sticky", "light"), f"the theme's CSS or JS did not load: {m.groups()}"


# ---------------------------------------------------------------------------------------------
# the code blocks of the pages

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def _blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, kind, code) of a page's fenced blocks and setup comments, in order.

    kind is the fence's language (``python``, ``toml``, ...), ``not run`` for a block
    marked so on the line before, or ``setup`` for a ``<!-- setup ... -->`` comment.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[int, str, str]] = []
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if line.strip() == "<!-- setup":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->")
            out.append((i + 2, "setup", "\n".join(lines[i + 1 : end])))
            i = end + 1
            continue
        if m and not (m["fence"][0] == "`" and "`" in m["info"]):  # (CommonMark: not a fence)
            fence = m["fence"]
            end = i + 1
            while end < len(lines):
                close = _FENCE.match(lines[end])
                if (
                    close
                    and close["fence"][0] == fence[0]
                    and len(close["fence"]) >= len(fence)
                    and not close["info"].strip()
                ):
                    break
                end += 1
            info = m["info"].strip().split()
            kind = info[0] if info else ""
            if previous.strip() == NOT_RUN:
                kind = "not run"
            out.append((i + 2, kind, "\n".join(lines[i + 1 : end])))
            i = end + 1
            previous = ""
            continue
        if line.strip():
            previous = line
        i += 1
    return out


_RUNNER = """\
blocks = {blocks!r}
if __name__ == "__main__":  # not again in a worker process that imports this script
    for line, code in blocks:
        print(f"--- {page}:{{line}}", flush=True)
        exec(compile("\\n" * (line - 1) + code, {page!r}, "exec"), globals())
"""


@pytest.mark.parametrize(
    "page", [p for p in PAGES if any(k in ("python", "toml") for _, k, _ in _blocks(p))], ids=lambda p: p.name
)
def test_code_blocks_of_the_page_run(page: Path, tmp_path: Path) -> None:
    """The page's ```python blocks (and setup comments) run in order in one fresh process,
    in an empty folder; its ```toml blocks parse."""
    blocks = _blocks(page)
    for line, kind, code in blocks:
        if kind == "toml":
            try:
                tomllib.loads(code)
            except tomllib.TOMLDecodeError as e:
                pytest.fail(f"docs/{page.name}:{line}: the TOML block does not parse: {e}")
    code = [(line, code) for line, kind, code in blocks if kind in ("python", "setup")]
    if not code:
        return
    script = tmp_path / "blocks.py"
    rel = f"docs/{page.name}"
    script.write_text(_RUNNER.format(blocks=code, page=rel))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, (
        f"a code block of {rel} failed (mark it `{NOT_RUN}` on the line before if it cannot run here):\n"
        f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    )
