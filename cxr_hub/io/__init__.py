"""Loading chest X-rays from files, bytes, file objects, PIL images and arrays as one float32 gray image.

:func:`load_image` is the single entry point for every user-supplied image. It returns the image at its original
resolution and bit depth (16-bit values stay 16-bit), turns colour into gray, applies EXIF orientation and the DICOM
display pipeline, and raises :class:`CXRInputError` with an actionable message for anything it cannot use.

Privacy: DICOM headers carry patient data. Nothing here logs, prints or puts a DICOM tag value that could identify
a person into an exception message; messages only state technical facts (frame count, image size, transfer syntax).

What lives where (each module imports only those listed before it):

* :mod:`~cxr_hub.io.pixels`: what every decoder shares: :data:`REDUCE_ABOVE_PIXELS` and the box reduction of huge
  images, the size check on a declared size, colour to gray (BT.601 luma).
* :mod:`~cxr_hub.io.raster`: PNG, JPEG, BMP, TIFF and PGM/PPM through PIL (16-bit colour through OpenCV), EXIF
  orientation, bit depth.
* :mod:`~cxr_hub.io.dicom`: :func:`is_dicom` and DICOM through pydicom (display pipeline, missing decoders, quiet
  pydicom).
* :mod:`~cxr_hub.io.load`: :func:`load_image` itself, :data:`SUPPORTED_EXTENSIONS`, ``ImageSource`` (what it
  accepts), the sources (path, bytes, file object, PIL image, array) and the dispatch by content.

What it may import: numpy, PIL, OpenCV and pydicom (the last two on demand) and :mod:`cxr_hub.models` (the image
limits, ``validate_image_array`` and :class:`CXRInputError`, re-exported here); nothing else of cxr_hub, which
imports it (the pipeline, the cli, the demo, evaluation, manifest, training).

Every name importable from ``cxr_hub.io`` when it was one module still is (``ImageSource`` too, outside
``__all__``). Its records go to the ``cxr_hub.io`` logger, as before.
"""

from __future__ import annotations

from ..models.image_processing_cxr import CXRInputError
from .dicom import is_dicom
from .load import SUPPORTED_EXTENSIONS, load_image
from .load import ImageSource as ImageSource
from .pixels import REDUCE_ABOVE_PIXELS

__all__ = ["REDUCE_ABOVE_PIXELS", "SUPPORTED_EXTENSIONS", "CXRInputError", "is_dicom", "load_image"]
