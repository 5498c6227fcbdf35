"""Write requirements.lock: every package `pip install -e '.[test]'` resolves to, pinned and
hashed, so `make venv` on a fresh machine a year from now installs the same environment.

    python tools/lock.py            # (make lock) resolve with this Python's pip, rewrite the lock

pip's own resolver does the work (`pip install --dry-run --ignore-installed --report`): the
versions are what pip would install here now, each with the sha256 of the very file it chose (the
torch / torchvision wheels from this machine kind's disk, the rest from PyPI). `make venv` installs
the lock with `--require-hashes`, then the project itself with `--no-deps`.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
HEADER = """\
# requirements.lock: written by `make lock` (tools/lock.py) from pyproject.toml's dependencies and
# its [test] extra, resolved by pip on CPython {python} ({platform}). Do not edit by hand.
# `make venv`: pip install --require-hashes --no-deps -r requirements.lock, then -e . --no-deps.
"""


def resolve():
    """pip's installation report of `-e .[test]` in a clean resolve (nothing installed counts)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "-e", f"{ROOT}[test]"]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        return json.loads(report.read_text())


def lines(report):
    out = []
    for item in report["install"]:
        info = item["download_info"]
        if info.get("dir_info", {}).get("editable"):
            continue  # the project itself: installed from the checkout
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if not sha:
            sys.exit(f"tools/lock.py: {name} {version} came without a sha256 ({info.get('url')})")
        out.append(f"{name.lower()}=={version} \\\n    --hash=sha256:{sha}")
    return sorted(out)


def main():
    report = resolve()
    env = report.get("environment", {})
    header = HEADER.format(
        python=env.get("python_full_version", "?"), platform=env.get("platform_machine", "?")
    )
    LOCK.write_text(header + "\n".join(lines(report)) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(lines(report))} packages")


if __name__ == "__main__":
    main()
