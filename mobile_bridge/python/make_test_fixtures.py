"""The C test's inputs, for `ctest` (mobile_bridge/CMakeLists.txt: test bridge_test_fixtures).

    python make_test_fixtures.py OUT_DIR [FAMILY]

writes OUT_DIR/text.gguf + mmproj.gguf (a tiny random checkpoint of FAMILY, default
minicpmv-4.5, converted by minicpmv_edge.convert), other-mmproj.gguf (a projector of another
family, for the mismatch checks) and image.png (the 400x300 noise image the pytest run uses).
Files already there are kept, so a caller (tests/test_mobile_bridge_arm64.py) can provide its own.
Needs the project installed with its `fixtures` extra (torch, transformers).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

OTHER = {"minicpmv-2.6": "minicpmv-4.5", "minicpmv-4.0": "minicpmv-2.6", "minicpmv-4.5": "minicpmv-2.6",
         "minicpmv-4.6": "minicpmv-4.5"}


def _converted(family: str, work: Path):
    from minicpmv_edge.convert import convert
    from minicpmv_edge.fixtures import make_checkpoint

    ckpt = make_checkpoint(family, work / f"ckpt-{family}", seed=0)
    return convert(ckpt, work / f"out-{family}", outtype="f16")


def image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8")).save(path)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    family = argv[1] if len(argv) == 2 else "minicpmv-4.5"
    if family not in OTHER:
        print(f"make_test_fixtures: unknown family {family!r} (one of {', '.join(OTHER)})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not ((out / "text.gguf").exists() and (out / "mmproj.gguf").exists()):
            r = _converted(family, work)
            shutil.copy(r.mmproj_path, out / "mmproj.gguf.part")
            shutil.copy(r.text_path, out / "text.gguf.part")
            (out / "mmproj.gguf.part").rename(out / "mmproj.gguf")
            (out / "text.gguf.part").rename(out / "text.gguf")
        if not (out / "other-mmproj.gguf").exists():
            shutil.copy(_converted(OTHER[family], work).mmproj_path, out / "other-mmproj.gguf.part")
            (out / "other-mmproj.gguf.part").rename(out / "other-mmproj.gguf")
    if not (out / "image.png").exists():
        image(out / "image.part.png")
        (out / "image.part.png").rename(out / "image.png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
