"""The built book in headless Chromium: pages, mathematics, figures, navigation, Colab links, search.

The test session builds the book from the current sources into a temporary
folder (as `make book` does, with warnings as errors), serves it over http on
127.0.0.1 and drives Debian's Chromium through Selenium (`make browser`
installs both the browser and its driver). The pages checked are the front page
and every chapter of `_toc.yml`.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# On a closed network Chromium would otherwise wait on updates, sync and QUIC.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1024"]
COLAB = "https://colab.research.google.com/github/"
TIMEOUT = 30  # seconds for a page, its scripts and the search


def toc_pages() -> tuple[str, list[str]]:
    """The root page and the chapters of ``_toc.yml``, in reading order, without suffixes."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(entries: list[dict]):
        for entry in entries:
            if "file" in entry:
                yield re.sub(r"\.(ipynb|md)$", "", entry["file"])
            yield from files(entry.get("sections", []))

    parts = toc.get("parts") or [{"chapters": toc.get("chapters", [])}]
    return toc["root"], [page for part in parts for page in files(part["chapters"])]


def colab_link(chapter: str) -> str:
    """Where the Colab button of a notebook chapter must point: its notebook on the book's repository."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    repository = urlsplit(config["url"]).path.strip("/")
    folder = config.get("path_to_book", "").strip("/")
    notebook = f"{folder}/{chapter}.ipynb" if folder else f"{chapter}.ipynb"
    return f"{COLAB}{repository}/blob/{config.get('branch', 'main')}/{notebook}"


FRONT_PAGE, CHAPTERS = toc_pages()
PAGES = [FRONT_PAGE, *CHAPTERS]
NOTEBOOK_CHAPTERS = [chapter for chapter in CHAPTERS if (ROOT / f"{chapter}.ipynb").is_file()]

# Everything a check needs from a page, gathered in one visit once MathJax, the
# figures and the fonts are done. Inline maths outside code must not survive
# as text: \( \) \[ \] $$ or $x$.
REPORT_SCRIPT = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const article = document.querySelector("article.bd-article") || document.querySelector("main");
  const images = article ? [...article.querySelectorAll("img")] : [];
  images.forEach(img => img.loading === "lazy" && img.scrollIntoView());
  await Promise.all(images.filter(img => !img.complete).map(img => new Promise(settled => {
    img.addEventListener("load", settled);
    img.addEventListener("error", settled);
  })));
  const mathjax = window.MathJax;
  const typesetter = Boolean(mathjax && mathjax.startup && mathjax.startup.promise);
  if (typesetter) await mathjax.startup.promise;
  await document.fonts.ready;

  const raw = /\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\s]([^$]*[^$\s])?\$/;
  // Nor may a Markdown table printed by a cell arrive as lines of pipes.
  const rawTable = /\|\s*:?-{3,}:?\s*\|/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawMath = [], rawTables = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("pre, code, script, style, textarea")) continue;
    const text = node.textContent.trim().slice(0, 120);
    if (rawTable.test(node.textContent)) rawTables.push(text);
    if (node.parentElement.closest("mjx-container")) continue;
    if (raw.test(node.textContent)) rawMath.push(text);
  }
  const maths = [...document.querySelectorAll(".math")];
  const navigation = performance.getEntriesByType("navigation")[0];
  return {
    url: location.href,
    status: navigation ? navigation.responseStatus : null,
    title: document.title,
    heading: (document.querySelector("h1") || {}).textContent || "",
    hasArticle: Boolean(article),
    images: images.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                                width: img.naturalWidth})),
    typesetter: typesetter,
    maths: maths.length,
    untypeset: maths.filter(el => !el.querySelector("mjx-container"))
                    .map(el => el.textContent.trim().slice(0, 120)),
    texErrors: [...document.querySelectorAll("mjx-merror")]
                   .map(el => el.getAttribute("data-mjx-error") || el.textContent),
    rawMath: rawMath,
    rawTables: rawTables,
    tables: article ? article.querySelectorAll("table").length : 0,
    mathjaxScripts: [...document.scripts].map(s => s.src).filter(src => /mathjax/i.test(src)),
    mathjaxFontsLoaded: [...document.fonts]
                   .filter(f => f.family.replace(/"/g, "").startsWith("MJX") && f.status === "loaded").length,
    resources: performance.getEntriesByType("resource")
                   .map(r => ({url: r.name, status: r.responseStatus})),
    navigation: [...document.querySelectorAll("nav.bd-docs-nav a.reference.internal")]
                   .map(a => ({text: a.textContent.trim(), href: a.href})),
    // The theme's tooltips move a link's title to data-bs-original-title.
    launchLinks: [...document.querySelectorAll("a")]
                   .map(a => ({title: a.title || a.getAttribute("data-bs-original-title") || "",
                               href: a.getAttribute("href")}))
                   .filter(a => /launch on colab/i.test(a.title)),
  };
})().then(done, error => done({error: String(error)}));
"""


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory) -> Path:
    """The book, built from the current sources with warnings as errors."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    build = subprocess.run([str(jupyter_book), "build", str(ROOT), "--path-output", str(out),
                            "--warningiserror", "--keep-going"],
                           cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, f"the book does not build:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return out / "_build" / "html"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def site_url(site_dir):
    """The built book served over http on a free port of 127.0.0.1 (search needs http, not file://)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Debian's headless Chromium with a fresh profile, driven by its own chromedriver."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make browser` (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(TIMEOUT)
    driver.set_script_timeout(TIMEOUT)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def visit(browser, site_url):
    """``visit(url)``: what the page at ``url`` shows, read once per session."""
    reports: dict[str, dict] = {}

    def visit(url: str) -> dict:
        if url not in reports:
            browser.get(url)
            WebDriverWait(browser, TIMEOUT).until(
                lambda b: b.execute_script("return document.readyState") == "complete")
            report = browser.execute_async_script(REPORT_SCRIPT)
            assert "error" not in report, f"{url}: reading the page failed: {report.get('error')}"
            reports[url] = report
        return reports[url]

    return visit


def page_url(site_url: str, page: str) -> str:
    return f"{site_url}{page}.html"


def without_fragment(url: str) -> str:
    return url.split("#")[0].split("?")[0]


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_with_its_title(visit, site_url, page):
    report = visit(page_url(site_url, page))
    assert report["status"] == 200, f"{page}: HTTP status {report['status']}"
    assert report["hasArticle"], f"{page}: no article on the page"
    heading = report["heading"].strip().rstrip("#").strip()
    assert heading, f"{page}: the page has no <h1> title"
    assert heading in report["title"], f"{page}: <title> {report['title']!r} does not name the page {heading!r}"


@pytest.mark.parametrize("page", PAGES)
def test_mathematics_is_typeset_with_no_raw_tex_left(visit, site_url, page):
    report = visit(page_url(site_url, page))
    if report["maths"]:
        assert report["typesetter"], f"{page}: has {report['maths']} formulas but MathJax did not load"
    assert not report["untypeset"], f"{page}: formulas not typeset: {report['untypeset'][:5]}"
    assert not report["texErrors"], f"{page}: MathJax could not typeset: {report['texErrors'][:5]}"
    assert not report["rawMath"], f"{page}: raw TeX left in the text: {report['rawMath'][:5]}"


def test_mathjax_and_its_fonts_come_from_the_site_itself(visit, site_url, site_dir):
    chapter = next((c for c in CHAPTERS if 'class="math' in (site_dir / f"{c}.html").read_text()), None)
    assert chapter is not None, "no chapter of the built book has any mathematics"
    report = visit(page_url(site_url, chapter))
    assert report["mathjaxScripts"], f"{chapter}: no MathJax script on a page with maths"
    assert all(src.startswith(f"{site_url}_static/mathjax/") for src in report["mathjaxScripts"]), \
        f"{chapter}: MathJax is loaded from elsewhere: {report['mathjaxScripts']}"
    fonts = [r for r in report["resources"] if r["url"].startswith(f"{site_url}_static/mathjax/")
             and r["url"].endswith(".woff")]
    assert fonts and all(r["status"] == 200 for r in fonts), f"{chapter}: MathJax fonts not served: {fonts}"
    assert report["mathjaxFontsLoaded"] > 0, f"{chapter}: no MathJax font loaded"
    elsewhere = [r["url"] for r in report["resources"] if "mathjax" in r["url"].lower()
                 and not r["url"].startswith(site_url)]
    assert not elsewhere, f"{chapter}: MathJax files requested from elsewhere: {elsewhere}"


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_image_loads(visit, site_url, page):
    report = visit(page_url(site_url, page))
    broken = [image["src"] for image in report["images"] if not (image["complete"] and image["width"] > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"


def printed_markdown_tables(chapter: str) -> int:
    """How many Markdown tables the stored outputs of a chapter's notebook print."""
    path = ROOT / f"{chapter}.ipynb"
    if not path.is_file():
        return 0
    cells = json.loads(path.read_text())["cells"]
    outputs = [output.get("data", {}).get("text/markdown", "") for cell in cells
               for output in cell.get("outputs", [])]
    return sum(bool(re.search(r"^\|\s*:?-{3,}", "".join(text), re.MULTILINE)) for text in outputs)


@pytest.mark.parametrize("page", PAGES)
def test_printed_markdown_tables_are_rendered_as_tables(visit, site_url, page):
    report = visit(page_url(site_url, page))
    assert not report["rawTables"], f"{page}: Markdown tables shown as text: {report['rawTables'][:3]}"
    assert report["tables"] >= printed_markdown_tables(page), \
        f"{page}: {printed_markdown_tables(page)} tables printed by cells, {report['tables']} on the page"


def test_every_notebook_chapter_shows_a_figure(visit, site_url):
    without = [c for c in NOTEBOOK_CHAPTERS if not visit(page_url(site_url, c))["images"]]
    assert not without, f"chapters without any figure image: {without}"


def test_sidebar_navigation_reaches_every_chapter(browser, visit, site_url):
    browser.get(site_url)  # index.html sends the reader on to the front page
    front = page_url(site_url, FRONT_PAGE)
    WebDriverWait(browser, TIMEOUT).until(lambda b: without_fragment(b.current_url) == front,
                                          f"the site's root does not lead to {front}")
    reached, queue = {front}, [front]
    while queue:
        for link in visit(queue.pop(0))["navigation"]:
            url = without_fragment(link["href"])
            if url.startswith(site_url) and url not in reached:
                reached.add(url)
                queue.append(url)
    unreached = [c for c in CHAPTERS if page_url(site_url, c) not in reached]
    assert not unreached, f"the sidebar does not lead to: {unreached}"


def test_sidebar_links_carry_the_chapter_titles(visit, site_url):
    links = {without_fragment(link["href"]): link["text"]
             for link in visit(page_url(site_url, FRONT_PAGE))["navigation"]}
    for chapter in CHAPTERS:
        heading = visit(page_url(site_url, chapter))["heading"].strip().rstrip("#").strip()
        text = links.get(page_url(site_url, chapter))
        assert text == heading, f"{chapter}: sidebar says {text!r}, the page's title is {heading!r}"


@pytest.mark.parametrize("chapter", NOTEBOOK_CHAPTERS)
def test_colab_link_opens_the_chapters_notebook_on_the_repository(visit, site_url, chapter):
    links = visit(page_url(site_url, chapter))["launchLinks"]
    assert len(links) == 1, f"{chapter}: expected one Colab launch link, found {links}"
    assert links[0]["href"] == colab_link(chapter)


def test_search_for_inception_finds_the_googlenet_chapter(browser, site_url):
    googlenet = next((c for c in CHAPTERS if "googlenet" in c), None)
    assert googlenet is not None, "_toc.yml has no GoogLeNet chapter"
    browser.get(f"{site_url}search.html?q=Inception")
    summary = WebDriverWait(browser, TIMEOUT).until(
        lambda b: b.execute_script(
            'const p = document.querySelector("#search-results p.search-summary");'
            "return p && p.innerText.trim();"),
        "the search did not finish")
    found = browser.execute_script(
        'return [...document.querySelectorAll("#search-results ul.search li a")].map(a => a.href);')
    pages = sorted({without_fragment(url) for url in found})
    assert page_url(site_url, googlenet) in pages, f"search for Inception ({summary!r}) lists {pages}"


def test_a_worked_solution_is_hidden_until_the_reader_opens_it(browser, site_url):
    """Chapter 6's solution to the 3x3-kernel exercise: closed at first, then its prose and output."""
    lenet = next((c for c in NOTEBOOK_CHAPTERS if c.endswith("06_lenet")), None)
    assert lenet is not None, "_toc.yml has no LeNet chapter"
    browser.get(page_url(site_url, lenet))
    find = ('return [...document.querySelectorAll("div.solution.dropdown")]'
            '.find(d => d.querySelector(\'.admonition-title a[href="#lenet-3x3"]\'));')
    solution = WebDriverWait(browser, TIMEOUT).until(lambda b: b.execute_script(find),
                                                    "no hidden solution names the exercise lenet-3x3")
    content = solution.find_element(By.CSS_SELECTOR, "section#solution-content")
    assert not content.is_displayed(), "the solution is shown before the reader opens it"
    solution.find_element(By.CSS_SELECTOR, ".admonition-title").click()
    WebDriverWait(browser, TIMEOUT).until(lambda b: content.is_displayed(), "clicking its title does not open it")
    text = content.text
    assert "61,610" in text and "layer_summary" in text, f"the opened solution shows: {text[:300]!r}"
