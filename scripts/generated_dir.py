"""Publishing a generated folder: build it in a temporary folder, then
rename it into place, so readers never see a half-written tree. A `.stamp`
file records what generated it; a matching stamp means "up to date"."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

STAMP = ".stamp"


def read_stamp(out_dir: str) -> str | None:
    try:
        with open(os.path.join(out_dir, STAMP), encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def check_replaceable(out_dir: str) -> None:
    """Refuse to replace anything but an empty dir or an earlier generation."""
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            sys.exit(f"error: {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and read_stamp(out_dir) is None:
            sys.exit(
                f"error: {out_dir} is not empty and has no {STAMP}; "
                "refusing to replace it"
            )


def publish(tmp_dir: str, out_dir: str, stamp: str) -> None:
    """Move tmp_dir to out_dir, replacing a previous generation of ours."""
    old = None
    if os.path.exists(out_dir):
        check_replaceable(out_dir)
        old = tempfile.mkdtemp(
            prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(out_dir)
        )
        os.rmdir(old)
        try:
            os.rename(out_dir, old)
        except FileNotFoundError:
            old = None  # someone else removed it meanwhile
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        # A concurrent run published first; keep its result if it is current.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if read_stamp(out_dir) != stamp:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
