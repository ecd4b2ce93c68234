"""Regenerate the shipped folder-format samples: `python data_samples/make_samples.py`.

ShapeWorld is seeded, so rerunning rewrites the same episodes. Images are stored as JPEG
(quality 95, full chroma) to keep the samples small; masks are lossless 1-bit PNG.
"""
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Runnable from a plain checkout, without installing the package.
sys.path.insert(0, str(HERE.parent))

from prmagic_core.data import shapeworld  # noqa: E402
from prmagic_core.data.folder import save_episode  # noqa: E402

OUT = HERE / "shapeworld"


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    episodes = shapeworld.episodes(3, seed=0) + shapeworld.episodes(2, seed=0, kind="part")
    for episode in episodes:
        save_episode(episode, OUT / episode.name, image_format="jpg")
    # Its ShapeWorld name equals the first 1-shot episode's, so the folder says how many shots.
    two_shot = shapeworld.episodes(1, seed=0, shots=2)[0]
    save_episode(two_shot, OUT / f"{two_shot.name}-2shot", image_format="jpg")
    print(f"wrote {len(episodes) + 1} episodes to {OUT}")


if __name__ == "__main__":
    main()
