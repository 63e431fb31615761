"""Checks an HTML report (`gipip-jax report W`, audit or study) in a real browser, headless Chromium.

    python -m gipip_jax.html_check W/report.html [--png OUT.png]

The report's folder is served on 127.0.0.1 (stdlib http.server, a free port) next to a small checker
page that opens the report in an iframe, waits for its load event, then checks every <img> (loaded,
naturalWidth > 0), every local <a href>, <link href>, <script src> and <source src> (fetched: status 200;
links to other hosts are skipped) and every #anchor (a target in the document); Chromium's --dump-dom
returns its JSON verdict. With --png the report itself is rendered (1280 x 2400) and the PNG must not
be blank. Exit status 0: fine; 1: problems, one `gipip-jax: html check: ...` line each on stderr; 2: bad
input (no such file, no Chromium: the Debian package `chromium`, see BUILD.md).
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse

TIMEOUT_S = 60
VIRTUAL_TIME_MS = 15000
WINDOW = (1280, 2400)
CHECKER_PATH = "/__gipip_jax_html_check__.html"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--run-all-compositor-stages-before-draw"]

# Runs in Chromium: opens the report in an iframe and writes {"problems": [...], "images": n, "links": n}
# into <pre id="verdict">.
CHECKER_JS = r"""
const REPORT = %(report)s;
const problems = [];
const fetched = new Map();
async function status(url) {
  if (!fetched.has(url)) {
    fetched.set(url, fetch(url, {cache: "no-store"}).then(async r => ({status: r.status,
      type: r.headers.get("content-type") || "", text: r.ok ? await r.text() : ""}), e => ({status: String(e)})));
  }
  return fetched.get(url);
}
function hasAnchor(doc, id) {
  return id === "" || id.toLowerCase() === "top" || doc.getElementById(id) !== null || doc.getElementsByName(id).length > 0;
}
async function checkUrl(doc, what, raw) {
  let url;
  try { url = new URL(raw, doc.baseURI); } catch (e) { problems.push(`bad ${what} URL: ${raw}`); return; }
  const id = decodeURIComponent(url.hash.slice(1));
  if (url.protocol === "file:") { problems.push(`${what} to a local file path (not relative to the report): ${raw}`); return; }
  if (url.origin !== location.origin) return;   // other hosts and schemes (https://..., mailto:, data:)
  const page = url.href.split("#")[0];
  if (page === doc.URL.split("#")[0]) {
    if (!hasAnchor(doc, id)) problems.push(`${what} to a missing anchor: ${raw}`);
    return;
  }
  const answer = await status(page);
  if (answer.status !== 200) { problems.push(`broken ${what} (${answer.status}): ${raw}`); return; }
  if (url.hash && answer.type.startsWith("text/html")) {
    const target = new DOMParser().parseFromString(answer.text, "text/html");
    if (!hasAnchor(target, id)) problems.push(`${what} to a missing anchor: ${raw}`);
  }
}
async function check(frame) {
  const doc = frame.contentDocument;
  const images = Array.from(doc.images);
  await Promise.all(images.map(img => {
    img.loading = "eager";
    return img.complete ? null : new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); });
  }));
  for (const img of images) {
    const src = img.getAttribute("src");
    if (!src) problems.push("image without src" + (img.alt ? `: ${img.alt}` : ""));
    else if (!(img.complete && img.naturalWidth > 0)) problems.push(`image not loaded: ${src}`);
  }
  const refs = [];
  for (const a of doc.querySelectorAll("a[href], area[href]")) refs.push(["link", a.getAttribute("href")]);
  for (const e of doc.querySelectorAll("link[href]")) refs.push(["<link>", e.getAttribute("href")]);
  for (const e of doc.querySelectorAll("script[src], source[src], video[src], audio[src], iframe[src]"))
    refs.push([`<${e.tagName.toLowerCase()}>`, e.getAttribute("src")]);
  for (const [what, raw] of refs) await checkUrl(doc, what, raw);
  return {images: images.length, links: refs.length};
}
async function main() {
  const verdict = document.getElementById("verdict");
  const answer = await status(REPORT);
  if (answer.status !== 200) { problems.push(`report not served (${answer.status}): ${REPORT}`); }
  else {
    const frame = document.createElement("iframe");
    frame.style.width = "%(width)dpx"; frame.style.height = "%(height)dpx";
    const loaded = new Promise(done => frame.addEventListener("load", done));
    frame.src = REPORT;
    document.body.appendChild(frame);
    await loaded;
    try { Object.assign(verdict.dataset, await check(frame)); }
    catch (e) { problems.push(`checker failed: ${e}`); }
  }
  verdict.textContent = JSON.stringify({problems: problems, images: Number(verdict.dataset.images || 0),
                                        links: Number(verdict.dataset.links || 0)});
}
main();
"""


class HtmlCheckError(ValueError):
    """Bad input: no such report, or no Chromium to check it with."""


def find_chromium() -> str:
    """Path of the Chromium binary (`chromium`, else `chromium-browser`); HtmlCheckError if neither is on PATH."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise HtmlCheckError("no Chromium found (chromium or chromium-browser on PATH); install the Debian package "
                         "`chromium` (apt-get install chromium)")


def checker_page(report_name: str) -> str:
    """The checker page's HTML for the report at /REPORT_NAME of the same origin."""
    script = CHECKER_JS % {"report": json.dumps("/" + urllib.parse.quote(report_name)),
                           "width": WINDOW[0], "height": WINDOW[1]}
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>html check</title></head><body>"
            f"<pre id=\"verdict\"></pre><script>{script}</script></body></html>")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the report's folder, and the checker page at CHECKER_PATH."""

    def __init__(self, *args, page: bytes, **kwargs):
        self.page = page
        super().__init__(*args, **kwargs)

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path != CHECKER_PATH:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format, *args):
        pass


def _chromium(chromium: str, args: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """(status, stdout, stderr) of Chromium with FLAGS, a fresh profile and ARGS; status None on timeout."""
    with tempfile.TemporaryDirectory(prefix="gipip_jax_chromium_", ignore_cleanup_errors=True) as profile:
        command = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, env={**os.environ, "HOME": profile})
        try:
            out, err = process.communicate(timeout=timeout_s)
            return process.returncode, out, err
        except subprocess.TimeoutExpired:   # Chromium's helper processes share its session: end them all
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            return None, out, err


def _failure(what: str, status: int | None, err: str, timeout_s: float) -> str:
    if status is None:
        return f"{what}: Chromium did not finish within {timeout_s:g} s"
    tail = " | ".join(line for line in err.strip().splitlines()[-3:])
    return f"{what}: Chromium exited with status {status}" + (f" ({tail})" if tail else "")


def verdict(dom: str) -> dict | None:
    """The checker's verdict from Chromium's --dump-dom output; None when the checker did not finish."""
    found = re.search(r'<pre id="verdict"[^>]*>(.*?)</pre>', dom, re.S)
    if not found or not found.group(1).strip():
        return None
    return json.loads(html.unescape(found.group(1)))


def blank(png_path: str) -> bool:
    """Whether the PNG holds a single pixel value (an empty page)."""
    from PIL import Image

    with Image.open(png_path) as image:
        return image.convert("RGB").getcolors(maxcolors=1) is not None


def check(html_path: str, png_path: str | None = None, chromium: str | None = None,
          timeout_s: float = TIMEOUT_S) -> list[str]:
    """Problems of the report at `html_path` in headless Chromium (empty: fine); with png_path also a screenshot.

    Raises HtmlCheckError when the report does not exist or no Chromium is found.
    """
    if not os.path.isfile(html_path):
        raise HtmlCheckError(f"no such report: {html_path}")
    chromium = chromium or find_chromium()
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        raise HtmlCheckError(f"not an executable Chromium: {chromium}")
    folder, name = os.path.split(os.path.abspath(html_path))
    handler = functools.partial(_Handler, directory=folder, page=checker_page(name).encode())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    problems = []
    try:
        status, out, err = _chromium(chromium, [f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom",
                                                origin + CHECKER_PATH], timeout_s)
        found = verdict(out) if status == 0 else None
        if found is None:
            problems.append(_failure("checker page", status, err, timeout_s) if status != 0 else
                            f"checker page: no verdict within {VIRTUAL_TIME_MS / 1000:g} s of virtual time")
        else:
            problems += found["problems"]
        if png_path:
            png_path = os.path.abspath(png_path)
            os.makedirs(os.path.dirname(png_path), exist_ok=True)
            if os.path.exists(png_path):
                os.remove(png_path)
            status, _, err = _chromium(chromium, [f"--screenshot={png_path}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                                                  f"--virtual-time-budget={VIRTUAL_TIME_MS}",
                                                  f"{origin}/{urllib.parse.quote(name)}"], timeout_s)
            if not os.path.isfile(png_path) or os.path.getsize(png_path) == 0:
                problems.append(_failure(f"screenshot {png_path} not written", status, err, timeout_s))
            elif blank(png_path):
                problems.append(f"screenshot {png_path} is blank (one pixel value)")
    finally:
        server.shutdown()
        server.server_close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gipip_jax.html_check", description=__doc__.split("\n")[0])
    parser.add_argument("report", help="the report's HTML file, e.g. W/report.html")
    parser.add_argument("--png", help="also render the report to this PNG (1280 x 2400) and check it is not blank")
    parser.add_argument("--chromium", help="Chromium binary (default: chromium or chromium-browser on PATH)")
    options = parser.parse_args(argv)
    try:
        problems = check(options.report, options.png, options.chromium)
    except HtmlCheckError as error:
        print(f"gipip-jax: error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"gipip-jax: html check: {problem}", file=sys.stderr)
    if not problems:
        print(f"html check: {options.report} renders in Chromium with every image and link fine"
              + (f"; screenshot {options.png}" if options.png else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
