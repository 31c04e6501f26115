"""The per-request half of :class:`cxr_hub.CXRPipeline`: sample patches → classify in chunks → vote → saliency.

The patch vote in three named parts (as MONAI's ``PatchInferer`` splits it): :meth:`sample_patches` places the K
patches, :meth:`classify_patches` runs them through the classifier in chunks of ``chunk_size`` (re-using the chunks an
earlier call on the same image and seed already computed), and :meth:`analyze` merges them: the majority vote and
the probabilistic Grad-CAM of eq. 5. The optional global classifier runs beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from ..models import PatchClassifierConfig, image_processor_for
from ..patches import crop_patches, majority_vote, patch_center_region, sample_patch_boxes
from ..preprocessing import map_boxes, resize_image
from ..saliency import gradcam_from_features, normalize_cams, probabilistic_gradcam
from .arguments import _integer, _Timer, resolve_seed
from .results import PatchSample, PipelineResult, PreparedImage


class _AnalyzeHalf:
    """:meth:`analyze` and its parts of :class:`cxr_hub.CXRPipeline` (which holds the models and options)."""

    def resolve_classes(self, saliency_classes: str | Sequence[str | int] | None, predicted: int) -> list[int]:
        """Class indices for saliency: None → the predicted class; "all" → every class; names or indices.

        A string may list several names separated by commas ("normal,viral_covid"). An empty sequence, or a string
        with no name in it ("", ","), gives [] (no saliency).
        """
        names = self.class_names
        if saliency_classes is None:
            return [predicted]
        if isinstance(saliency_classes, str):
            if saliency_classes == "all":
                return list(range(len(names)))
            saliency_classes = [s.strip() for s in saliency_classes.split(",") if s.strip()]
        out: list[int] = []
        for c in saliency_classes:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < len(names):
                idx = int(c)
            elif isinstance(c, str) and c in names:
                idx = names.index(c)
            else:
                raise ValueError(f"Unknown saliency class {c!r}; choose from {names}, their indices, or 'all'.")
            if idx not in out:
                out.append(idx)
        return out

    def classify_patches(
        self, frame: np.ndarray | torch.Tensor, boxes: np.ndarray, with_cams: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Runs all patches through the classifier in chunks and keeps every class's Grad-CAM from the same pass.

        Args:
            frame: (S, S) normalised, lung-masked classifier frame.
            boxes: (K, 4) int patch edges in that frame.
            with_cams: also compute the Grad-CAM maps; False skips them (the vote alone).

        Returns:
            ``(probs, cams)``: float32 (K, C) softmax probabilities on the CPU and float32 (K, C, h, w) un-normalised
            Grad-CAM maps (after ReLU) of every class, on the pipeline's device (None when ``with_cams`` is False).
        """
        model, cfg = self._require_classifier("classify patches")
        model, numerics = self.numerics_policy.network(model, cfg.input_size)
        frame_t = torch.as_tensor(frame, dtype=torch.float32).to(self.device)
        weight = model.classifier.weight.detach().float()
        all_classes = list(range(cfg.num_labels))
        probs, cams = [], []
        with torch.inference_mode():
            for start in range(0, len(boxes), self.chunk_size):
                x = crop_patches(frame_t, boxes[start : start + self.chunk_size], cfg.input_size)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self.numerics_policy.autocast(numerics):
                    features = model.forward_features(x)
                    logits = model.forward_head(features)
                probs.append(torch.softmax(logits.float(), dim=-1))
                if with_cams:
                    # fp32 outside autocast: K x C x 7 x 7 maps are cheap, and bf16 would blur the small differences
                    cams.append(gradcam_from_features(features.float(), weight, all_classes, normalize=False))
        return torch.cat(probs).cpu(), (torch.cat(cams) if with_cams else None)

    def _classify_chunk(
        self, frame: np.ndarray, boxes: np.ndarray, with_cams: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # the argument is passed only when it is not the default, so a subclass that overrides
        # classify_patches(frame, boxes) (as before with_cams existed) keeps working
        return self.classify_patches(frame, boxes) if with_cams else self.classify_patches(frame, boxes, False)

    def _classify_reusing(
        self, prepared: PreparedImage, boxes: np.ndarray, patch_size: int, seed: int | None, with_cams: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`classify_patches`, re-using the whole chunks of an earlier call on the same image and seed.

        The sampler's draws are prefix-stable (the first K boxes of a K' > K draw are the K draw of the same seed),
        so after one analysis at K, another at K' shares its first patches. Only whole chunks of ``chunk_size``
        patches are kept, and the partial last chunk is always computed afresh: every chunk then holds exactly the
        patches it holds in a fresh run, so the result is bit-identical to one without the cache. A cached prefix
        whose boxes differ from the new draw (it cannot happen with numpy's generator, but is checked) is dropped,
        and so is one stored without Grad-CAM maps (``with_cams=False``) when maps are wanted now. ``seed=None``
        (the caller asked for a drawn seed, which is rarely asked again) is not cached, so it evicts nothing.
        """
        if not self.reuse_patches or seed is None:
            return self._classify_chunk(prepared.frame, boxes, with_cams)
        cs, k = self.chunk_size, len(boxes)
        full = (k // cs) * cs
        key = (
            id(self.classifier_model),
            self.precision,
            self.fuse_batchnorm,
            self.sampling,
            int(patch_size),
            int(seed),
            cs,
        )
        cached = prepared.patch_cache.get(key)
        if cached is not None and (
            (with_cams and cached[2] is None)
            or not np.array_equal(cached[0][: min(full, len(cached[0]))], boxes[: min(full, len(cached[0]))])
        ):
            cached = None
        have = 0 if cached is None else len(cached[0])
        probs_parts: list[torch.Tensor] = []
        cams_parts: list[torch.Tensor] = []
        if cached is not None:
            probs_parts.append(cached[1][: min(have, full)])
            if with_cams:
                cams_parts.append(cached[2][: min(have, full)])
        if full > have:
            p, c = self._classify_chunk(prepared.frame, boxes[have:full], with_cams)
            probs_parts.append(p)
            if c is not None:
                cams_parts.append(c)
            store_cams = torch.cat(cams_parts) if with_cams else None
            prepared.remember(key, (boxes[:full].copy(), torch.cat(probs_parts), store_cams))
        if k > full:
            p, c = self._classify_chunk(prepared.frame, boxes[full:], with_cams)
            probs_parts.append(p)
            if c is not None:
                cams_parts.append(c)
        return torch.cat(probs_parts), (torch.cat(cams_parts) if with_cams else None)

    def sample_patches(
        self,
        prepared: PreparedImage,
        k: int | None = None,
        patch_size: int | None = None,
        seed: int | None = 0,
    ) -> PatchSample:
        """The patches :meth:`analyze` would classify, without classifying (works in segmentation-only mode).

        Same sampler, same ``sampling`` mode and the same use of ``np.random.default_rng(seed)`` as :meth:`analyze`
        (which calls this), so the same arguments give the same boxes.

        Args:
            prepared: from :meth:`prepare`.
            k: number of patches, an integer; None → the frame config's ``num_patches`` (the paper: 100).
            patch_size: patch side in the classifier frame, an integer; None → the frame config's ``patch_size``
                (224).
            seed: sampler seed, a non-negative integer; None draws one from fresh entropy (see :func:`resolve_seed`),
                recorded in ``PatchSample.seed``.

        Raises:
            ValueError: k or patch_size not an integer (numpy integers are fine), k < 1, a patch size outside
                1 … frame side, or a seed that is not a non-negative integer.
        """
        cfg = self.frame_config
        k = cfg.num_patches if k is None else _integer("k (the number of patches)", k)
        patch_size = cfg.patch_size if patch_size is None else _integer("patch_size", patch_size)
        seed = resolve_seed(seed)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        frame_shape = prepared.frame.shape
        if not 1 <= patch_size <= min(frame_shape):
            raise ValueError(f"patch_size must be between 1 and the classifier frame side {min(frame_shape)}.")
        rng = np.random.default_rng(seed)
        # centres as the classifier was trained: anywhere in the lung, or deeper than its patch_center_margin
        region = patch_center_region(prepared.frame_mask, cfg.center_margin_pixels(patch_size))
        centers, boxes = sample_patch_boxes(region, k, patch_size, rng, mode=self.sampling)
        return PatchSample(
            centers_1024=centers,
            boxes_1024=boxes,
            boxes=map_boxes(boxes, frame_shape, prepared.original_size),
            k=k,
            patch_size=patch_size,
            seed=seed,
        )

    def analyze(
        self,
        prepared: PreparedImage,
        k: int | None = None,
        patch_size: int | None = None,
        seed: int | None = 0,
        saliency_classes: str | Sequence[str | int] | None = None,
    ) -> PipelineResult:
        """Patch sampling, voting and saliency on a prepared image.

        Over 80 lines because it is the method's one linear sequence of timed stages (sample → classify → vote →
        saliency → global model → result); each stage is one call into this module, and splitting the sequence
        would only scatter the timer.

        Args:
            prepared: from :meth:`prepare`.
            k: number of patches, an integer; None → the classifier's ``config.num_patches`` (the paper: 100).
            patch_size: patch side in the classifier frame, an integer; None → ``config.patch_size`` (224). Another
                size is cropped at that size, resized to ``config.input_size`` and flagged in ``warnings``.
            seed: seed of the patch sampler, a non-negative integer (same seed → identical result); None draws one
                from fresh entropy (:func:`resolve_seed`). Either way ``result.seed`` is the seed used.
            saliency_classes: None → the predicted class; "all" → every class; a name, comma-separated names, or a
                sequence of names/indices. An empty sequence or an empty string → no saliency at all: no Grad-CAM
                map is computed, patch or global (the fastest path, for batch runs that need only the vote), and
                ``saliency`` / ``global_saliency`` are ``{}``.

        Returns:
            PipelineResult.

        Raises:
            NoClassifierError: segmentation-only pipeline (use :meth:`sample_patches` for the patch positions).
            ValueError: k or patch_size not an integer, k < 1, a patch size outside 1 … frame side, a seed that is not
                a non-negative integer, an unknown saliency class (checked before any patch is classified).
        """
        _, cfg = self._require_classifier("analyze (vote and saliency)")
        names = self.class_names
        # resolved now, so an unknown class fails before the vote and an empty selection skips every Grad-CAM
        requested = None if saliency_classes is None else self.resolve_classes(saliency_classes, 0)
        with_cams = requested is None or bool(requested)
        timer = _Timer(self.device)
        start = time.perf_counter()
        with timer.stage("sample"):
            sample = self.sample_patches(prepared, k, patch_size, seed)
        k, patch_size, centers, boxes = sample.k, sample.patch_size, sample.centers_1024, sample.boxes_1024
        notes = list(prepared.warnings)
        if patch_size != cfg.patch_size:
            notes.append(
                f"patch size {patch_size} differs from the size the classifier was trained at ({cfg.patch_size}): "
                f"patches are cropped at {patch_size} px and resized to the network input ({cfg.input_size} px)"
            )
        untrained = [c for c in names if c not in cfg.trained_classes]
        if untrained:
            notes.append(
                f"classes never trained in this classifier (their probabilities and votes are meaningless): "
                f"{', '.join(untrained)}"
            )

        with timer.stage("classify"):
            # a drawn seed (seed=None) is not cached: replaying it is rare, and it would evict useful entries
            reuse_seed = None if seed is None else sample.seed
            probs_t, cams_all = self._classify_reusing(prepared, boxes, patch_size, reuse_seed, with_cams)
            probs = probs_t.numpy()
            winner, counts = majority_vote(probs)
        classes = [winner] if requested is None else requested
        with timer.stage("saliency"):
            saliency: dict[str, np.ndarray] = {}
            in_lung: dict[str, float] = {}
            if classes and cams_all is not None:
                saliency, in_lung = self._patch_saliency(prepared, cams_all, probs_t, boxes, classes)

        global_label = global_probs = global_sal = None
        if self.global_classifier is not None:
            with timer.stage("global"):
                global_label, global_probs, global_sal, gnotes = self._global(
                    prepared, [names[c] for c in classes], with_cams
                )
            notes.extend(gnotes)
        else:
            timer.ms["global"] = 0.0

        analyze_ms = (time.perf_counter() - start) * 1e3
        timings = {key: v for key, v in prepared.timings.items() if key != "total"}
        timings.update(timer.ms)
        timings["analyze"] = analyze_ms
        timings["total"] = prepared.timings.get("total", 0.0) + analyze_ms
        return PipelineResult(
            label=names[winner],
            votes={n: int(c) for n, c in zip(names, counts, strict=True)},
            vote_fraction={n: float(c) / k for n, c in zip(names, counts, strict=True)},
            probabilities={n: float(p) for n, p in zip(names, probs.mean(axis=0), strict=True)},
            patch_probabilities=probs.astype(np.float32),
            class_names=names,
            label_map=prepared.label_map,
            lung_mask=prepared.lung_mask,
            patch_boxes=sample.boxes,
            patch_boxes_1024=boxes,
            patch_centers_1024=centers,
            saliency=saliency,
            saliency_in_lung=in_lung,
            biomarkers=prepared.biomarkers,
            k=k,
            patch_size=patch_size,
            seed=sample.seed,
            image_size=prepared.original_size,
            timings=timings,
            device=str(self.device),
            warnings=notes,
            global_label=global_label,
            global_probabilities=global_probs,
            global_saliency=global_sal,
            input_check=prepared.input_check,
        )

    def _patch_saliency(
        self,
        prepared: PreparedImage,
        cams_all: torch.Tensor,
        probs: torch.Tensor,
        boxes: np.ndarray,
        classes: list[int],
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Eq. 5 for the requested classes, resized to the original size, plus each map's share inside the lung."""
        cams = cams_all[:, classes]
        if self.normalize_cams:
            cams = normalize_cams(cams)
        maps = probabilistic_gradcam(cams, probs[:, classes], boxes, prepared.frame.shape)
        names = self.class_names
        saliency, in_lung = {}, {}
        for i, c in enumerate(classes):
            m = resize_image(maps[i], prepared.original_size)
            saliency[names[c]] = m
            in_lung[names[c]] = _mass_share(m, prepared.lung_mask)
        return saliency, in_lung

    def global_frame(self, prepared: PreparedImage, config: PatchClassifierConfig | None = None) -> np.ndarray:
        """The whole-image input of a global classifier for a prepared image.

        Args:
            prepared: from :meth:`prepare`.
            config: the global classifier's config; None → the loaded global classifier's.

        Returns:
            (S, S) float32 frame normalised by that config's processor, S = ``config.input_size``; lung-masked unless
            ``config.lung_masked`` is False.

        Raises:
            ValueError: no config given and no global classifier loaded.
        """
        cfg = config if config is not None else self.global_config
        if cfg is None:
            raise ValueError("No global classifier is loaded: pass the global classifier's config.")
        proc = self.global_processor if cfg is self.global_config else image_processor_for(cfg)
        pre = self._preprocessed(prepared.image, proc, prepared.preprocessed, prepared.preprocess_params)
        mask = prepared.lung_mask if getattr(cfg, "lung_masked", True) else None
        return proc.frame_from_preprocessed(pre, mask)

    def _global(
        self, prepared: PreparedImage, requested: list[str], with_cams: bool = True
    ) -> tuple[str, dict[str, float], dict[str, np.ndarray], list[str]]:
        """Global classifier on the whole masked image, with ordinary Grad-CAM upsampled to the original size.

        The maps are of its predicted class and the ``requested`` ones it has; none at all (``{}``) without
        ``with_cams``."""
        assert self.global_classifier is not None and self.global_config is not None
        model, cfg = self.global_classifier, self.global_config
        model, numerics = self.numerics_policy.network(model, cfg.input_size)
        x = torch.from_numpy(self.global_frame(prepared))[None, None].to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with self.numerics_policy.autocast(numerics):
                features = model.forward_features(x)
                logits = model.forward_head(features)
            probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
            names = [cfg.id2label[i] for i in range(cfg.num_labels)]
            pred = int(np.argmax(probs))
            saliency: dict[str, np.ndarray] = {}
            if with_cams:
                idx = [pred] + [names.index(n) for n in requested if n in names and names.index(n) != pred]
                cams = gradcam_from_features(
                    features.float(), model.classifier.weight.float(), idx, self.normalize_cams
                )
                up = (
                    torch.nn.functional.interpolate(
                        cams, size=prepared.original_size, mode="bilinear", align_corners=False
                    )[0]
                    .cpu()
                    .numpy()
                )
                saliency = {names[c]: up[i].astype(np.float32) for i, c in enumerate(idx)}
        notes = []
        untrained = [c for c in names if c not in cfg.trained_classes]
        if untrained:
            notes.append(
                f"global classifier: classes never trained (meaningless probabilities): {', '.join(untrained)}"
            )
        return names[pred], {n: float(p) for n, p in zip(names, probs, strict=True)}, saliency, notes


def _mass_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of a non-negative map's total inside a mask, in [0, 1]; NaN for an all-zero map."""
    total = float(saliency.sum(dtype=np.float64))
    if total <= 0:
        return math.nan
    return min(1.0, max(0.0, float(saliency[mask].sum(dtype=np.float64)) / total))
