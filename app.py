"""cxr-hub Gradio app: the patch-based COVID-19 chest X-ray method of Oh, Park & Ye (IEEE TMI 2020), in a browser.

For an educator in front of a class, a researcher or a curious visitor: upload a frontal chest X-ray (PNG, JPEG or
DICOM) or pick an example, and see the lung/heart segmentation with the K sampled patches, the patch vote, the
probabilistic Grad-CAM beside the global model's Grad-CAM (the paper's Fig. 7), the biomarkers and the paper's
triage idea (Fig. 9) worded as education. Research and education only, not for clinical use.

Only the UI lives here (the Hugging Face Spaces entry point): the Gradio Blocks, built panel by panel
(:func:`build_demo`), the event wiring, the upload-session bookkeeping (:class:`SessionUploads`) and :func:`main`.
Everything else is in :mod:`cxr_hub.demo`, which never imports gradio: model discovery, loading, the per-image cache
and parameter checks (:mod:`cxr_hub.demo.engine`), the texts and the JSON summary (:mod:`cxr_hub.demo.presenters`),
the images, the report and :func:`~cxr_hub.demo.outputs.render`, an analysis → the components' values
(:mod:`cxr_hub.demo.outputs`). The science is in :class:`cxr_hub.CXRPipeline`. The model selector shows the labels of
:data:`cxr_hub.demo.MODEL_LABELS`; the handlers hand the engine the choice's id. Run ``python app.py`` (``--help`` for
options).

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
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.route_utils import delete_files_created_by_app
from gradio.utils import get_upload_folder
from PIL import Image

from cxr_hub import LABEL_SETS, CXRInputError, load_image
from cxr_hub.demo.discovery import MODEL_CHOICES, MODEL_SPECS, PAPER_MODEL
from cxr_hub.demo.engine import (
    K_DEFAULT,
    K_MAX,
    K_MIN,
    PATCH_DEFAULT,
    PATCH_MAX,
    PATCH_MIN,
    PATCH_STEP,
    PREDICTED,
    UPLOAD_NAME,
    AppInputError,
    CXRApp,
)
from cxr_hub.demo.names import LABEL_CHOICES, PAPER_LABEL, model_id
from cxr_hub.demo.outputs import (
    CLASS_SORT,
    CLEARED_SUMMARY,
    DISPLAY_SIDE,
    OUTPUT_NAMES,
    TRAINED,
    UNTRAINED,
    cleared_outputs,
    render,
    steps,
)
from cxr_hub.demo.presenters import example_label, example_rows, input_error_message, model_cards, models_status
from cxr_hub.io import SUPPORTED_EXTENSIONS
from cxr_hub.preprocessing import resize_image
from cxr_hub.visualize import BOX_COLOUR, LABEL_COLOURS, LABEL_NAMES, display_size, hex_colour, to_uint8

__all__ = ["SessionUploads", "build_demo", "launch_kwargs", "main"]

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

# ----------------------------------------------------------------------------------------------------------- texts

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


# ------------------------------------------------------------------------------------------------------ handlers


@dataclass(frozen=True)
class Handlers:
    """The UI's event handlers around one engine. Their ``__name__`` is what Gradio's API page and the tests see."""

    analyze: Callable[..., tuple]
    analyze_live: Callable[..., tuple]
    preview: Callable[..., Image.Image | None]
    class_choices: Callable[[str], gr.Dropdown]
    end_session: Callable[..., None]
    explain: Callable[[str | None], tuple[list, str]]


def make_handlers(engine: CXRApp, uploads: SessionUploads) -> Handlers:
    """The event handlers of :func:`build_demo`: the analysis, its live re-runs, the preview, the session's end."""
    outputs_count = len(OUTPUT_NAMES)

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
            # the selector and the API send the model's label; the engine knows the choice by its id
            a = engine.analyze(image, model_id(model), k, patch_size, seed, saliency_class)
            return (*render(a, engine), a.id)
        except (CXRInputError, AppInputError) as exc:
            # the message is written for the user; a traceback would only leak internals
            raise gr.Error(input_error_message(exc, model), print_exception=False) from None

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
        names = list(LABEL_SETS[MODEL_SPECS[model_id(model)].label_set])
        return gr.Dropdown(choices=[PREDICTED, *names], value=PREDICTED)

    def end_session(request: gr.Request | None = None) -> None:
        uploads.end(getattr(request, "session_hash", None))

    def explain(analysis_id: str | None) -> tuple[list, str]:
        return steps(engine.results.get(analysis_id) if analysis_id else None)

    return Handlers(analyze, analyze_live, preview, class_choices, end_session, explain)


# -------------------------------------------------------------------------------------------------------- panels


@dataclass(frozen=True)
class Controls:
    """The Analyse tab's inputs."""

    image: gr.File
    preview: gr.Image
    model: gr.Radio
    k: gr.Slider
    patch_size: gr.Slider
    seed: gr.Number
    saliency_class: gr.Dropdown
    run: gr.Button

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The analysis' inputs, in the handler's argument order."""
        return [self.image, self.model, self.k, self.patch_size, self.seed, self.saliency_class]


@dataclass(frozen=True)
class HowItWorks:
    """The "How it works" tab and its two outputs."""

    tab: gr.Tab
    note: gr.Markdown
    gallery: gr.Gallery


def header(engine: CXRApp) -> None:
    """Title, disclaimer and the *Which models are loaded* accordion (open when no classifier was found)."""
    gr.Markdown(
        "# cxr-hub — patch-based COVID-19 features on chest X-rays\n"
        "After *Deep Learning COVID-19 Features on CXR using Limited Training Data Sets* (Oh, Park, Ye, IEEE TMI "
        f"2020).\n\n> {DISCLAIMER}"
    )
    with gr.Accordion("Which models are loaded", open=not any(engine.sources(c).classifier for c in MODEL_CHOICES)):
        gr.Markdown(models_status(engine), elem_id="model-status")


def controls_panel(examples: list[dict[str, str]]) -> Controls:
    """The Analyse tab's left column: upload, preview, model, K, patch size, seed, saliency class, examples."""
    with gr.Column(scale=1, min_width=320):
        image_in = gr.File(
            label="Chest X-ray (PNG, JPEG or DICOM)",
            file_types=list(SUPPORTED_EXTENSIONS),
            type="filepath",
            elem_id="image-input",
        )
        preview_img = gr.Image(label="Input", interactive=False, height=260, format="jpeg", elem_id="preview")
        model_in = gr.Radio(list(LABEL_CHOICES), value=PAPER_LABEL, label="Model", elem_id="model")
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
            [PREDICTED, *LABEL_SETS[MODEL_SPECS[PAPER_MODEL].label_set]],
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
                + "; ".join(f"{i + 1}. {example_label(r)}" for i, r in enumerate(examples))
                + ". Full attribution in the **About** tab and `examples/README.md`.",
                elem_id="example-credits",
            )
    return Controls(image_in, preview_img, model_in, k_in, patch_in, seed_in, class_in, run_btn)


def results_panel() -> dict[str, gr.components.Component]:
    """The Analyse tab's right column; returns its components by output name (:data:`OUTPUT_NAMES`)."""
    colour_map = {name: hex_colour(LABEL_COLOURS[label]) for label, name in LABEL_NAMES.items()}
    colour_map["sampled patches"] = hex_colour(BOX_COLOUR)
    out: dict[str, gr.components.Component] = {}
    with gr.Column(scale=2):
        out["summary"] = gr.Markdown(CLEARED_SUMMARY, elem_id="summary")
        with gr.Row():
            out["segmentation"] = gr.AnnotatedImage(
                label="Segmentation and sampled patches",
                color_map=colour_map,
                height=420,
                format="jpeg",  # the gray base image; Gradio writes the masks as PNG (they need alpha)
                elem_id="segmentation",
            )
            with gr.Column():
                out["votes_plot"] = gr.BarPlot(
                    x="class",
                    y="votes",
                    color="training",
                    color_map={TRAINED: "#6366f1", UNTRAINED: "#b0b0b0"},
                    sort=CLASS_SORT,
                    title="Votes of the K patches",
                    height=220,
                    elem_id="votes-plot",
                )
                out["vote_fractions"] = gr.Label(label="Vote fractions", elem_id="vote-fractions")
        with gr.Row():
            out["probabilistic_gradcam"] = gr.Image(
                label="Probabilistic Grad-CAM (patches, eq. 5)", height=340, format="jpeg", elem_id="patch-cam"
            )
            out["global_gradcam"] = gr.Image(
                label="Global model's Grad-CAM (Fig. 7)", height=340, format="jpeg", elem_id="global-cam"
            )
        out["biomarkers"] = gr.Markdown(elem_id="biomarkers")
        out["triage"] = gr.Markdown(elem_id="triage")
        out["details"] = gr.Markdown(elem_id="details")
        out["report"] = gr.File(label="Report (JSON + PNG)", file_count="multiple", elem_id="report")
        with gr.Accordion("Result as JSON", open=False):
            out["result"] = gr.JSON(elem_id="result-json")
    assert set(out) == set(OUTPUT_NAMES), "every output of render() needs its component"
    return out


def how_it_works_tab() -> HowItWorks:
    """The method in words, and the last analysed image step by step."""
    with gr.Tab("How it works", id="how") as tab:
        gr.Markdown(HOW_IT_WORKS)
        note = gr.Markdown("Analyse an image first; its intermediate images will appear here.")
        gallery = gr.Gallery(label="This image, step by step", columns=3, height="auto", elem_id="steps")
    return HowItWorks(tab, note, gallery)


def about_tab(engine: CXRApp) -> None:
    """Disclaimer, privacy, the model cards, the API example, the examples' attribution and the citation."""
    with gr.Tab("About", id="about"):
        gr.Markdown(
            f"## Disclaimer\n{DISCLAIMER} The models were trained on small public data sets with known biases "
            "(see the model cards); their outputs are illustrations of a research method.\n\n"
            "## Privacy\nOnly the image's pixels are used. DICOM header fields (names, IDs, dates) and file names "
            "are never shown, logged or written to a report. Uploads are deleted from the server when you close "
            "this tab, and after about 15 minutes at the latest; the analysis cache keeps derived arrays in "
            "memory only.\n\n"
            "## Model cards\n" + model_cards(engine) + "\n\n## Use it from Python\n" + API_EXAMPLE
        )
        credits = EXAMPLES_DIR / "README.md"
        if credits.is_file():
            gr.Markdown("## Example images\n" + credits.read_text().split("\n", 1)[1])
        gr.Markdown(
            "## Citation\nY. Oh, S. Park, J. C. Ye, *Deep Learning COVID-19 Features on CXR Using Limited Training "
            "Data Sets*, IEEE Transactions on Medical Imaging 39(8):2688–2700, 2020, doi:10.1109/TMI.2020.2993291."
        )


# -------------------------------------------------------------------------------------------------------- wiring


def wire_events(
    blocks: gr.Blocks,
    handlers: Handlers,
    controls: Controls,
    outputs: list[gr.components.Component],
    how: HowItWorks,
    last: gr.State,
) -> None:
    """Connects the events. ``outputs``: the components of :data:`OUTPUT_NAMES`, then the session state ``last``.

    Clearing runs first on the Analyse click and whenever another image is chosen: a refused image raises
    ``gr.Error``, which would otherwise leave the previous image's outputs on screen.
    """
    c = controls
    # one shared concurrency slot for every computing event (per-listener limits would allow parallel runs)
    common = {"concurrency_id": "analysis", "concurrency_limit": CONCURRENCY_LIMIT}
    c.run.click(cleared_outputs, None, outputs, api_visibility="private", queue=False).then(
        handlers.analyze, c.inputs, outputs, api_name="analyze", **common
    )
    c.image.change(cleared_outputs, None, outputs, api_visibility="private", queue=False)
    gr.on(
        [c.k.release, c.patch_size.release, c.seed.submit, c.saliency_class.input],
        handlers.analyze_live,
        c.inputs,
        outputs,
        api_visibility="private",
        trigger_mode="always_last",
        show_progress="minimal",
        **common,
    )
    c.model.input(handlers.class_choices, c.model, c.saliency_class, api_visibility="private").then(
        handlers.analyze_live, c.inputs, outputs, api_visibility="private", trigger_mode="always_last", **common
    )
    c.image.upload(handlers.preview, c.image, c.preview, api_visibility="private")
    c.image.clear(lambda: None, None, c.preview, api_visibility="private")
    how.tab.select(handlers.explain, last, [how.gallery, how.note], api_visibility="private", **common)
    blocks.unload(handlers.end_session)


def build_demo(engine: CXRApp | None = None) -> gr.Blocks:
    """Builds the Gradio UI around an engine (default: models from ``models/`` and the environment)."""
    engine = engine or CXRApp()
    handlers = make_handlers(engine, SessionUploads(get_upload_folder()))
    with gr.Blocks(
        title="cxr-hub: COVID-19 features on chest X-rays", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as blocks:
        last = gr.State(None)
        header(engine)
        with gr.Tab("Analyse", id="analyse"), gr.Row():
            controls = controls_panel(example_rows(EXAMPLES_DIR))
            results = results_panel()
        how = how_it_works_tab()
        about_tab(engine)
        wire_events(blocks, handlers, controls, [*(results[name] for name in OUTPUT_NAMES), last], how, last)
    blocks.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)
    return blocks


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
