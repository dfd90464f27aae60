#!/usr/bin/env python3
"""Fetch the offline assets listed in assets.toml into $HARNESS_HOME.

Every asset ships inside a package of a package registry. This script downloads each
package with pip (pinned version; `format = "deb"` packages with `apt-get download`),
checks the archive's sha256, extracts the files the manifest names, checks the assembled
file's sha256 and moves it into place atomically. A stamp next to each finished file makes
a second run do no work. Datasets are converted by scripts/datasets_convert.py into
$HARNESS_HOME/data/<name>/.

Only the Python standard library is used, so CI needs nothing but python3 and pip.

Usage: scripts/fetch_assets.py [--only NAME[,NAME...]] [--list]
"""

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


class FetchError(Exception):
    pass


def harness_home() -> Path:
    env = os.environ.get("HARNESS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "harness"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def is_done(target: Path, sha: str) -> bool:
    stamp = stamp_path(target)
    return target.is_file() and stamp.is_file() and stamp.read_text().strip() == sha


def mark_done(target: Path, sha: str) -> None:
    tmp = stamp_path(target).with_suffix(".tmp")
    tmp.write_text(sha + "\n")
    tmp.replace(stamp_path(target))


class Downloads:
    """Downloads each package at most once per run, into a private temporary folder."""

    def __init__(self, packages: dict, workdir: Path):
        self.packages = packages
        self.workdir = workdir
        self.paths: dict[str, Path] = {}

    def archive(self, name: str) -> Path:
        if name in self.paths:
            return self.paths[name]
        if name not in self.packages:
            raise FetchError(f"assets.toml names package '{name}' but has no [[package]] entry for it")
        pkg = self.packages[name]
        dest = self.workdir / name
        dest.mkdir()
        if pkg["format"] == "deb":
            files = self.apt_download(name, pkg["version"], dest)
        else:
            binary = ["--only-binary", ":all:"] if pkg["format"] == "wheel" else ["--no-binary", ":all:"]
            # pip_args pins a platform wheel (--platform, --python-version, ...) so that every
            # machine downloads the same file.
            # On a terminal pip draws its own progress bar; otherwise it stays quiet and
            # its last line becomes the error message.
            interactive = sys.stderr.isatty()
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary,
                   *pkg.get("pip_args", []), "-d", str(dest), f"{name}=={pkg['version']}"]
            cmd += ["--progress-bar", "on"] if interactive else ["--quiet"]
            print(f"fetch: downloading {name}=={pkg['version']}", file=sys.stderr)
            if interactive:
                result = subprocess.run(cmd, stdout=sys.stderr)
                last = "pip failed (see above)"
            else:
                result = subprocess.run(cmd, capture_output=True, text=True)
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            files = list(dest.iterdir())
            if result.returncode != 0 or len(files) != 1:
                raise FetchError(f"could not download package {name}=={pkg['version']}: {last}")
        got = sha256_of(files[0])
        if got != pkg["sha256"]:
            raise FetchError(f"checksum mismatch for {files[0].name}: expected {pkg['sha256']}, got {got}")
        self.paths[name] = files[0]
        return files[0]

    def apt_download(self, name: str, version: str, dest: Path) -> list:
        """`apt-get download NAME=VERSION` into dest (needs no root, but needs package lists:
        when the download fails and we are root, runs `apt-get update` once and retries)."""
        if shutil.which("apt-get") is None:
            raise FetchError(f"package {name}={version} is a Debian package, but apt-get is not installed")
        print(f"fetch: downloading {name}={version} (apt)", file=sys.stderr)
        for attempt in (1, 2):
            result = subprocess.run(["apt-get", "download", "-q", f"{name}={version}"],
                                    cwd=dest, capture_output=True, text=True)
            files = list(dest.glob("*.deb"))
            if result.returncode == 0 and len(files) == 1:
                return files
            errors = [l for l in result.stderr.splitlines() if l.startswith("E:")] or ["no output"]
            if attempt == 1 and os.geteuid() == 0:
                print("fetch: apt-get download failed; running apt-get update and retrying", file=sys.stderr)
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
                continue
            hint = "" if os.geteuid() == 0 else " (run 'apt-get update' as root first?)"
            raise FetchError(f"could not download Debian package {name}={version}: {errors[-1]}{hint}")

    def extract(self, package: str, member: str, out) -> None:
        """Copies one member of a package archive into the open binary file `out`."""
        archive = self.archive(package)
        try:
            if archive.suffix == ".whl" or archive.suffix == ".zip":
                with zipfile.ZipFile(archive) as z, z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            elif archive.suffix == ".deb":
                with tarfile.open(fileobj=deb_data(archive)) as t:
                    try:
                        info = t.getmember(member)
                    except KeyError:
                        info = t.getmember("./" + member)
                    src = t.extractfile(info)
                    if src is None:
                        raise KeyError(member)
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                with tarfile.open(archive) as t:
                    src = t.extractfile(member)
                    if src is None:
                        raise KeyError(member)
                    shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise FetchError(f"package {package} has no file {member}") from None


def deb_data(archive: Path) -> io.BytesIO:
    """The data.tar.* member of a .deb (an ar archive), as a file object."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{archive.name} is not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise FetchError(f"{archive.name} has no data.tar member")
            name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return io.BytesIO(f.read(size))
            f.seek(size + (size & 1), os.SEEK_CUR)


def fetch_model(model: dict, home: Path, downloads: Downloads) -> None:
    target = home / model["file"]
    if is_done(target, model["sha256"]):
        print(f"fetch: {model['alias']} is up to date ({target})", file=sys.stderr)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".partial-", delete=False) as out:
        partial = Path(out.name)
        try:
            for member in model["members"]:
                downloads.extract(member["package"], member["path"], out)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    got = sha256_of(partial)
    if got != model["sha256"]:
        partial.unlink()
        raise FetchError(f"checksum mismatch for model {model['alias']}: expected {model['sha256']}, got {got}")
    partial.chmod(0o644)
    partial.replace(target)
    for extra in model.get("extras", []):
        write_member(downloads, extra["package"], extra["path"], home / extra["to"])
    mark_done(target, model["sha256"])
    print(f"fetch: {model['alias']} -> {target}", file=sys.stderr)


def write_member(downloads: Downloads, package: str, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".partial-", delete=False) as out:
        partial = Path(out.name)
        try:
            downloads.extract(package, member, out)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    partial.chmod(0o644)
    partial.replace(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated asset names (model aliases or dataset names)")
    parser.add_argument("--list", action="store_true", help="list the assets and exit")
    args = parser.parse_args()

    manifest = tomllib.loads((ROOT / "assets.toml").read_text())
    packages = {p["name"]: p for p in manifest.get("package", [])}
    assets = [("model", m["alias"], m) for m in manifest.get("model", [])]
    assets += [("dataset", d["name"], d) for d in manifest.get("dataset", [])]
    if args.list:
        for kind, name, _ in assets:
            print(f"{kind}\t{name}")
        return 0
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - {name for _, name, _ in assets}
        if unknown:
            raise FetchError(f"unknown asset(s): {', '.join(sorted(unknown))}; known: "
                             + ", ".join(name for _, name, _ in assets))
        assets = [a for a in assets if a[1] in wanted]

    home = harness_home()
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=".downloads-") as workdir:
        downloads = Downloads(packages, Path(workdir))
        for kind, _, asset in assets:
            if kind == "model":
                fetch_model(asset, home, downloads)
            else:
                import datasets_convert

                try:
                    datasets_convert.fetch_dataset(asset, home, downloads)
                except datasets_convert.ConvertError as e:
                    raise FetchError(f"dataset {asset['name']}: {e}") from None
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as e:
        print(f"fetch_assets: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fetch_assets: interrupted", file=sys.stderr)
        sys.exit(130)
