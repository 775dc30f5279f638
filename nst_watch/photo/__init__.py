"""Photo I/O that photographers can trust (no torch here: the watcher imports it).

Decoding (:func:`load_photo`)
    Allow-listed formats only (JPEG, PNG, TIFF, WebP; HEIC/HEIF through
    pillow-heif; camera RAW through rawpy/LibRaw, developed with the camera
    white balance into 16-bit sRGB), recognised by content, not by name (RAW
    formats that are plain TIFF containers: by their suffix; an ordinary TIFF
    under such a name, which LibRaw says is no RAW, is read as a TIFF, and a
    name that promises another format than the content is noted). Symlinks,
    FIFOs, devices and empty files are refused from ``lstat`` before anything
    is opened. The pixel count is checked from the header before decoding
    (``max_pixels``), Pillow's DecompressionBombWarning is an error, and the
    full decode runs inside error handling so truncated files fail here.
    EXIF orientation is applied exactly once. The result is float32 sRGB.
    Pillow's warnings (corrupt EXIF, malformed MPO...) become Photo.notes
    and log records naming the file, never raw stderr output.

Colour
    Inputs tagged with another profile (Adobe RGB, ProPhoto, Display P3, CMYK
    with a profile) are converted to sRGB with LittleCMS for the network; the
    source profile is kept on the Photo. CMYK without a profile is converted
    with Pillow's simple formula (noted: colours are approximate), never
    rejected. Untagged RGB and grey are taken as sRGB. Outputs embed sRGB by
    default; ``icc="keep"`` converts back to an RGB source profile and embeds
    it (CMYK/grey sources get sRGB, with a note).

Alpha
    The RGB is stylised as is (the network never sees alpha). The source alpha
    is kept on the Photo and re-attached, resized to the output, in formats
    that carry alpha (PNG, WebP, TIFF). JPEG output flattens onto white.

16 bits per channel
    16-bit TIFF (tifffile) and 16-bit PNG are detected and decoded at full
    precision into float32 (``bit_depth=16``). Adobe RGB/ProPhoto-style
    matrix profiles are converted at full precision in numpy; LUT-based and
    CMYK profiles only at 8 bits (logged and noted). Writing a 16-bit source
    as 8-bit is logged and reported in ``SaveResult.notes`` and the sidecar;
    ``bit_depth=16`` writes a 16-bit TIFF. Camera RAW is developed at 16
    bits; 8-bit HEIF at 8, 10- and 12-bit HEIF at full precision (16).

Metadata
    EXIF is carried with Orientation=1, new pixel dimensions, no IFD1
    thumbnail, GPS optionally stripped; XMP is carried (orientation,
    dimensions and, if asked, GPS updated). IPTC is not written (Pillow
    cannot). TIFF outputs are written by tifffile for 8 and 16 bits. A
    camera RAW's EXIF is its own (TIFF-based RAWs, or the embedded preview's)
    with what LibRaw read (exposure, aperture, ISO, focal length, lens,
    capture time) filled in, so it travels like a JPEG's.
    A JPEG holds at most 64 KB each of EXIF and XMP: bulkier source metadata
    is trimmed (huge MakerNote/UserComment, Photoshop DocumentAncestors,
    edit history; camera, lens, exposure and dates stay), or dropped whole,
    with a note. PNG, WebP and TIFF keep it all. ICC profiles of any size
    are kept (split across JPEG APP2 segments).

Masks
    :func:`load_mask` reads a painted mask through the same decoder and
    turns its colours into region weights (:mod:`.mask`: the colour rules);
    :func:`check_regions` refuses a region too small for the deepest style
    layer before the engine loads.

Names and writes
    See :mod:`.naming` (templates, tokens, ``{counter}``; names that are
    not UTF-8 or fill the 255-byte limit) and :mod:`.atomic` (temp file +
    fsync + no-clobber link; ``clean_temp_files``).
"""

from __future__ import annotations

from datetime import datetime

from .atomic import TEMP_PREFIX, clean_temp_files
from .decode import DEFAULT_FORMATS, HEIF_AVAILABLE, RAW_AVAILABLE, Photo, load_photo
from .encode import SaveResult, save_photo
from .mask import Mask, check_regions, load_mask
from .naming import TOKENS, output_path, render_name, validate_template

__all__ = [
    "DEFAULT_FORMATS",
    "HEIF_AVAILABLE",
    "Mask",
    "RAW_AVAILABLE",
    "TEMP_PREFIX",
    "TOKENS",
    "Photo",
    "SaveResult",
    "check_regions",
    "clean_temp_files",
    "load_mask",
    "load_photo",
    "output_path",
    "photo_tokens",
    "render_name",
    "save_photo",
    "validate_template",
]


def photo_tokens(photo: Photo, preset: str, width: int, height: int,
                 now: datetime | None = None, ext: str | None = None) -> dict:
    """Template values for `photo` (everything but {counter}, which output_path picks).

    `ext` is the output extension (default: the source's, lower case); pass it
    when the output format differs from the input's.
    """
    now = now or datetime.now()
    return {
        "stem": photo.path.stem,
        "ext": (ext or photo.path.suffix).lstrip(".").lower(),
        "preset": preset,
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H%M%S"),
        "hash8": photo.sha256[:8],
        "width": str(width),
        "height": str(height),
    }
