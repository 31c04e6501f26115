"""Segmentation speed of every shipped segmentation model, as ratios measured in one run.

Times what the pipeline does per film to get its label map: the model's preprocessing, the network at 256 x 256, the
bilinear upsampling of the logits to the film's size, the argmax and, for a model whose config asks for it, the
anatomical clean-up (``cxr_hub.postprocessing``). fp32, the examples in ``examples/``, the same thread count for all
models, models interleaved round by round so that machine load hits them alike; median over rounds.

Usage:
    python benchmarks/segmentation_speed.py [--rounds 5] [--threads 2] [--json docs/results/bench_segmentation.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    """Prints per-film milliseconds of each model and its ratio to the pipeline's default; writes the JSON."""
    import torch

    from cxr_hub import load_image
    from cxr_hub.evaluation.segmentation import load_segmentation_model, segment, segmentation_processor
    from cxr_hub.postprocessing import clean_label_map, uses_postprocessing
    from cxr_hub.presets import SHIPPED

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(REPO_ROOT / "docs" / "results" / "bench_segmentation.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    films = [load_image(p) for p in sorted((REPO_ROOT / "examples").glob("*.jpg"))]
    models = {}
    for key, shipped in SHIPPED.items():
        if shipped.role == "segmentation" and (shipped.path / "model.safetensors").is_file():
            model = load_segmentation_model(shipped.path, device="cpu")
            models[shipped.folder] = (key, model, segmentation_processor(model), uses_postprocessing(model.config))

    def one_pass(model, processor, clean: bool) -> None:
        for film in films:
            label_map = segment(model, processor, [film])[0]
            if clean:
                clean_label_map(label_map)

    times: dict[str, list[float]] = {name: [] for name in models}
    for _key, model, processor, clean in models.values():  # warm-up
        one_pass(model, processor, clean)
    for _ in range(args.rounds):
        for name, (_, model, processor, clean) in models.items():
            start = time.perf_counter()
            one_pass(model, processor, clean)
            times[name].append((time.perf_counter() - start) / len(films) * 1000)
    default = SHIPPED["segmentation"].folder
    base = statistics.median(times[default])
    result = {
        "films": len(films),
        "rounds": args.rounds,
        "threads": args.threads,
        "precision": "fp32",
        "default": default,
        "models": {
            name: {
                "preset": key,
                "postprocessing": clean,
                "ms_per_film_median": round(statistics.median(times[name]), 1),
                "ms_per_film_rounds": [round(t, 1) for t in times[name]],
                "speed_vs_default": round(base / statistics.median(times[name]), 2),
            }
            for name, (key, _, _, clean) in models.items()
        },
    }
    for name, r in result["models"].items():
        print(f"{name:32s} {r['ms_per_film_median']:8.1f} ms/film  {r['speed_vs_default']:5.2f}x the default's speed")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
