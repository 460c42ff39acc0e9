"""Check that an environment holds exactly the versions a constraint file pins, inside segprune's range.

Usage: python .ci/check_versions.py .ci/newest.txt
Fails (exit 1) when an installed version differs from its pin (a machine-wide constraint or a stale
environment chose another one) or when a pin lies outside the bounds segprune declares.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def main(path: str) -> int:
    declared = {Requirement(r).name: Requirement(r).specifier for r in metadata.requires("segprune") or []}
    errors = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin = Requirement(line)
        wanted = Version(next(iter(pin.specifier)).version)
        installed = Version(metadata.version(pin.name))
        if Version(installed.public) != wanted:
            errors.append(f"{pin.name} {installed} is installed; {path} pins {wanted}")
        if pin.name in declared and wanted not in declared[pin.name]:
            errors.append(f"{path} pins {pin.name} {wanted}, outside pyproject's {declared[pin.name]}")
        print(f"{pin.name} {installed}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
