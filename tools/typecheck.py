"""Type-check the installed package `rokv` from the checkout's folders.

The folders install under other names (client/ is rokv, server/ is
rokv.server, ...): pyproject.toml's [tool.setuptools] package-dir, read here,
is the one place that says so, a mapping mypy cannot follow by itself. This
script builds that layout as a tree of symbolic links in a temporary folder
and runs mypy on it with the configuration in pyproject.toml; paths in its
report are mapped back to the checkout's files.

    python tools/typecheck.py          # exits with mypy's status
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    """Installed package (as a path: rokv/server) -> folder, from pyproject.toml."""
    with open(REPO / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {package.replace(".", "/"): folder for package, folder in mapping.items()}


LAYOUT = package_dirs()


def build_tree(root: Path) -> None:
    for package, folder in LAYOUT.items():
        target = root / package
        target.mkdir(parents=True, exist_ok=True)
        for source in (REPO / folder).iterdir():
            if source.suffix in (".py", ".pyi") or source.name == "py.typed":
                os.symlink(source, target / source.name)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rokv-types-") as tmp:
        root = Path(tmp)
        build_tree(root)
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "-p", "rokv"],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "MYPYPATH": str(root)},
        )
        out = result.stdout + result.stderr
        for package, folder in sorted(LAYOUT.items(), key=lambda item: -len(item[0])):
            out = out.replace(f"{package}/", f"{folder}/")
        sys.stdout.write(out)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
