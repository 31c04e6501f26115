"""Would int8 patch classification keep the answers, and how much faster is it? A probe, not a pipeline option.

The K = 100 pipeline misses the issue's 8x target against batched autograd Grad-CAM because 100 bf16 ResNet-18
patches still take ~0.86 s on the 2-core CPU. This script measures the next candidate on real films before anyone
builds it into the pipeline: the classifier's backbone quantised to int8 with PyTorch's FX graph-mode post-training
quantisation (x86 backend, per-channel weights, the default x86 qconfig mapping), calibrated on patches of
training-split films, compared with the fp32 model on test-split films.

For every test film: one :meth:`CXRPipeline.prepare` (the pipeline's default segmentation), then
:meth:`CXRPipeline.analyze` twice with the same seed and K, once with the fp32 backbone and once with the int8 one
(the head, global average pooling + linear, stays fp32, so the Grad-CAM maps follow from the int8 features as usual).
Reported like ``precision_agreement.py``: label agreement, mean |Δp| over the K x C patch probabilities, and the
``classify`` stage's time for both and for the pipeline's bf16 default, under the project's rule (>= 99 % same
label, mean |Δp| <= 0.01).

Why a probe: ``torch.ao.quantization``'s FX API is deprecated in favour of ``torchao`` (it warns on import), and a
pipeline option would need a design for its calibration statistics (shipped with the weights, or computed at load
from the committed examples) that keeps loading pickle-free.

Usage::

    .venv/bin/python benchmarks/int8_probe.py --classifier models/cxr-patch-resnet18 [--limit 100] \
        [--calibration-films 24] [--json docs/results/int8_probe_label4.json]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision_agreement import (  # noqa: E402  (needs the path above)
    MAX_MEAN_ABS_DPROB,
    MIN_LABEL_AGREEMENT,
    comparison_parser,
    passes_rule,
    selected_rows,
    write_report,
)


class _Features(nn.Module):
    """The backbone's feature extractor as a module FX can trace: (B, 1, s, s) → (B, 512, s/32, s/32)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


def quantize_backbone(pipe: Any, calibration_rows: list[Any], patches_per_film: int, seed: int) -> nn.Module:
    """An int8 copy of the pipeline classifier's backbone, calibrated on patches of ``calibration_rows``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from cxr_hub.patches import crop_patches

    torch.backends.quantized.engine = "x86"
    cfg = pipe.classifier_config
    example = torch.randn(2, 1, cfg.input_size, cfg.input_size)
    model = _Features(copy.deepcopy(pipe.classifier_model.backbone)).eval().to(memory_format=torch.contiguous_format)
    prepared_model = prepare_fx(model, get_default_qconfig_mapping("x86"), (example,))
    with torch.inference_mode():
        for row in calibration_rows:
            prepared = pipe.prepare(row.image)
            sample = pipe.sample_patches(prepared, k=patches_per_film, seed=seed)
            frame = torch.as_tensor(prepared.frame, dtype=torch.float32)
            prepared_model(crop_patches(frame, sample.boxes_1024, cfg.input_size))
    return convert_fx(prepared_model)


def compare_int8(pipe: Any, int8: nn.Module, image: Any, k: int, seed: int) -> dict[str, Any]:
    """fp32 vs int8 backbone on one film, same patches (the pipeline must run in fp32)."""
    model = pipe.classifier_model
    fp32_features = model.forward_features
    prepared = pipe.prepare(image)
    try:
        a = pipe.analyze(prepared, k=k, seed=seed)
        pipe.precision = "bf16"  # the CPU default's arithmetic (folded batch norms), for its time only
        bf16_ms = pipe.analyze(prepared, k=k, seed=seed).timings["classify"]
        pipe.precision = "fp32"
        model.forward_features = lambda x: int8(x.contiguous())
        b = pipe.analyze(prepared, k=k, seed=seed)
    finally:
        model.forward_features = fp32_features
        pipe.precision = "fp32"
    pa, pb = a.patch_probabilities.astype(np.float64), b.patch_probabilities.astype(np.float64)
    return {
        "label_fp32": a.label,
        "label_int8": b.label,
        "same_label": a.label == b.label,
        "mean_abs_dprob_patch": float(np.abs(pa - pb).mean()),
        "vote_changes": int((pa.argmax(1) != pb.argmax(1)).sum()),
        "classify_ms_fp32": a.timings["classify"],
        "classify_ms_bf16": bf16_ms,
        "classify_ms_int8": b.timings["classify"],
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 when the comparison ran (whatever its verdict), 2 on bad input."""
    from tqdm import tqdm

    from cxr_hub.evaluation import select_rows
    from cxr_hub.io import CXRInputError
    from cxr_hub.manifest import read_manifest, resolve_manifest
    from cxr_hub.pipeline import CXRPipeline

    parser = comparison_parser(__doc__.splitlines()[0])
    parser.add_argument("--calibration-films", type=int, default=24, help="training-split films for calibration")
    parser.add_argument("--calibration-patches", type=int, default=32, help="patches per calibration film")
    args = parser.parse_args(argv)
    rows = selected_rows(args)
    if rows is None:
        return 2
    train = [r for r in read_manifest(resolve_manifest(args.manifest)) if r.label(args.task)]
    train = select_rows(train, args.split_file, "classification:train")
    pick = np.random.default_rng(args.seed).choice(len(train), min(args.calibration_films, len(train)), replace=False)
    pipe = CXRPipeline.from_pretrained(
        args.segmentation, args.classifier, device="cpu", precision="fp32", sampling=args.sampling, reuse_patches=False
    )
    start = time.time()
    int8 = quantize_backbone(pipe, [train[i] for i in pick], args.calibration_patches, args.seed + 1)
    calibration_s = round(time.time() - start, 1)
    records: list[dict[str, Any]] = []
    for row in tqdm(rows, desc="fp32 vs int8", unit="img"):
        try:
            record = compare_int8(pipe, int8, row.image, args.k, args.seed)
        except CXRInputError as exc:
            tqdm.write(f"skipped {row.id}: {exc}")
            continue
        record["id"] = row.id
        records.append(record)
    if not records:
        print("error: no film could be compared", file=sys.stderr)
        return 2
    agreement = sum(r["same_label"] for r in records) / len(records)
    dprob = float(np.mean([r["mean_abs_dprob_patch"] for r in records]))
    fp32_ms = float(np.median([r["classify_ms_fp32"] for r in records]))
    int8_ms = float(np.median([r["classify_ms_int8"] for r in records]))
    bf16_ms = float(np.median([r["classify_ms_bf16"] for r in records]))
    summary = {
        "n": len(records),
        "comparison": "fp32 vs int8 backbone (torch.ao FX, x86 backend), same patches and masks",
        "label_agreement": agreement,
        "mean_abs_dprob_patch": dprob,
        "mean_vote_changes": float(np.mean([r["vote_changes"] for r in records])),
        "classify_ms_fp32_median": fp32_ms,
        "classify_ms_bf16_median": bf16_ms,
        "classify_ms_int8_median": int8_ms,
        "passes": passes_rule(agreement, dprob),
        "rule": f"label agreement >= {MIN_LABEL_AGREEMENT} and mean |dp| (patch) <= {MAX_MEAN_ABS_DPROB}",
        "calibration": {
            "films": len(pick),
            "patches_per_film": args.calibration_patches,
            "split": "classification:train",
            "seconds": calibration_s,
        },
    }
    write_report(summary, records, args, seconds=round(time.time() - start, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
