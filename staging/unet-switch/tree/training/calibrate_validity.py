"""Calibrate the input-validity check (:mod:`cxr_hub.validity`) for a segmentation model into its validity file.

The file is ``cxr_hub/data/validity.json``.

What it fits, from the measurements the pipeline itself takes (:meth:`cxr_hub.CXRPipeline.check`, the same code path
as every prediction):

* the **mean frontal film** (32 × 32 segmentation input) and the **mean label map** the orientation and label-fit
  features compare against, from the training part's frontal films;
* the **learned check**: a multinomial logistic model (L2, balanced classes) on segmentation-derived features,
  frontal films against lateral films, CT/MR slices, rotations, inversions, crops, photographs, graphics and
  noise; its "frontal" probability limit is set so that 99.7 % of the training part's frontal films pass in a
  5-fold cross-validation grouped by patient (never on the films it was fitted on);
* the **rule limits** (lung share, lung balance, sides, heart position, polarity, orientation, and the image
  checks' structure and blank limits): just outside the range of the training part's frontal films (their 0.1 % /
  99.9 % quantile, moved outward by half the distance to the median; by a quarter for polarity and orientation,
  whose negatives lie far off) so that a rule only fires on inputs
  unlike any frontal film we have.

The corpus (:func:`build_corpus`): the curated frontal films (``--data``), the lateral films and CT slices of
``--negatives`` (each also flipped, cropped and re-exposed), and what it makes or finds installed: rotated (90°,
180°, 270°), inverted and cropped films (halves, quadrants, windows, and full-width bands that cut both lungs, as
figures of papers show the upper chest); photographs (gradio's and matplotlib's sample images, in gray), drawings,
charts, icons, screenshots and text pages (the installed documentation's images, matplotlib, PIL); CT and MR slices
from pydicom's test files; noise, blank, too small and strip-shaped images. Everything is split **by patient** (films
and their derived images by the film's patient, other images by their source file) into a training part (4/5) and
a held-out part (1/5) that no fit sees: ``benchmarks/validity_targets.py`` reports both.

The calibration is stored under the segmentation model's weight fingerprint (:func:`cxr_hub.validity.
model_fingerprint`), next to the other models' calibrations in the same file; the image thresholds are shared.
Measurements are cached per model in ``--cache`` (one file per image, resumable), so a re-fit costs seconds.

Usage:
    python -m training.calibrate_validity [--segmentation models/cxr-lung-seg-unet] [--dry-run]
    python -m training.calibrate_validity --segmentation models/cxr-lung-seg-unet
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cxr"
DEFAULT_NEGATIVES = REPO_ROOT.parent / "shared" / "data" / "negatives"
DEFAULT_CACHE = REPO_ROOT / "data_cache" / "validity"
#: Bumped when what is cached per image changes (older cache files are then measured again).
CACHE_VERSION = 1

#: Report kind → the learned model's class (None: refused by an image check, not used to fit the model).
LEARNED_CLASS: dict[str, str | None] = {
    "frontal": "frontal",
    "frontal_variant": "frontal",
    "lateral": "lateral",
    "ct_axial": "ct",
    "ct_coronal": "ct",
    "ct_mr_dicom": "ct",
    "rotated_90": "rotated",
    "rotated_180": "rotated",
    "rotated_270": "rotated",
    "inverted": "inverted",
    "crop": "crop",
    "crop_band": "crop",
    "photo": "photo",
    "graphic": "graphic",
    "text": "graphic",
    "noise": "noise",
    "colour": None,
    "blank": None,
    "small": None,
    "strip": None,
}
#: Kinds that must be accepted (everything else must be refused).
FRONTAL_KINDS = ("frontal", "frontal_variant")

#: Features of the learned model (names of :func:`cxr_hub.validity.decision_features`).
LEARNED_FEATURES = (
    # continuous in the segmentation's probabilities (soft), so a rounding-level change of the segmentation (bf16 vs
    # fp32, another CPU) moves the decision by as little: no component counts, no largest-component boxes
    "s_rl",
    "s_ll",
    "s_h",
    "s_rl_x",
    "s_rl_y",
    "s_ll_x",
    "s_ll_y",
    "s_h_x",
    "s_h_y",
    "s_rl_y05",
    "s_rl_y95",
    "s_ll_y05",
    "s_ll_y95",
    "s_rl_x05",
    "s_ll_x95",
    "s_h_x05",
    "s_h_x95",
    "s_h_y05",
    "s_h_y95",
    "s_balance",
    "s_sides",
    "s_heart_between",
    "s_heart_low",
    "lung_conf",
    "entropy",
    "uncertain",
    "lung_mean",
    "lung_std",
    "symmetry",
    "smoothness",
    "edges",
    "border",
    "top_bottom",
    "image_corr_0",
    "image_corr_90",
    "image_corr_180",
    "image_corr_270",
    "label_fit_0",
    "label_fit_90",
    "label_fit_180",
    "label_fit_270",
    "orientation",
    "label_orientation",
    "structure",
    "blank",
    "aspect",
    "dark_share",
    "bright_share",
    "histogram_entropy",
    "flat_share",
)
#: Share of the training part's frontal films the learned limit lets through in cross-validation.
LEARNED_ACCEPT = 0.997
#: Quantile of the training frontal films a rule limit starts from, and how far (as a share of the distance to the
#: median) it is then moved outward.
RULE_QUANTILE = 0.001
RULE_MARGIN = 0.5
#: Polarity and orientation separate their negatives by far (inverted films correlate negatively with the mean film,
#: rotated ones better when turned), so their limits stay closer to the films.
SHARP_RULE_MARGIN = 0.25


# ------------------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class Item:
    """One calibration or test image.

    Attributes:
        id: unique, stable name (cache key).
        kind: report kind (a key of :data:`LEARNED_CLASS`).
        group: what the split is made by: the patient for films and their derived images, the source file else.
        augmented: a variant (flip, crop, exposure) of an original negative, reported apart from the originals.
        make: returns the input as a user would give it (a path, an RGB or gray array).
    """

    id: str
    kind: str
    group: str
    augmented: bool
    make: Callable[[], Any]

    @property
    def split(self) -> str:
        """ "test" for 1 group in 5 (by a hash of the group: stable and independent of the corpus), else "train"."""
        return "test" if int(hashlib.sha256(self.group.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _rng(text: str) -> np.random.Generator:
    return np.random.default_rng(_hash(text))


def _gray(path: Path) -> np.ndarray:
    from cxr_hub import load_image

    return load_image(path)


def _to8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _crop(a: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    h, w = a.shape[:2]
    return np.ascontiguousarray(a[int(y0 * h) : max(int(y1 * h), int(y0 * h) + 1), int(x0 * w) : int(x1 * w)])


def _resize(a: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.asarray(a, np.float32), size, interpolation=cv2.INTER_AREA)


def _variant(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible re-take of the same kind of image: flip, crop 80-97 %, exposure and noise."""
    out = np.asarray(a, np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    fy, fx = rng.uniform(0.8, 0.97, 2)
    y0, x0 = rng.uniform(0, 1 - fy), rng.uniform(0, 1 - fx)
    out = _crop(out, y0, y0 + fy, x0, x0 + fx)
    lo, hi = float(out.min()), float(out.max())
    x = (out - lo) / max(hi - lo, 1e-6)
    x = np.power(np.clip(x, 0, 1), float(np.exp(rng.uniform(-0.4, 0.4))))
    x = x + rng.normal(0, rng.uniform(0, 0.02), x.shape)
    return (np.clip(x, 0, 1) * 255).astype(np.float32)


def _frontal_variant(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A frontal film as another site might send it (still a frontal film): tighter framing, a black border, a small
    tilt, another exposure, a smaller size, or a burnt-in text label."""
    import cv2

    out = np.asarray(a, np.float32)
    lo, hi = float(out.min()), float(out.max())
    x = (out - lo) / max(hi - lo, 1e-6)
    choice = int(rng.integers(6))
    if choice == 0:  # tighter framing
        f = rng.uniform(0.8, 0.95)
        y0, x0 = rng.uniform(0, 1 - f, 2)
        x = _crop(x, y0, y0 + f, x0, x0 + f)
    elif choice == 1:  # black border
        h, w = x.shape
        p = int(rng.uniform(0.03, 0.12) * max(h, w))
        x = np.pad(x, ((p, p), (p // 2, p // 2)), constant_values=0.0)
    elif choice == 2:  # tilt
        h, w = x.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-8, 8)), 1.0)
        x = cv2.warpAffine(x, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    elif choice == 3:  # exposure
        x = np.power(np.clip(x, 0, 1), float(np.exp(rng.uniform(-0.6, 0.6))))
    elif choice == 4:  # smaller, still above the size check's floor
        x = _resize(x, float(rng.uniform(128, 400)) / min(x.shape))
    else:  # a burnt-in label
        img = (np.clip(x, 0, 1) * 255).astype(np.uint8)
        cv2.putText(img, "R  PORTABLE", (int(0.05 * img.shape[1]), int(0.08 * img.shape[0])), 0, 1.5, 255, 3)
        x = img.astype(np.float32) / 255.0
    return (np.clip(x, 0, 1) * 255).astype(np.float32)


def _marked_rgb(a: np.ndarray) -> np.ndarray:
    """A frontal film saved as RGB with a small red annotation box: must still pass the colour check."""
    g = _to8(a)
    rgb = np.stack([g] * 3, axis=-1)
    h, w = g.shape
    rgb[int(0.1 * h) : int(0.14 * h), int(0.6 * w) : int(0.75 * w)] = (230, 20, 20)
    return rgb


def _film_crop(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part of a film with at most one lung in it: a half (left or right), a quadrant, or a small window."""
    choice = int(rng.integers(3))
    if choice == 0:
        return _crop(a, 0.0, 1.0, 0.0, 0.5) if rng.random() < 0.5 else _crop(a, 0.0, 1.0, 0.5, 1.0)
    if choice == 1:
        y0, x0 = (0.0, 0.5)[int(rng.integers(2))], (0.0, 0.5)[int(rng.integers(2))]
        return _crop(a, y0, y0 + 0.5, x0, x0 + 0.5)
    f = rng.uniform(0.3, 0.45)
    y0, x0 = rng.uniform(0.1, 0.9 - f, 2)
    return _crop(a, y0, y0 + f, x0, x0 + f)


def _film_band(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A full-width band of a film that cuts both lungs: its upper part (the bases cut off by the lower edge, as in
    figures of papers that show the upper chest) or its lower part (the apices cut off by the upper edge)."""
    # cut well inside the lungs: a tightly framed whole film (bases or apices at its edge) is still a whole film
    if rng.random() < 0.6:
        return _crop(a, 0.0, float(rng.uniform(0.4, 0.55)), 0.0, 1.0)
    return _crop(a, float(rng.uniform(0.3, 0.45)), 1.0, 0.0, 1.0)


def _photo_sources() -> list[Path]:
    """Photographs shipped with installed packages (gradio's media and test images, matplotlib's sample data)."""
    found: list[Path] = []
    try:
        import gradio

        root = Path(gradio.__file__).parent
        found += sorted((root / "media_assets" / "images").glob("*.jp*g"))
        found += [p for p in sorted((root / "test_data").glob("cheetah2.jpg"))]
    except ImportError:
        pass
    import matplotlib

    found += sorted((Path(matplotlib.get_data_path()) / "sample_data").glob("grace_hopper.jpg"))
    return found


def _graphic_sources() -> list[Path]:
    """Drawings, icons, diagrams, charts and screenshots found installed (package baselines, system docs)."""
    import matplotlib

    candidates: list[Path] = []
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    candidates += [sample / "logo2.png", sample / "Minduka_Present_Blue_Pack.png"]
    try:
        import networkx

        candidates += sorted((Path(networkx.__file__).parent / "drawing" / "tests" / "baseline").glob("*.png"))
    except ImportError:
        pass
    candidates += sorted(Path("/usr/share/doc/nodejs/contributing/doc_img").glob("*.png"))
    candidates += sorted(Path("/usr/share/doc/valgrind/html/images").glob("*tree*.png"))
    candidates += [
        Path("/usr/share/doc/python3-pip/html/topics/deps.png"),
        Path("/usr/share/info/gnupg-module-overview.png"),
    ]
    icons = sorted(Path("/usr/share/icons/Adwaita/512x512").glob("*/*.png"))
    candidates += [p for p in icons if _hash(p.name) % 3 == 0][:30]
    return [p for p in candidates if p.is_file() and p.stat().st_size > 8000]


def _pil_rgb_or_gray(path: Path, gray: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparent icons as shown on a white page
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("L" if gray else "RGB"))


def _text_page(seed: int) -> np.ndarray:
    """A screenshot-like page of text (PIL with matplotlib's DejaVu font)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(500, 1400)), int(rng.integers(400, 1200))
    dark = rng.random() < 0.3
    img = Image.new("L", (w, h), 30 if dark else 250)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), int(rng.integers(12, 30)))
    words = [
        "chest",
        "radiograph",
        "patient",
        "lung",
        "heart",
        "report",
        "findings",
        "impression",
        "normal",
        "opacity",
        "left",
        "right",
        "the",
        "of",
        "and",
    ]
    y = int(rng.integers(5, 40))
    while y < h - 20:
        line = " ".join(rng.choice(words, int(rng.integers(3, 14))))
        draw.text((int(rng.integers(5, 40)), y), line, fill=220 if dark else 20, font=font)
        y += int(font.size * rng.uniform(1.3, 2.2))
    return np.asarray(img)


def _chart(seed: int) -> np.ndarray:
    """A matplotlib chart rendered to a gray array (line, bar, scatter or histogram)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(rng.uniform(4, 9), rng.uniform(3, 7)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kind = seed % 4
    x = np.arange(30)
    if kind == 0:
        ax.plot(x, np.cumsum(rng.normal(size=30)), "k-")
    elif kind == 1:
        ax.bar(x[:8], rng.uniform(1, 5, 8), color="gray")
    elif kind == 2:
        ax.scatter(rng.normal(size=80), rng.normal(size=80), c="k", s=8)
    else:
        ax.hist(rng.normal(size=500), bins=25, color="0.4")
    ax.set_title("figure", fontsize=10)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return (0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]).astype(np.uint8)


def _drawing(seed: int) -> np.ndarray:
    """Random outlined and filled shapes on a plain background (a line drawing / clip art)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(300, 1000)), int(rng.integers(300, 1000))
    img = Image.new("L", (w, h), int(rng.choice([255, 240, 0, 128])))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 25))):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        box = [int(x0), int(y0), int(x0 + rng.integers(10, w // 2)), int(y0 + rng.integers(10, h // 2))]
        fill = int(rng.integers(0, 256)) if rng.random() < 0.6 else None
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(box, outline=int(rng.integers(0, 256)), fill=fill, width=int(rng.integers(1, 6)))
        elif shape == 1:
            draw.rectangle(box, outline=int(rng.integers(0, 256)), fill=fill, width=int(rng.integers(1, 6)))
        else:
            draw.line(box, fill=int(rng.integers(0, 256)), width=int(rng.integers(1, 8)))
    return np.asarray(img)


def _noise(seed: int) -> np.ndarray:
    """White, salt-and-pepper, smoothed or 1/f noise at a random size."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(200, 1024)), int(rng.integers(200, 1024))
    kind = seed % 5
    if kind == 0:
        return rng.uniform(0, 255, (h, w)).astype(np.float32)
    if kind == 1:
        return np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.float32)
    if kind == 2:
        return (rng.random((h, w)) < 0.5).astype(np.float32) * 255
    if kind == 3:
        sigma = float(rng.choice([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]))
        a = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), sigma)
        return _to8(a).astype(np.float32)
    f = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    spectrum = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / np.maximum(f, 1e-6) ** 0.5
    return _to8(np.real(np.fft.ifft2(spectrum))).astype(np.float32)


def _blank(seed: int) -> np.ndarray:
    """A nearly flat image: one gray level with faint noise, or a page with a small mark."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(200, 1024)), int(rng.integers(200, 1024))
    a = np.full((h, w), float(rng.integers(0, 256)), np.float32)
    if seed % 2 == 0:
        a += rng.normal(0, rng.uniform(0.3, 2.0), (h, w))
    else:
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 40))
        a[y : y + 15, x : x + 35] = 255 - a[0, 0]
    return np.clip(a, 0, 255)


def _dicom_slices() -> list[Path]:
    """Cross-sectional CT and MR slices among pydicom's test files (the ones this install decodes)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        return []
    names = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "examples_overlay.dcm", "MR_small.dcm")
    out = []
    for name in names:
        try:
            path = get_testdata_file(name)
        except Exception:  # pydicom may try a download for files it does not ship
            path = None
        if path:
            out.append(Path(path))
    return out


def _matplotlib_mr() -> np.ndarray | None:
    """matplotlib's sample MR slice (s1045.ima: 256 x 256, 16 bit)."""
    import gzip

    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    if not path.is_file():
        return None
    data = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint16)
    return data[-256 * 256 :].reshape(256, 256).astype(np.float32)


def build_corpus(data: Path, negatives: Path | None) -> list[Item]:
    """Every calibration/test image, deterministic (see the module docstring for what is in it)."""
    from cxr_hub.manifest import read_manifest

    items: list[Item] = []
    rows = read_manifest(data / "manifest.csv")
    for r in rows:
        items.append(Item(f"frontal/{r.id}", "frontal", r.patient_id, False, lambda p=Path(r.image): p))
    # derived images: each from a distinct film, chosen by a hash of its id (mixes the sources)
    films = sorted(rows, key=lambda r: _hash(r.id))
    plan = (
        [("rotated_90", 1)] * 100
        + [("rotated_180", 2)] * 100
        + [("rotated_270", 3)] * 100
        + [("inverted", 0)] * 150
        + [("crop", 0)] * 150
        + [("frontal_variant", 0)] * 170
        + [("small", 0)] * 20
        + [("strip", 0)] * 10
        # appended last: the films of the kinds above (and their cached measurements) stay what they were
        + [("crop_band", 0)] * 100
    )
    for r, (kind, k) in zip(films, plan, strict=False):
        path, rid = Path(r.image), f"{kind}/{r.id}"

        def make(path: Path = path, kind: str = kind, k: int = k, rid: str = rid) -> Any:
            a = _gray(path)
            rng = _rng(rid)
            if kind.startswith("rotated"):
                return np.ascontiguousarray(np.rot90(a, k))
            if kind == "inverted":
                return a.max() + a.min() - a
            if kind == "crop":
                return _film_crop(a, rng)
            if kind == "crop_band":
                return _film_band(a, rng)
            if kind == "frontal_variant":
                return _marked_rgb(a) if _hash(rid) % 8 == 0 else _frontal_variant(a, rng)
            if kind == "small":
                return _resize(a, float(rng.uniform(40, 90)) / min(a.shape))
            return np.concatenate([a, a[:, ::-1], a], axis=1)  # a strip of three films

        items.append(Item(rid, kind, r.patient_id, False, make))
    if negatives is not None and (negatives / "manifest.csv").is_file():
        kinds = {"lateral_cxr": "lateral", "ct_axial": "ct_axial", "ct_coronal": "ct_coronal"}
        with (negatives / "manifest.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                kind, path = kinds.get(r["kind"]), negatives / r["image"]
                if kind is None:
                    continue
                items.append(Item(f"{kind}/{r['id']}", kind, f"neg:{r['patient_id']}", False, lambda p=path: p))
                for v in range(3):
                    rid = f"{kind}/{r['id']}/v{v}"
                    items.append(
                        Item(
                            rid, kind, f"neg:{r['patient_id']}", True, lambda p=path, i=rid: _variant(_gray(p), _rng(i))
                        )
                    )
    for path in _photo_sources():
        group = f"photo:{path.name}"
        items.append(Item(f"colour/{path.name}", "colour", group, False, lambda p=path: _pil_rgb_or_gray(p, False)))
        items.append(Item(f"photo/{path.name}", "photo", group, False, lambda p=path: _pil_rgb_or_gray(p, True)))
        for v in range(10):
            rid = f"photo/{path.name}/v{v}"
            items.append(
                Item(rid, "photo", group, True, lambda p=path, i=rid: _variant(_pil_rgb_or_gray(p, True), _rng(i)))
            )
    for path in _graphic_sources():
        group = f"graphic:{path.name}"
        gray = _pil_rgb_or_gray(path, True)
        if min(gray.shape) < 64:
            continue
        items.append(Item(f"graphic/{path.name}", "graphic", group, False, lambda p=path: _pil_rgb_or_gray(p, True)))
        rid = f"graphic/{path.name}/v0"
        items.append(
            Item(rid, "graphic", group, True, lambda p=path, i=rid: _variant(_pil_rgb_or_gray(p, True), _rng(i)))
        )
        if colour_share_of(path) > 0.05:
            items.append(Item(f"colour/{path.name}", "colour", group, False, lambda p=path: _pil_rgb_or_gray(p, False)))
    for i in range(40):
        items.append(Item(f"text/{i}", "text", f"text:{i}", False, lambda s=i: _text_page(s)))
    for i in range(24):
        items.append(Item(f"chart/{i}", "graphic", f"chart:{i}", False, lambda s=i: _chart(s)))
    for i in range(30):
        items.append(Item(f"drawing/{i}", "graphic", f"drawing:{i}", False, lambda s=i: _drawing(s)))
    for i in range(60):
        items.append(Item(f"noise/{i}", "noise", f"noise:{i}", False, lambda s=i: _noise(s)))
    for i in range(16):
        items.append(Item(f"blank/{i}", "blank", f"blank:{i}", False, lambda s=i: _blank(s)))
    for path in _dicom_slices():
        group = f"dicom:{path.name}"
        items.append(Item(f"ct_mr_dicom/{path.name}", "ct_mr_dicom", group, False, lambda p=path: p))
        for v in range(5):
            rid = f"ct_mr_dicom/{path.name}/v{v}"
            items.append(Item(rid, "ct_mr_dicom", group, True, lambda p=path, i=rid: _variant(_gray(p), _rng(i))))
    mr = _matplotlib_mr()
    if mr is not None:
        items.append(Item("ct_mr_dicom/s1045", "ct_mr_dicom", "mpl:s1045", False, lambda: _matplotlib_mr()))
        for v in range(5):
            rid = f"ct_mr_dicom/s1045/v{v}"
            items.append(Item(rid, "ct_mr_dicom", "mpl:s1045", True, lambda i=rid: _variant(_matplotlib_mr(), _rng(i))))
    ids = [it.id for it in items]
    dupes = [k for k, n in Counter(ids).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate corpus ids: {dupes[:5]}")
    return items


def colour_share_of(path: Path) -> float:
    """The colour check's measure of a file (0 when unreadable)."""
    from cxr_hub.validity import source_colour_share

    share = source_colour_share(path)
    return 0.0 if share is None else share


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Record:
    """What the pipeline measured on one item (``error``: load_image refused it, so every check refuses it too)."""

    error: str | None
    image: dict[str, float]
    seg: dict[str, float]
    gray: np.ndarray | None
    probs: np.ndarray | None
    ms: float


def _cache_file(cache: Path, item_id: str) -> Path:
    return cache / f"{hashlib.sha256(item_id.encode()).hexdigest()[:20]}.npz"


def measure_items(pipe: Any, items: Sequence[Item], cache: Path, progress: bool = True) -> dict[str, Record]:
    """:meth:`cxr_hub.CXRPipeline.check` of every item, cached per item (``cache``: this model's folder)."""
    from tqdm import tqdm

    from cxr_hub import CXRInputError

    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Record] = {}
    for item in tqdm(items, unit="image", file=sys.stderr, disable=not progress):
        path = _cache_file(cache, item.id)
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") == CACHE_VERSION and meta.get("id") == item.id:
                    gray = z["gray"].astype(np.float32) if "gray" in z else None
                    probs = z["probs"].astype(np.float32) if "probs" in z else None
                    arrays = {k: z[k] for k in z.files}
                    if meta["error"] is None and set(IMAGE_KEYS) - set(meta["image"]):
                        # image measurements added since: cheap to take again (no segmentation)
                        meta["image"] = _image_measurements(pipe, item.make())
                        arrays["meta"] = np.array(json.dumps(meta))
                        _save(path, arrays)
                    out[item.id] = Record(meta["error"], meta["image"], meta["seg"], gray, probs, meta["ms"])
                    continue
        try:
            report = pipe.check(item.make())
            m = report.measurements
            error, image = None, {k: report.features[k] for k in IMAGE_KEYS}
            seg = dict(m.scalars) if m is not None else {}
            gray, probs = (m.gray, m.probs) if m is not None else (None, None)
            ms = report.ms
        except CXRInputError as exc:
            error, image, seg, gray, probs, ms = str(exc)[:300], {}, {}, None, None, 0.0
        meta = {"version": CACHE_VERSION, "id": item.id, "error": error, "image": image, "seg": seg, "ms": ms}
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
        if gray is not None and probs is not None:
            arrays["gray"], arrays["probs"] = gray.astype(np.float32), probs.astype(np.float32)
        _save(path, arrays)
        out[item.id] = Record(error, image, seg, gray, probs, ms)
    return out


def _save(path: Path, arrays: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _image_measurements(pipe: Any, source: Any) -> dict[str, float]:
    """:func:`cxr_hub.validity.measure_image` as the pipeline takes it (the loaded image, the source's colour)."""
    from cxr_hub import load_image
    from cxr_hub.validity import measure_image, source_colour_share

    chroma = pipe.validator.image_thresholds.colour_chroma
    return measure_image(load_image(source), source_colour_share(source, chroma))


IMAGE_KEYS = (
    "height",
    "width",
    "min_side",
    "aspect",
    "colour",
    "blank",
    "structure",
    "dark_share",
    "bright_share",
    "histogram_entropy",
    "flat_share",
)


def measurements_of(record: Record) -> Any:
    """The record's :class:`cxr_hub.validity.Measurements`, re-derived from its cached 128 × 128 arrays (the same
    function the pipeline runs), or None for an image that was refused before the segmentation."""
    from cxr_hub.validity import measure_segmentation

    if record.gray is None or record.probs is None:
        return None
    m = measure_segmentation(255.0 * record.gray, record.probs)
    m.scalars.update(record.image)
    return m


# ------------------------------------------------------------------------------------------------ fitting


def _quantile_limit(values: np.ndarray, side: str, margin: float = RULE_MARGIN) -> float:
    """A rule limit just outside the frontal films' range (see the module docstring)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    med = float(np.median(v))
    if side == "low":
        q = float(np.quantile(v, RULE_QUANTILE))
        return q - margin * (med - q)
    q = float(np.quantile(v, 1 - RULE_QUANTILE))
    return q + margin * (q - med)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_classes: int, weights: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (softmax cross-entropy, sample weights, L2 on the weights), L-BFGS."""
    from scipy.optimize import minimize

    d = x.shape[1]
    onehot = np.eye(n_classes)[y]
    wsum = weights.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d :]
        logits = x @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        value = -(weights * (onehot * logp).sum(axis=1)).sum() / wsum + 0.5 * l2 * (w * w).sum()
        g = (np.exp(logp) - onehot) * weights[:, None] / wsum
        grad_w = g.T @ x + l2 * w
        return float(value), np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    res = minimize(loss, np.zeros(n_classes * d + n_classes), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x[: n_classes * d].reshape(n_classes, d), res.x[n_classes * d :]


def _class_weights(kinds: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Balanced: every learned class weighs the same, and within a class every report kind weighs the same."""
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    for k in kinds:
        by_class[LEARNED_CLASS[k]][k] += 1  # type: ignore[index]
    w = np.empty(len(kinds))
    for i, k in enumerate(kinds):
        c = LEARNED_CLASS[k]
        w[i] = 1.0 / (len(by_class[c]) * by_class[c][k])  # type: ignore[index]
    return w * len(kinds) / w.sum()


def fit_calibration(
    items: Sequence[Item], records: Mapping[str, Record], segmentation: dict[str, Any], l2: float = 0.003
) -> tuple[Any, Any, dict[str, Any]]:
    """Fits the image thresholds and the model's :class:`cxr_hub.validity.Calibration` on the training part.

    Returns:
        ``(image_thresholds, calibration, info)``.
    """
    from cxr_hub.validity import (
        AnatomyThresholds,
        Calibration,
        ImageThresholds,
        InputValidator,
        LearnedModel,
        decision_features,
    )

    train = [it for it in items if it.split == "train" and records[it.id].error is None]
    meas = {it.id: measurements_of(records[it.id]) for it in train}
    frontal = [it for it in train if it.kind == "frontal" and meas[it.id] is not None]
    thumbs = np.stack([meas[it.id].thumb for it in frontal])
    labels = np.stack([meas[it.id].labels for it in frontal])
    atlas_image = thumbs.mean(axis=0)
    atlas_image = (atlas_image - atlas_image.mean()) / atlas_image.std()
    placeholder = AnatomyThresholds(*([0.0] * 10))
    draft = Calibration(segmentation, placeholder, atlas_image, labels.mean(axis=0))
    feats = {it.id: decision_features(meas[it.id], draft) for it in train if meas[it.id] is not None}

    def frontal_values(name: str) -> np.ndarray:
        return np.array([feats[it.id][name] for it in frontal], np.float64)

    structure = np.array([records[it.id].image["structure"] for it in train if it.kind in FRONTAL_KINDS])
    blank = np.array([records[it.id].image["blank"] for it in train if it.kind in FRONTAL_KINDS])
    # The image checks only catch degenerate inputs (the learned check does the rest), so their limits sit half-way
    # between the films' extreme and the degenerate case rather than just outside the films, whose range is narrow
    # (structure 0.85-1.0, blank at most 0.51 here) and would refuse a film of another source for nothing.
    image_thresholds = ImageThresholds(
        colour_chroma=40.0,  # JPEG noise on a gray film stays within a few levels; skin, sky and clothes lie far above
        colour_share_max=0.05,  # a film with a coloured marker or ruler stays well below
        min_side=96,  # 1.5 x load_image's floor: below it no anatomy is visible, whatever the content
        aspect_max=3.0,  # the widest curated film (an upper-chest crop) is 2.23 : 1
        blank_share_max=round(max(0.9, _quantile_limit(blank, "high")), 4),  # a blank page: 0.99
        structure_min=round(min(0.5, _quantile_limit(structure, "low")), 4),  # white noise: about 0.12
    )
    lung_share = frontal_values("lung_share")
    thresholds = {
        "lung_share_min": _quantile_limit(lung_share, "low"),
        "lung_share_max": _quantile_limit(lung_share, "high"),
        "lung_balance_min": _quantile_limit(frontal_values("s_balance"), "low"),
        "lung_sides_min": _quantile_limit(frontal_values("s_sides"), "low"),
        "heart_between_min": _quantile_limit(frontal_values("s_heart_between"), "low"),
        "heart_between_max": _quantile_limit(frontal_values("s_heart_between"), "high"),
        "heart_low_min": _quantile_limit(frontal_values("s_heart_low"), "low"),
        "polarity_min": _quantile_limit(frontal_values("polarity"), "low", SHARP_RULE_MARGIN),
        "orientation_max": _quantile_limit(frontal_values("orientation"), "high", SHARP_RULE_MARGIN),
    }
    thresholds["lung_share_min"] = max(0.0, thresholds["lung_share_min"])
    # the margin can reach below 0 (one lung alone would pass): then half the smallest balance of a training film
    balance = frontal_values("s_balance")
    thresholds["lung_balance_min"] = max(thresholds["lung_balance_min"], 0.5 * float(np.nanmin(balance)))
    # the learned model: fitted on items the image checks let through (the others are refused before it runs)
    learn = [it for it in train if LEARNED_CLASS[it.kind] is not None and it.id in feats]
    learn = [it for it in learn if _passes_image_checks(records[it.id].image, image_thresholds)]
    classes = tuple(c for c in dict.fromkeys(LEARNED_CLASS[it.kind] for it in learn) if c is not None)
    classes = ("frontal", *sorted(c for c in classes if c != "frontal"))
    x_raw = np.array([[feats[it.id].get(f, math.nan) for f in LEARNED_FEATURES] for it in learn], np.float64)
    y = np.array([classes.index(LEARNED_CLASS[it.kind]) for it in learn])
    kinds = [it.kind for it in learn]
    weights = _class_weights(kinds, classes)
    groups = np.array([it.group for it in learn])
    mean, scale = np.nanmean(x_raw, axis=0), np.nanstd(x_raw, axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)

    def standardise(a: np.ndarray) -> np.ndarray:
        z = (a - mean) / scale
        return np.where(np.isfinite(z), np.clip(z, -8, 8), 0.0)

    x = standardise(x_raw)
    # 5-fold cross-validation grouped by patient/source: the frontal limit comes from films the fold never saw
    fold = np.array([_hash("fold:" + g) % 5 for g in groups])
    p_frontal_cv = np.empty(len(learn))
    for k in range(5):
        tr, te = fold != k, fold == k
        w, b = fit_logistic(x[tr], y[tr], len(classes), weights[tr], l2)
        logits = x[te] @ w.T + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p_frontal_cv[te] = (p / p.sum(axis=1, keepdims=True))[:, 0]
    original_frontal = np.array([it.kind == "frontal" for it in learn])
    limit = float(np.quantile(p_frontal_cv[original_frontal], 1 - LEARNED_ACCEPT))
    thresholds["frontal_probability_min"] = limit
    cv_refused = {
        kind: float(np.mean(p_frontal_cv[[i for i, k in enumerate(kinds) if k == kind]] < limit))
        for kind in sorted(set(kinds))
    }
    w, b = fit_logistic(x, y, len(classes), weights, l2)
    model = LearnedModel(LEARNED_FEATURES, classes, mean, scale, w, b)
    anatomy = AnatomyThresholds(**{k: round(float(v), 6) for k, v in thresholds.items()})
    # the whole decision in cross-validation: the rules (fitted on the whole training part: they are set outside the
    # frontal films' range) or the learned model of the fold that did not see the image
    rules = InputValidator(image_thresholds, Calibration(segmentation, anatomy, atlas_image, labels.mean(axis=0)))
    refused_by_rule = [
        not rules.decide_segmentation(rules.decide_image(records[it.id].image), meas[it.id]).accepted for it in learn
    ]
    cv_full: dict[str, list[bool]] = defaultdict(list)
    for it, rule, p in zip(learn, refused_by_rule, p_frontal_cv, strict=True):
        cv_full[it.kind + (" (variants)" if it.augmented else "")].append(rule or p < limit)
    info = {
        "date": datetime.date.today().isoformat(),
        "fitted_on": "training part (4/5 of the groups, by patient or source file); the held-out fifth is unseen",
        "train_counts": dict(Counter(it.kind for it in train)),
        "learned_counts": dict(Counter(kinds)),
        "l2": l2,
        "cv_frontal_accepted": float(np.mean(p_frontal_cv[original_frontal] >= limit)),
        "cv_refused_by_learned_model": cv_refused,
        "cv_refused": {kind: round(float(np.mean(v)), 4) for kind, v in sorted(cv_full.items())},
        "cv_counts": {kind: len(v) for kind, v in sorted(cv_full.items())},
        "rule_limits": f"training frontal films' {RULE_QUANTILE:g} / {1 - RULE_QUANTILE:g} quantile moved outward "
        f"by {RULE_MARGIN:g} x its distance to the median ({SHARP_RULE_MARGIN:g} x for polarity and orientation)",
        "learned_limit": f"{LEARNED_ACCEPT:.1%} of the training frontal films pass in 5-fold grouped cross-validation",
    }
    calibration = Calibration(segmentation, anatomy, atlas_image, labels.mean(axis=0), model, info)
    return image_thresholds, calibration, info


def _passes_image_checks(image: Mapping[str, float], t: Any) -> bool:
    colour = image.get("colour", math.nan)
    return (
        (not math.isfinite(colour) or colour <= t.colour_share_max)
        and image["min_side"] >= t.min_side
        and image["aspect"] <= t.aspect_max
        and image["blank"] <= t.blank_share_max
        and image["structure"] >= t.structure_min
    )


# ------------------------------------------------------------------------------------------------ file


def write_validity_file(path: Path, image_thresholds: Any, calibration: Any) -> None:
    """Writes ``calibration`` into the validity file, replacing the one for the same model and keeping the others."""
    from dataclasses import asdict

    from cxr_hub.validity import FILE_FORMAT

    existing: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("format") == FILE_FORMAT:
            # a re-calibration replaces that model's entry, and so does a retrained model of the same folder name (the
            # old weights' calibration would otherwise stay behind, matching no shipped model)
            existing = [
                c
                for c in old.get("calibrations", [])
                if c["segmentation"].get("fingerprint") != calibration.segmentation["fingerprint"]
                and c["segmentation"].get("name") != calibration.segmentation.get("name")
            ]
    payload = {
        "format": FILE_FORMAT,
        "description": (
            "cxr-hub input-validity check (cxr_hub/validity.py): image thresholds shared by every segmentation "
            "model, and one calibration per segmentation model (found by the fingerprint of its weights), written "
            "by python -m training.calibrate_validity. Every field is documented in cxr_hub.validity "
            "(ImageThresholds, AnatomyThresholds, LearnedModel, Calibration)."
        ),
        "image": asdict(image_thresholds),
        "calibrations": [*existing, calibration.to_dict()],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def segmentation_identity(folder: str | Path, model: Any, pipe: Any) -> dict[str, Any]:
    """What a calibration records about its segmentation model."""
    from cxr_hub.validity import model_fingerprint

    return {
        "name": Path(str(folder)).name,
        "fingerprint": model_fingerprint(model),
        "architecture": type(model).__name__,
        "arithmetic": pipe.settings()["segmentation_arithmetic"],
    }


def load_pipeline(segmentation: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """A segmentation-only pipeline that refuses nothing (every score is measured) and its model."""
    from cxr_hub import CXRPipeline
    from cxr_hub.loading import load_model

    model = load_model(segmentation)
    return CXRPipeline(model, None, device=device, check_input=False), model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from cxr_hub.presets import default_folder
    from cxr_hub.validity import VALIDITY_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segmentation", default=str(default_folder("segmentation")), help="segmentation model folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="curated frontal films (manifest.csv)")
    parser.add_argument("--negatives", default=str(DEFAULT_NEGATIVES), help="lateral films and CT slices")
    parser.add_argument("--out", default=str(VALIDITY_FILE), help="validity file to write (default: %(default)s)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="measurement cache folder")
    parser.add_argument("--l2", type=float, default=0.003, help="L2 weight of the logistic model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dry-run", action="store_true", help="fit and print, do not write the file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measures the corpus (cached), fits, and writes the calibration."""
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, model = load_pipeline(args.segmentation)
    identity = segmentation_identity(args.segmentation, model, pipe)
    negatives = Path(args.negatives) if Path(args.negatives).is_dir() else None
    items = build_corpus(Path(args.data), negatives)
    print(f"corpus: {len(items)} images, {dict(Counter(it.kind for it in items))}", file=sys.stderr)
    records = measure_items(pipe, items, Path(args.cache) / identity["fingerprint"])
    image_thresholds, calibration, info = fit_calibration(items, records, identity, l2=args.l2)
    print(json.dumps({"image": image_thresholds.__dict__, "thresholds": calibration.thresholds.__dict__}, indent=1))
    print(json.dumps({k: info[k] for k in ("cv_frontal_accepted", "cv_refused", "cv_counts")}, indent=1))
    if not args.dry_run:
        write_validity_file(Path(args.out), image_thresholds, calibration)
        print(f"wrote {args.out} (calibration for {identity['name']}, fingerprint {identity['fingerprint']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
