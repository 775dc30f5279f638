"""Which names in a hot folder are masks, and which photo each belongs to.

A watch's `mask.names` patterns (config.MaskSettings) such as
``{stem}.mask.png`` name a photo's mask: ``IMG_1.mask.png`` is the mask of
``IMG_1.jpg`` (and of ``IMG_1.cr3`` beside it: a RAW+JPEG pair shares one).
A name that fits a pattern is a mask and never a photo. Names are matched
case-insensitively, as the include patterns are (``IMG_1.MASK.PNG`` is a
mask too); the stem is taken as the name spells it.

Pure string work, like nst_watch.watch.ignore: nothing here touches the disk.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

STEM = "{stem}"


class MaskNames:
    """The mask patterns of one watch, e.g. ["{stem}.mask.png", "{stem}.mask.tif"]."""

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)
        # {stem} -> (.+): the longest stem the name allows ("a.mask.mask.png" is a.mask's mask).
        self._res = [re.compile(re.escape(p).replace(re.escape(STEM), "(.+)"), re.IGNORECASE | re.DOTALL)
                     for p in self.patterns]

    def globs(self) -> list[str]:
        """The patterns as include globs ("*.mask.png"): a mask passes a watch's filter whatever its include."""
        return ["*".join(glob.escape(part) for part in p.split(STEM)) for p in self.patterns]

    def stem_of(self, name: str) -> str | None:
        """The stem of the photo whose mask `name` is (a file name, no folder); None when it is no mask."""
        for pattern in self._res:
            match = pattern.fullmatch(name)
            if match:
                return match[1]
        return None

    def is_mask(self, path: str | Path) -> bool:
        return self.stem_of(Path(path).name) is not None

    def candidates(self, photo: Path) -> list[Path]:
        """Where `photo`'s mask may be, in the order of the patterns (the first that exists is taken)."""
        return [photo.with_name(p.replace(STEM, photo.stem)) for p in self.patterns]

    def renamed(self, mask_name: str, stem: str) -> str:
        """`mask_name` for a photo now called `stem` (its photo took a free name such as "IMG_1 (1).jpg")."""
        for pattern, regex in zip(self.patterns, self._res):
            if regex.fullmatch(mask_name):
                return pattern.replace(STEM, stem)
        return mask_name
