#!/usr/bin/env python3
"""Checks what headless Chromium made of a report's index.html.

Usage: browser_check.py REPORT_DIR DOM_FILE LOG_FILE SCREENSHOT

DOM_FILE is Chromium's --dump-dom of the page (taken after its scripts ran),
LOG_FILE its stderr with --enable-logging=stderr, SCREENSHOT its --screenshot PNG.
Prints one line and exits 0 when the page is whole, or prints one line saying why
not and exits 1. Standard library only, so that it runs on a bare CI machine.
"""

import pathlib
import re
import struct
import sys
import zlib


def dom_problems(dom, plot_stems, markdown_tables):
    """What is wrong with the page as rendered, given the plot files and the number
    of tables the Markdown report has (the page must show the same)."""
    problems = []
    errors = re.search(r'<div id="page-errors"[^>]*>(.*?)</div>', dom, re.S)
    if errors is None:
        problems.append("the page has no #page-errors element, so script errors cannot be seen")
    elif errors.group(1).strip():
        problems.append("script error on the page: " + " ".join(errors.group(1).split()))
    if 'data-ready="sortable"' not in dom:
        problems.append("the page's sorting script did not finish (no data-ready on <body>)")
    tables = re.findall(r"<table\b.*?</table>", dom, re.S)
    if len(tables) != markdown_tables:
        problems.append(f"{len(tables)} tables on the page, {markdown_tables} in leaderboard.md")
    for i, t in enumerate(tables, 1):
        if not re.search(r"<tbody>\s*<tr>", t):
            problems.append(f"table {i} has no rows")
    for stem in plot_stems:
        figure = re.search(rf'<figure[^>]*id="fig-{re.escape(stem)}"[^>]*>(.*?)</figure>', dom, re.S)
        if figure is None:
            problems.append(f"plot {stem}.svg is not on the page")
        elif not re.search(r"<svg\b.*?<(path|polyline|polygon|line|rect|circle)\b", figure.group(1), re.S):
            problems.append(f"plot {stem}.svg is on the page but draws nothing")
    external = re.search(r"""(?:\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//)""", dom)
    if external:
        problems.append(f"the page loads something from outside: {external.group(0)}")
    return problems


def log_problems(log):
    """Console messages and uncaught errors in Chromium's log; the page writes none."""
    for line in log.splitlines():
        if ":CONSOLE" in line or "Uncaught" in line:
            return [f"console message: {line.strip()}"]
    return []


def png_pixels(data):
    """Width, height, bytes per pixel and the unfiltered rows of an 8-bit,
    non-interlaced greyscale, RGB or RGBA PNG (what Chromium writes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without a header")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"PNG of a kind this check does not read (depth {depth}, colour {colour})")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        elif kind != 0:
            raise ValueError(f"PNG row {y} has unknown filter {kind}")
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def screenshot_problems(data):
    """Whether a screenshot shows a page rather than one colour: a report has text,
    lines and shaded bands, so it needs many colours and some non-background."""
    try:
        width, height, channels, rows = png_pixels(data)
    except (ValueError, zlib.error, struct.error) as e:
        return [f"unreadable screenshot ({e})"]
    colours, counts = set(), {}
    for row in rows:
        for x in range(0, width * channels, channels):
            pixel = row[x : x + channels]
            colours.add(pixel)
            counts[pixel] = counts.get(pixel, 0) + 1
    background = max(counts.values()) / (width * height)
    if len(colours) < 16 or background > 0.995:
        return [f"blank screenshot: {len(colours)} colours, {100 * background:.1f}% one colour"]
    return []


def main(argv):
    if len(argv) != 5:
        print("usage: browser_check.py REPORT_DIR DOM_FILE LOG_FILE SCREENSHOT", file=sys.stderr)
        return 2
    report, dom, log, shot = (pathlib.Path(a) for a in argv[1:])
    stems = sorted(p.stem for p in (report / "plots").glob("*.svg"))
    markdown = (report / "leaderboard.md").read_text(encoding="utf-8")
    markdown_tables = len(re.findall(r"^\|(?:-+:?\|)+$", markdown, re.M))
    problems = (
        dom_problems(dom.read_text(encoding="utf-8", errors="replace"), stems, markdown_tables)
        + log_problems(log.read_text(encoding="utf-8", errors="replace"))
        + screenshot_problems(shot.read_bytes())
    )
    if problems:
        print(f"browser check failed: {problems[0]}", file=sys.stderr)
        return 1
    print(f"browser check passed: {markdown_tables} tables, {len(stems)} plots, no console messages, screenshot not blank")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
