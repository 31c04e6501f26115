"""cxr-hub Gradio app: the patch-based COVID-19 chest X-ray method of Oh, Park & Ye (IEEE TMI 2020), in a browser.

For an educator in front of a class, a researcher or a curious visitor: upload a frontal chest X-ray (PNG, JPEG or
DICOM) or pick an example, and see the lung/heart segmentation with the K sampled patches, the patch vote, the
probabilistic Grad-CAM beside the global model's Grad-CAM (the paper's Fig. 7), the biomarkers and the paper's
triage idea (Fig. 9) worded as education. Research and education only, not for clinical use.

Only the UI lives here: the Gradio Blocks, :func:`render` (an :class:`~cxr_hub.demo.Analysis` → the components'
values), the markdown panels, :func:`build_demo` and :func:`main`. Model discovery and loading, the per-image cache,
parameter checks, summaries, reports and the "How it works" images are in :mod:`cxr_hub.demo` (no Gradio there);
the science is in :class:`cxr_hub.CXRPipeline`. The engine's names used by the tests are importable from here too.
Run ``python app.py`` (``--help`` for options).

Errors: :class:`cxr_hub.CXRInputError` and :class:`~cxr_hub.demo.AppInputError` (messages written for the user)
become ``gr.Error`` without a traceback. An upload that is not a frontal chest X-ray is refused by the pipeline's
input-validity check (:mod:`cxr_hub.validity`; the app decides nothing itself): the error says what the upload
looks like and what to upload instead. Every output of the previous image is cleared when a new image is chosen
and before each analysis, so a refusal never leaves another image's result on screen.

Privacy: only pixels are used; no DICOM header field and no file name is shown, logged or written to a report
(errors name "the uploaded file", not its path); a session's uploads are deleted when its tab closes
(:class:`SessionUploads`), and Gradio's ``delete_cache`` purges the rest.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.route_utils import delete_files_created_by_app
from gradio.utils import get_upload_folder
from PIL import Image

from cxr_hub import LABEL_SETS, CXRInputError, load_image
from cxr_hub.demo import (
    COVIDX_MODEL,
    DISPLAY_SIDE,
    K_DEFAULT,
    K_MAX,
    K_MIN,
    MODEL_CHOICES,
    MODEL_SPECS,
    PAPER_MODEL,
    PATCH_DEFAULT,
    PATCH_MAX,
    PATCH_MIN,
    PATCH_STEP,
    PREDICTED,
    REFERENCE_PENDING,
    SEGMENTATION_ENV,
    UPLOAD_NAME,
    Analysis,
    AppInputError,
    CXRApp,
    biomarker_panel,
    discover_models,
    display_name,
    request_timings,
    saliency_images,
    steps,
    summary_dict,
    triage_text,
    write_report,
)
from cxr_hub.io import SUPPORTED_EXTENSIONS
from cxr_hub.preprocessing import resize_image
from cxr_hub.visualize import (
    BOX_COLOUR,
    LABEL_COLOURS,
    LABEL_NAMES,
    annotated_segmentation,
    display_size,
    gray_rgb,
    hex_colour,
    to_uint8,
)

__all__ = [  # the UI, plus the engine names re-exported for tests, benchmarks and existing callers
    "COVIDX_MODEL",
    "OUTPUT_NAMES",
    "PAPER_MODEL",
    "PREDICTED",
    "REFERENCE_PENDING",
    "UNTRAINED",
    "AppInputError",
    "CXRApp",
    "SessionUploads",
    "build_demo",
    "cleared_outputs",
    "discover_models",
    "launch_kwargs",
    "main",
    "render",
    "steps",
]

REPO_ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO_ROOT / "examples"

#: Uploads above this are refused by Gradio before they reach the handler (a large CR DICOM is ~15-30 MB).
MAX_FILE_SIZE = "32mb"
#: One analysis at a time: on a 2-core CPU Space, parallel runs only slow each other down.
CONCURRENCY_LIMIT = 1
QUEUE_MAX_SIZE = 16
#: Gradio cache purge (every 5 min, files older than 15 min; all of it on shutdown): uploads are not kept.
DELETE_CACHE = (300, 900)

DISCLAIMER = (
    "**Research and education only. Not for clinical use.** This is not a medical device: no output here may be "
    "used to diagnose, triage or treat anyone."
)

#: Short names for the bar chart's axis.
CLASS_SHORT = {
    "normal": "normal",
    "bacterial": "bacterial",
    "tuberculosis": "TB",
    "viral_covid": "viral/COVID",
    "pneumonia": "pneumonia",
    "covid": "COVID-19",
}

#: Bar order of the vote chart (the classes' index order; Vega-Lite would sort them alphabetically).
CLASS_SORT = list(dict.fromkeys(CLASS_SHORT[c] for c in (*LABEL_SETS["label4"], *LABEL_SETS["label3"])))
TRAINED, UNTRAINED = "trained", "untrained (no training images)"


# --------------------------------------------------------------------------------------------------------- render


def _summary_markdown(a: Analysis) -> str:
    m, r = a.models, a.result
    if m.mode == "no_models":
        return (
            "### No segmentation model could be loaded\n"
            "This app needs at least the lung/heart segmentation model (`models/cxr-lung-seg-fcdensenet103` in the "
            f"repository, or `{SEGMENTATION_ENV}`), and none could be loaded here, so nothing is analysed: the image "
            "above is shown as loaded. Untrained (random) weights are never used to produce a result."
            + "".join(f"\n- {e}" for e in m.errors)
        )
    if r is None:
        return (
            "### No classifier loaded\n"
            f"The {m.sources.choice}'s classifier was not found or could not be loaded (see *Which models are "
            "loaded*), so this app does **not** classify the image: no vote, no probabilities and no saliency map "
            f"(random weights are never used). What you see is real: the segmentation, where the K = {a.k} patches "
            f"of {a.patch_size} px would be taken (same seed → same patches), and the biomarkers."
        )
    n = r.k
    untrained = m.untrained_classes
    lines = [f"### Majority vote: **{display_name(r.label, untrained)}** — {r.votes[r.label]} of {n} patches"]
    lines.append(
        " · ".join(
            f"{display_name(c, untrained)}: {r.votes[c]} ({r.vote_fraction[c]:.0%})"
            for c in r.class_names
            if c in r.votes
        )
    )
    if r.global_label is not None:
        lines.append(f"Global (whole-image) model: **{display_name(r.global_label, untrained)}**.")
    if untrained:
        lines.append(
            f"**Never trained (no images):** {', '.join(display_name(c) for c in untrained)} — votes for it are "
            "meaningless."
        )
    return "\n\n".join(lines)


def _biomarkers_markdown(a: Analysis) -> str:
    if a.prepared is None:
        return "Biomarkers need the segmentation model (not shipped yet)."
    # ours and the paper's per-class values, in the paper's units: built by the engine (cxr_hub.demo), no Gradio
    return biomarker_panel(a.prepared.biomarkers)


def _details_markdown(a: Analysis) -> str:
    m = a.models
    device = str(m.pipeline.device) if m.pipeline is not None else "—"
    parts = [f"**Device:** {device}"]
    if m.pipeline is not None:
        parts.append("**segmentation:** " + ("reused from the cache" if a.cache_hit else "computed for this image"))
    timings = request_timings(a)
    parts.append("**timings (ms):** " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    text = " · ".join(parts)
    warnings = list(dict.fromkeys(a.warnings))
    if warnings:
        text += "\n\n**Warnings from the pipeline:**\n" + "\n".join(f"- {w}" for w in warnings)
    return text


def _votes_frame(a: Analysis) -> pd.DataFrame | None:
    r = a.result
    if r is None:
        return None
    untrained = a.models.untrained_classes
    return pd.DataFrame(
        {
            "class": [CLASS_SHORT.get(c, c) for c in r.class_names],
            "votes": [r.votes[c] for c in r.class_names],
            "training": [UNTRAINED if c in untrained else TRAINED for c in r.class_names],
        }
    )


def render(a: Analysis, engine: CXRApp) -> tuple:
    """The UI outputs of an analysis, in :data:`OUTPUT_NAMES` order (without the session state)."""
    if a.prepared is not None:
        seg = annotated_segmentation(a.image, a.prepared.label_map, a.boxes, DISPLAY_SIDE)
    else:
        seg = (gray_rgb(a.image, display_size(a.image.shape[:2], DISPLAY_SIDE)).astype(np.uint8), [])
    frame = _votes_frame(a)
    fractions = None
    if a.result is not None:
        untrained = a.models.untrained_classes
        fractions = {display_name(c, untrained): f for c, f in a.result.vote_fraction.items()}
    patch_cam, global_cam, _ = saliency_images(a)
    summary = summary_dict(a)
    report = write_report(a, engine, patch_cam, global_cam) if a.prepared is not None else None
    return (
        _summary_markdown(a),
        seg,
        frame,
        fractions,
        patch_cam,
        global_cam,
        _biomarkers_markdown(a),
        triage_text(a),
        _details_markdown(a),
        summary,
        report,
    )


# ------------------------------------------------------------------------------------------------------------- UI

HOW_IT_WORKS = """
The paper (Oh, Park & Ye, *IEEE TMI* 2020) asks how to learn COVID-19 features from **few** chest X-rays. Its
answer: look only inside the lungs, and look at many small pieces instead of the whole film.

1. **Preprocessing.** The image is converted to float, its histogram is equalised and a gamma of 0.5 is applied,
   so films from different machines look alike.
2. **Segmentation.** An FC-DenseNet103 (a fully convolutional DenseNet) outlines the heart and both lungs on a
   256×256 version of the image. The mask is scaled back to the original size.
3. **Masking.** The preprocessed image is resized to 1024×1024 and everything outside the lungs is set to zero:
   the classifier cannot use text markers, tubes outside the lungs or the image border.
4. **Patches.** K patch centres (the paper: K = 100) are drawn at random from the lung pixels; each patch
   (224×224) is cut around its centre.
5. **Vote.** A ResNet-18 classifies every patch; the class with the most votes wins. Many patches make the decision
   robust even though each patch sees only part of the lung — and a small network trained on patches needs fewer
   images than one trained on whole films.
6. **Probabilistic Grad-CAM (eq. 5).** Each patch's Grad-CAM map for a class is scaled to [0, 1], weighted by the
   patch's probability for that class, pasted back where the patch came from, and the sum is divided by how many
   patches covered each pixel. The paper compares this with the ordinary Grad-CAM of a global (whole-image) model
   (Fig. 7): the patch map is usually more focused on lung findings.
7. **Biomarkers.** From the segmentation: the cardiothoracic ratio and the mean and spread of the lung's gray levels,
   which the paper compares between classes.

Try it: move K from 1 to 400 and watch the vote settle; change the seed to see other patches; change the patch size
(patches other than 224 px are resized to the network's input, and the app warns about it).
"""

API_EXAMPLE = """
```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")  # or the Space's name, e.g. "user/cxr-hub"
outputs = client.predict(
    image=handle_file("examples/covid19_cohen_2168a917.jpg"),
    model="Paper 4-class model",
    k=100,
    patch_size=224,
    seed=0,
    saliency_class="predicted class",
    api_name="/analyze",
)
result = outputs[9]  # the JSON summary: label, votes, vote_fraction, biomarkers, warnings, timings, ...
```
"""

OUTPUT_NAMES = (
    "summary",
    "segmentation",
    "votes_plot",
    "vote_fractions",
    "probabilistic_gradcam",
    "global_gradcam",
    "biomarkers",
    "triage",
    "details",
    "result",
    "report",
)


#: What the summary says while an analysis runs, or after a refusal (the error itself is shown by Gradio).
CLEARED_SUMMARY = "Choose an image and press **Analyse**."


def cleared_outputs() -> tuple:
    """Empty values for every output of :data:`OUTPUT_NAMES` plus the session state: shown when a new image is
    chosen and before each analysis, so an error (a refused upload) never leaves the previous image's result."""
    return (CLEARED_SUMMARY, *([None] * (len(OUTPUT_NAMES) - 1)), None)


def _example_rows() -> list[dict[str, str]]:
    path = EXAMPLES_DIR / "examples.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (EXAMPLES_DIR / r["file"]).is_file()]
    # one per class, in the order a teacher would show them
    order = {"normal": 0, "bacterial": 1, "pneumonia": 2, "covid": 3}
    return sorted(rows, key=lambda r: order.get(r.get("label4") or r.get("label3") or "", 9))


def _example_label(row: Mapping[str, str]) -> str:
    """ "Finding — collection (licence)" from a row of ``examples/examples.csv``."""
    source = {"nih": "NIH ChestX-ray14", "cohen": "COVID-19 image data collection (Cohen et al.)"}.get(
        row["source"], row["source"]
    )
    licence = row["license"].split(": ", 1)[-1]  # "NIH ChestX-ray14: public, ..." → "public, ..."
    return f"{row['finding']} — {source}, {licence}"


def _models_status(engine: CXRApp) -> str:
    lines = []
    for choice in MODEL_CHOICES:
        s = engine.sources(choice)
        # plain words, no emoji: headless browsers and many school computers have no emoji font
        seg = "segmentation: available" if s.segmentation else "segmentation: **not found**"
        clf = "classifier: available" if s.classifier else "classifier: **not found** (no vote, no saliency)"
        glob = ""
        if MODEL_SPECS[choice].global_env:
            glob = " · global model: " + ("available" if s.global_classifier else "**not found**")
        lines.append(f"- **{choice}:** {seg} · {clf}{glob}")
        lines.extend(f"  - problem: {n}" for n in s.notes)
    if not any(engine.sources(c).segmentation for c in MODEL_CHOICES):
        lines.insert(0, "**No segmentation model found.** The app starts and explains; it analyses nothing.")
    return "\n".join(lines)


def _model_cards(engine: CXRApp) -> str:
    parts = []
    seen: set[str] = set()
    for choice in MODEL_CHOICES:
        s = engine.sources(choice)
        for role, src in (
            ("segmentation", s.segmentation),
            ("classifier", s.classifier),
            ("global", s.global_classifier),
        ):
            if src is None or src in seen:
                continue
            seen.add(src)
            card = Path(src) / "README.md"
            text = card.read_text() if card.is_file() else f"No local model card; see the model's Hub page `{src}`."
            text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # Hub YAML front matter is not for people
            parts.append(f"<details><summary><b>{role}: {src}</b></summary>\n\n{text}\n\n</details>")
    if not parts:
        parts.append(
            "No model is loaded here, so there is no model card to show. The cards (intended use, training data, "
            "measured metrics, limitations) come with the weights in `models/<name>/README.md`."
        )
    return "\n\n".join(parts)


class SessionUploads:
    """Files uploaded in each browser session, deleted when that session ends (its tab is closed or reloaded).

    ``delete_cache`` (:data:`DELETE_CACHE`) is the backstop for everything else (API uploads, a browser that never
    says goodbye); this makes "uploads are not kept after the session" literal for the UI. Only files inside
    Gradio's upload folder are ever deleted, never an example or any other path a request names.
    """

    def __init__(self, upload_dir: str | Path) -> None:
        self.upload_dir = Path(upload_dir).resolve()
        self._paths: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    def add(self, session: str | None, path: str | None) -> None:
        """Remembers an uploaded file of a session (ignored outside Gradio's upload folder)."""
        if not session or not path:
            return
        resolved = Path(path).resolve()
        if resolved.is_relative_to(self.upload_dir):
            with self._lock:
                self._paths.setdefault(session, set()).add(resolved)

    def end(self, session: str | None) -> int:
        """Deletes a session's uploads (and the per-upload folders Gradio made for them); returns how many."""
        with self._lock:
            paths = self._paths.pop(session or "", set())
        deleted = 0
        for path in paths:
            try:
                path.unlink()
                deleted += 1
                if path.parent != self.upload_dir:
                    path.parent.rmdir()  # Gradio's one-folder-per-upload; left alone when it still holds files
            except OSError:  # already purged by delete_cache, or the folder is shared with another upload
                continue
        return deleted


def build_demo(engine: CXRApp | None = None) -> gr.Blocks:
    """Builds the Gradio UI around an engine (default: models from ``models/`` and the environment)."""
    engine = engine or CXRApp()
    examples = _example_rows()
    outputs_count = len(OUTPUT_NAMES)
    uploads = SessionUploads(get_upload_folder())

    def analyze(
        image: str | None, model: str, k: float, patch_size: float, seed: float | None, saliency_class: str | None
    ) -> tuple:
        """Analyse one chest X-ray: segmentation, K-patch vote, probabilistic Grad-CAM, biomarkers (research only).

        Args:
            image: PNG, JPEG or DICOM file.
            model: "Paper 4-class model" or "COVIDx 3-class model".
            k: number of patches, 1-400 (the paper: 100).
            patch_size: patch side in the 1024 frame, 112-448 in steps of 16 (the paper: 224).
            seed: patch sampling seed (same seed, same patches).
            saliency_class: "predicted class" or a class name of the model.
        """
        try:
            a = engine.analyze(image, model, k, patch_size, seed, saliency_class)
            return (*render(a, engine), a.id)
        except (CXRInputError, AppInputError) as exc:
            # the message is written for the user; a traceback would only leak internals
            raise gr.Error(str(exc), print_exception=False) from None

    def analyze_live(*args: Any) -> tuple:
        if not args[0]:  # a control moved before any image was chosen: nothing to update
            return tuple(gr.skip() for _ in range(outputs_count + 1))
        return analyze(*args)

    def preview(image: str | None, request: gr.Request | None = None) -> Image.Image | None:
        if not image:
            return None
        uploads.add(getattr(request, "session_hash", None), image)
        try:
            pixels = load_image(image, source_name=UPLOAD_NAME)
        except CXRInputError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return Image.fromarray(to_uint8(resize_image(pixels, display_size(pixels.shape, DISPLAY_SIDE))))

    def class_choices(model: str) -> gr.Dropdown:
        names = list(LABEL_SETS[MODEL_SPECS[model].label_set])
        return gr.Dropdown(choices=[PREDICTED, *names], value=PREDICTED)

    def end_session(request: gr.Request | None = None) -> None:
        uploads.end(getattr(request, "session_hash", None))

    def explain(analysis_id: str | None) -> tuple[list, str]:
        return steps(engine.results.get(analysis_id) if analysis_id else None)

    colour_map = {name: hex_colour(LABEL_COLOURS[label]) for label, name in LABEL_NAMES.items()}
    colour_map["sampled patches"] = hex_colour(BOX_COLOUR)

    with gr.Blocks(
        title="cxr-hub: COVID-19 features on chest X-rays", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as demo:
        last = gr.State(None)
        gr.Markdown(
            "# cxr-hub — patch-based COVID-19 features on chest X-rays\n"
            "After *Deep Learning COVID-19 Features on CXR using Limited Training Data Sets* (Oh, Park, Ye, IEEE TMI "
            f"2020).\n\n> {DISCLAIMER}"
        )
        with gr.Accordion("Which models are loaded", open=not any(engine.sources(c).classifier for c in MODEL_CHOICES)):
            gr.Markdown(_models_status(engine), elem_id="model-status")
        with gr.Tab("Analyse", id="analyse"), gr.Row():
            with gr.Column(scale=1, min_width=320):
                image_in = gr.File(
                    label="Chest X-ray (PNG, JPEG or DICOM)",
                    file_types=list(SUPPORTED_EXTENSIONS),
                    type="filepath",
                    elem_id="image-input",
                )
                preview_img = gr.Image(label="Input", interactive=False, height=260, format="jpeg", elem_id="preview")
                model_in = gr.Radio(list(MODEL_CHOICES), value=PAPER_MODEL, label="Model", elem_id="model")
                k_in = gr.Slider(K_MIN, K_MAX, value=K_DEFAULT, step=1, label="K: patches", elem_id="k-slider")
                patch_in = gr.Slider(
                    PATCH_MIN,
                    PATCH_MAX,
                    value=PATCH_DEFAULT,
                    step=PATCH_STEP,
                    label="Patch size (px)",
                    elem_id="patch-slider",
                )
                seed_in = gr.Number(value=0, precision=0, minimum=0, label="Seed (press Enter)", elem_id="seed")
                class_in = gr.Dropdown(
                    [PREDICTED, *LABEL_SETS["label4"]],
                    value=PREDICTED,
                    label="Saliency for class",
                    allow_custom_value=True,  # API callers may name the 3-class model's classes
                    elem_id="saliency-class",
                )
                run_btn = gr.Button("Analyse", variant="primary", elem_id="analyse-button")
                if examples:
                    gr.Examples(
                        examples=[[str(EXAMPLES_DIR / r["file"]), str(EXAMPLES_DIR / r["file"])] for r in examples],
                        inputs=[image_in, preview_img],
                        label="Examples (real X-rays; click one, then Analyse)",
                        visible_columns=[1],
                        examples_per_page=8,
                    )
                    gr.Markdown(
                        "Example images: "
                        + "; ".join(f"{i + 1}. {_example_label(r)}" for i, r in enumerate(examples))
                        + ". Full attribution in the **About** tab and `examples/README.md`.",
                        elem_id="example-credits",
                    )
            with gr.Column(scale=2):
                summary_out = gr.Markdown(CLEARED_SUMMARY, elem_id="summary")
                with gr.Row():
                    seg_out = gr.AnnotatedImage(
                        label="Segmentation and sampled patches",
                        color_map=colour_map,
                        height=420,
                        format="jpeg",  # the gray base image; Gradio writes the masks as PNG (they need alpha)
                        elem_id="segmentation",
                    )
                    with gr.Column():
                        votes_plot = gr.BarPlot(
                            x="class",
                            y="votes",
                            color="training",
                            color_map={TRAINED: "#6366f1", UNTRAINED: "#b0b0b0"},
                            sort=CLASS_SORT,
                            title="Votes of the K patches",
                            height=220,
                            elem_id="votes-plot",
                        )
                        fractions_out = gr.Label(label="Vote fractions", elem_id="vote-fractions")
                with gr.Row():
                    patch_cam_out = gr.Image(
                        label="Probabilistic Grad-CAM (patches, eq. 5)", height=340, format="jpeg", elem_id="patch-cam"
                    )
                    global_cam_out = gr.Image(
                        label="Global model's Grad-CAM (Fig. 7)", height=340, format="jpeg", elem_id="global-cam"
                    )
                biomarkers_out = gr.Markdown(elem_id="biomarkers")
                triage_out = gr.Markdown(elem_id="triage")
                details_out = gr.Markdown(elem_id="details")
                report_out = gr.File(label="Report (JSON + PNG)", file_count="multiple", elem_id="report")
                with gr.Accordion("Result as JSON", open=False):
                    result_out = gr.JSON(elem_id="result-json")
        with gr.Tab("How it works", id="how") as how_tab:
            gr.Markdown(HOW_IT_WORKS)
            steps_note = gr.Markdown("Analyse an image first; its intermediate images will appear here.")
            steps_gallery = gr.Gallery(label="This image, step by step", columns=3, height="auto", elem_id="steps")
        with gr.Tab("About", id="about"):
            gr.Markdown(
                f"## Disclaimer\n{DISCLAIMER} The models were trained on small public data sets with known biases "
                "(see the model cards); their outputs are illustrations of a research method.\n\n"
                "## Privacy\nOnly the image's pixels are used. DICOM header fields (names, IDs, dates) and file names "
                "are never shown, logged or written to a report. Uploads are deleted from the server when you close "
                "this tab, and after about 15 minutes at the latest; the analysis cache keeps derived arrays in "
                "memory only.\n\n"
                "## Model cards\n" + _model_cards(engine) + "\n\n## Use it from Python\n" + API_EXAMPLE
            )
            credits = EXAMPLES_DIR / "README.md"
            if credits.is_file():
                gr.Markdown("## Example images\n" + credits.read_text().split("\n", 1)[1])
            gr.Markdown(
                "## Citation\nY. Oh, S. Park, J. C. Ye, *Deep Learning COVID-19 Features on CXR Using Limited Training "
                "Data Sets*, IEEE Transactions on Medical Imaging 39(8):2688–2700, 2020, doi:10.1109/TMI.2020.2993291."
            )

        inputs = [image_in, model_in, k_in, patch_in, seed_in, class_in]
        outputs = [
            summary_out,
            seg_out,
            votes_plot,
            fractions_out,
            patch_cam_out,
            global_cam_out,
            biomarkers_out,
            triage_out,
            details_out,
            result_out,
            report_out,
            last,
        ]
        # one shared concurrency slot for every computing event (per-listener limits would allow parallel runs)
        common = {"concurrency_id": "analysis", "concurrency_limit": CONCURRENCY_LIMIT}
        # clear first: a refused image raises gr.Error, which would otherwise leave the previous image's outputs
        run_btn.click(cleared_outputs, None, outputs, api_visibility="private", queue=False).then(
            analyze, inputs, outputs, api_name="analyze", **common
        )
        image_in.change(cleared_outputs, None, outputs, api_visibility="private", queue=False)
        gr.on(
            [k_in.release, patch_in.release, seed_in.submit, class_in.input],
            analyze_live,
            inputs,
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="minimal",
            **common,
        )
        model_in.input(class_choices, model_in, class_in, api_visibility="private").then(
            analyze_live, inputs, outputs, api_visibility="private", trigger_mode="always_last", **common
        )
        image_in.upload(preview, image_in, preview_img, api_visibility="private")
        image_in.clear(lambda: None, None, preview_img, api_visibility="private")
        how_tab.select(explain, last, [steps_gallery, steps_note], api_visibility="private", **common)
        demo.unload(end_session)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``main`` and the tests (Gradio 6 takes theme/css here)."""
    return {"max_file_size": MAX_FILE_SIZE, "show_error": False, "enable_monitoring": False, "theme": gr.themes.Soft()}


def main(argv: list[str] | None = None) -> None:
    """``python app.py``: loads the paper model eagerly (so the first visitor does not wait) and serves the UI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Containers and Spaces stop the app with SIGTERM, on which Python exits at once and Gradio's shutdown, the step
    # that deletes the uploads still in its cache, never runs. Handle SIGTERM like Ctrl-C, which Gradio closes cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    engine = CXRApp(device=args.device)
    engine.models(PAPER_MODEL)
    demo = build_demo(engine)
    try:
        demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs())
    finally:
        # Gradio purges its upload cache in the server's shutdown, but waits only 5 s for it: with a client still
        # connected, or a busy CPU, the process is gone first and the uploads stay on disk. Purge here too.
        delete_files_created_by_app(demo, age=None)


if __name__ == "__main__":
    main()
