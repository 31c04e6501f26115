"""Class-wise statistics of per-image biomarkers, as in the paper's section III-B (Oh, Park, Ye 2020).

Plain functions on sequences of numbers, independent of models and files, so they are tested against scipy directly:

* :func:`class_summary` — n, mean ± SD (population SD, ddof = 0, the project's convention for ±), median, range.
* :func:`ks_normality` — Kolmogorov–Smirnov test of the standardised values against N(0, 1).
* :func:`rank_sum` / :func:`pairwise_rank_sums` — two-sided Wilcoxon rank-sum tests between classes.
* :func:`mcnemar_exact` — exact McNemar test of two classifiers scored on the same images (paired).
* :func:`significance_stars` — ``*`` / ``**`` / ``***`` for p < 0.05 / 0.01 / 0.001.
* :func:`compare_classes` — all of the above for one biomarker over a fixed list of classes.
* :func:`markdown_table`, :func:`summary_markdown`, :func:`normality_markdown`, :func:`pairwise_markdown` — tables
  ready to paste into a markdown report.

Conventions:

* Non-finite values (NaN, e.g. a cardiothoracic ratio without a segmented heart) are dropped and counted as
  ``n_missing``; they never enter a mean or a test.
* A class without any image is **absent**: it is listed, with ``n = 0`` and ``absent = True``, and gets no numbers
  (no mean, no test). A class with images but no finite value of a biomarker is ``no_values``, also without numbers.
* p-values are not corrected for multiple comparisons (the paper reports them uncorrected); reports say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = [
    "MIN_N_NORMALITY",
    "SIGNIFICANCE_LEVELS",
    "class_summary",
    "compare_classes",
    "finite_values",
    "format_mean_sd",
    "format_p",
    "ks_normality",
    "markdown_table",
    "mcnemar_exact",
    "normality_markdown",
    "pairwise_markdown",
    "pairwise_rank_sums",
    "rank_sum",
    "significance_stars",
    "summary_markdown",
]

#: (threshold, stars), strictest first: p < threshold earns the stars; p equal to a threshold does not.
SIGNIFICANCE_LEVELS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))

#: Fewest finite values for a normality test: with 1 or 2 standardised values the KS statistic says nothing.
MIN_N_NORMALITY = 3


def finite_values(values: Iterable[float | None]) -> tuple[np.ndarray, int]:
    """Splits values into the finite ones and a count of the rest.

    Args:
        values: numbers; None, NaN and ±inf count as missing.

    Returns:
        ``(finite, n_missing)``: float64 1-D array of the finite values (input order) and the number dropped.
    """
    kept: list[float] = []
    missing = 0
    for v in values:
        if v is None or not math.isfinite(float(v)):
            missing += 1
        else:
            kept.append(float(v))
    return np.asarray(kept, dtype=np.float64), missing


def significance_stars(p: float | None) -> str:
    """Stars for a p-value: ``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, else ``""`` (also for None/NaN)."""
    if p is None or not math.isfinite(p):
        return ""
    for threshold, stars in SIGNIFICANCE_LEVELS:
        if p < threshold:
            return stars
    return ""


def class_summary(values: Iterable[float | None]) -> dict[str, Any]:
    """Descriptive statistics of one class's values.

    Args:
        values: the class's per-image values; non-finite ones are dropped (counted in ``n_missing``).

    Returns:
        ``{"n", "n_missing", "mean", "sd", "median", "min", "max"}`` with ``sd`` the population SD (ddof = 0);
        without any finite value ``{"n": 0, "n_missing", "no_values": True}`` and no numbers.
    """
    arr, missing = finite_values(values)
    if arr.size == 0:
        return {"n": 0, "n_missing": missing, "no_values": True}
    return {
        "n": int(arr.size),
        "n_missing": missing,
        "mean": float(arr.mean()),
        "sd": float(arr.std()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def ks_normality(values: Iterable[float | None], alpha: float = 0.05) -> dict[str, Any]:
    """Kolmogorov–Smirnov test of normality on standardised values (``scipy.stats.kstest`` against ``"norm"``).

    The values are standardised with their own mean and sample SD (ddof = 1, the usual estimate of σ). Estimating
    the parameters from the same data makes the plain KS p-value conservative (the Lilliefors correction would
    reject more often); this is the test as commonly reported, the paper included.

    Args:
        values: one class's values; non-finite ones are dropped.
        alpha: level below which normality is rejected.

    Returns:
        ``{"n", "statistic", "p", "normal"}`` (``normal``: p >= alpha, i.e. normality not rejected); with fewer than
        :data:`MIN_N_NORMALITY` finite values or zero spread ``{"n", "skipped": reason}`` and no numbers.
    """
    arr, _ = finite_values(values)
    n = int(arr.size)
    if n < MIN_N_NORMALITY:
        return {"n": n, "skipped": f"fewer than {MIN_N_NORMALITY} values"}
    sd = float(arr.std(ddof=1))
    if not sd > 0:
        return {"n": n, "skipped": "all values equal (no spread to standardise)"}
    result = sps.kstest((arr - arr.mean()) / sd, "norm")
    p = float(result.pvalue)
    return {"n": n, "statistic": float(result.statistic), "p": p, "normal": bool(p >= alpha)}


def rank_sum(a: Iterable[float | None], b: Iterable[float | None]) -> dict[str, Any]:
    """Two-sided Wilcoxon rank-sum test (``scipy.stats.ranksums``, normal approximation) of two samples.

    Args:
        a: first sample; non-finite values dropped.
        b: second sample; non-finite values dropped.

    Returns:
        ``{"n_a", "n_b", "statistic", "p", "stars"}``; the statistic is positive when ``a`` tends to be larger.
        With an empty sample ``{"n_a", "n_b", "skipped": reason}``.
    """
    x, _ = finite_values(a)
    y, _ = finite_values(b)
    if x.size == 0 or y.size == 0:
        return {"n_a": int(x.size), "n_b": int(y.size), "skipped": "a sample without values"}
    result = sps.ranksums(x, y)
    p = float(result.pvalue)
    return {
        "n_a": int(x.size),
        "n_b": int(y.size),
        "statistic": float(result.statistic),
        "p": p,
        "stars": significance_stars(p),
    }


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test: do two classifiers scored on the same images differ in accuracy?

    Only the discordant images count: ``b`` = right by A only, ``c`` = right by B only; under the null each
    discordant image is a fair coin, so p is the two-sided binomial test of ``b`` out of ``b + c`` at 0.5.

    Args:
        correct_a: per image, whether classifier A was right.
        correct_b: the same images, classifier B.

    Returns:
        ``{"n", "a_only", "b_only", "p", "stars"}``; p is 1.0 when there is no discordant image.

    Raises:
        ValueError: the two sequences differ in length.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must score the same images, got {a.shape} and {b.shape}.")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = float(sps.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "p": p, "stars": significance_stars(p)}


def pairwise_rank_sums(groups: Mapping[str, Iterable[float | None]]) -> list[dict[str, Any]]:
    """Rank-sum tests for every pair of groups with values, in the mapping's order.

    Args:
        groups: class → values; classes without a finite value are left out of the pairs.

    Returns:
        list of ``{"a", "b", **rank_sum(a, b)}`` for each pair ``a`` before ``b``.
    """
    samples = {name: finite_values(vals)[0] for name, vals in groups.items()}
    names = [name for name, arr in samples.items() if arr.size > 0]
    return [{"a": a, "b": b, **rank_sum(samples[a], samples[b])} for i, a in enumerate(names) for b in names[i + 1 :]]


def compare_classes(
    values: Mapping[str, Sequence[float | None]], classes: Sequence[str], alpha: float = 0.05
) -> dict[str, Any]:
    """Summary, normality and pairwise tests of one biomarker over a fixed list of classes.

    Args:
        values: class → per-image values; a class missing here (or with no entries) is absent.
        classes: every class of the task, in report order (absent ones included, e.g. tuberculosis).
        alpha: normality level for :func:`ks_normality`.

    Returns:
        ``{"per_class": {class: summary}, "normality": {class: ks}, "pairwise": [...], "absent": [classes]}``. An
        absent class's summary is ``{"n": 0, "absent": True}`` and it has no normality entry and no pair.
    """
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise ValueError(f"values has classes {unknown} that are not in classes {list(classes)}; add them there.")
    absent = [c for c in classes if len(values.get(c, ())) == 0]
    present = [c for c in classes if c not in absent]
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        per_class[c] = {"n": 0, "absent": True} if c in absent else class_summary(values[c])
    return {
        "per_class": per_class,
        "normality": {c: ks_normality(values[c], alpha) for c in present},
        "pairwise": pairwise_rank_sums({c: values[c] for c in present}),
        "absent": absent,
    }


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------


def format_mean_sd(summary: Mapping[str, Any], digits: int = 3) -> str:
    """``"mean ± sd"`` of a :func:`class_summary`; ``"absent"`` / ``"no values"`` where there are no numbers."""
    if summary.get("absent"):
        return "absent"
    if summary.get("no_values") or "mean" not in summary:
        return "no values"
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


def format_p(p: float | None, stars: bool = True) -> str:
    """A p-value for a table: 3 significant digits, scientific below 0.001, with stars; ``"–"`` for None/NaN."""
    if p is None or not math.isfinite(p):
        return "–"
    text = f"{p:.1e}" if p < 0.001 else f"{p:.3g}"
    mark = significance_stars(p) if stars else ""
    return f"{text} {mark}".rstrip()


def _cell(text: str) -> str:
    # a pipe inside a cell would end it early
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        header: column titles.
        rows: cells (converted with ``str``), each row as long as ``header``.
        align: per column ``"l"``, ``"r"`` or ``"c"`` (default: first column left, the rest right).

    Returns:
        the table, lines joined by ``"\\n"``, without a trailing newline.
    """
    width = len(header)
    if any(len(r) != width for r in rows):
        raise ValueError(f"every row needs {width} cells (as many as the header).")
    align = list(align) if align is not None else ["l"] + ["r"] * (width - 1)
    if len(align) != width or set(align) - {"l", "r", "c"}:
        raise ValueError(f"align needs {width} entries of 'l', 'r' or 'c', got {align}.")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(
    results: Mapping[str, Mapping[str, Any]],
    classes: Sequence[str],
    titles: Mapping[str, str],
    digits: Mapping[str, int],
    n_images: Mapping[str, int],
) -> str:
    """Mean ± SD table: one row per class, one column per biomarker.

    Args:
        results: biomarker → :func:`compare_classes` output.
        classes: classes in row order.
        titles: biomarker → column title.
        digits: biomarker → decimals.
        n_images: class → number of images (0 → the row says "absent" in every column).

    Returns:
        markdown table; a biomarker whose n differs from the class's image count (missing values) shows its n.
    """
    header = ["class", "n", *[titles[b] for b in results]]
    rows = []
    for c in classes:
        n = int(n_images.get(c, 0))
        if n == 0:
            rows.append([c, 0, *["absent (no images)"] * len(results)])
            continue
        cells = []
        for b, res in results.items():
            s = res["per_class"][c]
            text = format_mean_sd(s, digits[b])
            cells.append(text if s.get("n", 0) == n else f"{text} (n = {s.get('n', 0)})")
        rows.append([c, n, *cells])
    return markdown_table(header, rows)


def normality_markdown(
    results: Mapping[str, Mapping[str, Any]], classes: Sequence[str], titles: Mapping[str, str]
) -> str:
    """KS normality table: one row per class, ``D = …, p = …`` per biomarker; absent classes say so."""
    header = ["class", *[titles[b] for b in results]]
    rows = []
    for c in classes:
        cells = []
        for res in results.values():
            if c in res["absent"]:
                cells.append("absent")
                continue
            ks = res["normality"][c]
            if "skipped" in ks:
                cells.append(f"– ({ks['skipped']})")
            else:
                verdict = "" if ks["normal"] else " (not normal)"
                cells.append(f"D = {ks['statistic']:.3f}, p = {format_p(ks['p'], stars=False)}{verdict}")
        rows.append([c, *cells])
    return markdown_table(header, rows)


def pairwise_markdown(results: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str]) -> str:
    """Wilcoxon rank-sum p-values: one row per class pair, one column per biomarker, with stars.

    Pairs come from the first biomarker's ``pairwise`` list and are looked up by name in the others (a class
    without values for one biomarker shows ``–`` there).
    """
    pairs: list[tuple[str, str]] = []
    for res in results.values():
        for t in res["pairwise"]:
            if (t["a"], t["b"]) not in pairs:
                pairs.append((t["a"], t["b"]))
    lookup = {b: {(t["a"], t["b"]): t for t in res["pairwise"]} for b, res in results.items()}
    rows = []
    for a, b in pairs:
        cells = [format_p(lookup[m].get((a, b), {}).get("p")) for m in results]
        rows.append([f"{a} vs {b}", *cells])
    return markdown_table(["pair", *[titles[b] for b in results]], rows)
