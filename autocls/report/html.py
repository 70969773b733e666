"""``autocls report``: one self-contained HTML page about a saved ensemble.

Sections: the class distribution, a grid of augmented training samples, every fold's learning
curves, the out-of-fold confusion matrix, per-class precision/recall/F1/support, the most confused
class pairs with thumbnails, the images most likely mislabelled (confident learning, cleanlab), and,
when the study is given, its optimisation history and parameter importances, and (with the study's
artifact store) the figures the search uploaded for each member trial, whichever machine ran it.
Figures are inline SVG and thumbnails base64 PNG, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.artifacts import get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound
from PIL import Image

from autocls.data.images import load_square
from autocls.data.multilabel import parse_label_sets
from autocls.model.calibration import reliability, scale
from autocls.model.ensemble import OOF_FILE
from autocls.model.manifest import MANIFEST, Manifest
from autocls.model.views import describe_steps
from autocls.report import plots
from autocls.report.neardup import SIMILARITY, near_duplicates, training_features
from autocls.report.tables import evaluation_tables, label_issues, learning_curves, multilabel_tables
from autocls.runtime.errors import AutoclsError
from autocls.storage.artifacts import read_bytes
from autocls.storage.records import PORTFOLIO_PROBES
from autocls.train.augment import create_augmentation
from autocls.train.config import TrainConfig

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

THUMB = 72
STYLE = """
body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;font-size:11px;text-align:center}.figs{display:flex;flex-wrap:wrap;gap:12px}
"""


def thumbnail(path: str | Path, size: int = THUMB) -> str:
    """An ``<img>`` with the image inlined as base64 PNG (a grey box if it cannot be read)."""
    try:
        array = load_square(path, size)
    except (OSError, ValueError):
        array = np.full((size, size, 3), 200, dtype=np.uint8)
    return _img(array)


def _img(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    rows = []
    for index, row in zip(frame.index, frame.itertuples(index=False), strict=True):  # keeps int columns int
        cells = [float_format.format(v) if isinstance(v, float) else escape(str(v)) for v in row]
        rows.append(f"<tr><td>{escape(str(index))}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _augmented_grid(oof: pd.DataFrame, config: TrainConfig, decode_size: int, count: int = 16) -> str:
    augment = create_augmentation(config.augmentation, config.random_erasing)
    rng = np.random.default_rng(0)
    picks = oof.iloc[rng.choice(len(oof), size=min(count, len(oof)), replace=False)]
    figures = []
    for _, row in picks.iterrows():
        try:
            image = torch.from_numpy(load_square(row["path"], decode_size)).permute(2, 0, 1)
        except (OSError, ValueError):
            continue
        shown = augment(image[None])[0] * 255 if augment is not None else image.float()
        shown = torch.nn.functional.interpolate(shown[None], size=(THUMB, THUMB), mode="bilinear")[0]
        array = shown.clamp(0, 255).byte().permute(1, 2, 0).numpy()
        figures.append(f"<figure>{_img(array)}<figcaption>{escape(str(row['true_label']))}</figcaption></figure>")
    return f'<div class="grid">{"".join(figures)}</div>'


def _confused_pairs(oof: pd.DataFrame, top: int = 6, per_pair: int = 4) -> str:
    wrong = oof[oof["true_label"].astype(str) != oof["label"].astype(str)]
    if wrong.empty:
        return "<p>No out-of-fold mistakes.</p>"
    pairs = wrong.groupby(["true_label", "label"]).size().sort_values(ascending=False).head(top)
    blocks = []
    for (true, predicted), count in pairs.items():
        examples = wrong[(wrong["true_label"] == true) & (wrong["label"] == predicted)].nlargest(per_pair, "confidence")
        thumbs = "".join(f"<figure>{thumbnail(p)}</figure>" for p in examples["path"])
        blocks.append(
            f"<h3>{escape(str(true))} taken for {escape(str(predicted))}: {count} images</h3>"
            f'<div class="grid">{thumbs}</div>'
        )
    return "".join(blocks)


def _likely_mislabelled(oof: pd.DataFrame, names: list[str], top: int = 12, truth: np.ndarray | None = None) -> str:
    """``truth``: a multi-label model's label matrix (single-label classes are read from ``oof``)."""
    multilabel = truth is not None
    labels = truth if multilabel else oof["true_label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    probs = oof[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    found = label_issues(labels, probs)
    confidence = (lambda row: "") if multilabel else (lambda row: f" ({row['confidence']:.2f})")
    figures = [
        f"<figure>{thumbnail(row['path'])}<figcaption>labelled {escape(str(row['true_label']))}<br>"
        f"predicted {escape(str(row['label']))}{confidence(row)}<br>{escape(Path(row['path']).name)}"
        "</figcaption></figure>"
        for _, row in oof.iloc[found[:top]].iterrows()
    ]
    return (
        f"<p>{len(found)} of {len(oof)} images are likely mislabelled by confident learning on the out-of-fold "
        f"probabilities (cleanlab); the {min(top, len(found))} most likely:</p>"
        f'<div class="grid">{"".join(figures)}</div>'
    )


def _study_sections(study: optuna.Study) -> str:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return ""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values, best, running = [], [], None
    for trial in sorted(done, key=lambda t: t.number):
        values.append(trial.value)
        running = trial.value if running is None else (max if maximize else min)(running, trial.value)
        best.append(running)
    history = plots.line_chart(
        {"trial value": values, "best so far": best},
        f"optimisation history of {study.study_name}",
        x_label="completed trial",
    )
    section = f"<h2>Optimisation history</h2>{history}"
    if len(done) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):
            importances = {}
        if importances:
            section += "<h2>Parameter importances</h2>" + plots.bar_chart(
                importances, "parameter importance (Optuna default evaluator)"
            )
    return section + _portfolio_probes(study)


def _portfolio_probes(study: optuna.Study) -> str:
    """The warm-start recipes' first rung (:mod:`autocls.study.halving`): scores, time, which went on."""
    probed = study.user_attrs.get(PORTFOLIO_PROBES)
    if not probed:
        return ""
    rows = {
        p["backbone"]: {"score": p["score"], "seconds": round(p["seconds"]), "went on": p["backbone"] in probed["kept"]}
        for p in probed["probes"]
    }
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("recipe on")
    fidelity = probed["fidelity"]
    order = " &gt; ".join(escape(b) for b in probed["kept"])
    return (
        f"<h2>Warm-start probes</h2><p>Each recipe trained the first fold at {fidelity.get('resolution', '-')} px "
        f"for {fidelity.get('epochs', '-')} epochs before the search; the recipes that went on, best first: "
        f"{order}.</p>" + _table(frame, "{:.4f}")
    )


def _members(manifest: Manifest) -> str:
    """Which trials the model averages, with what weight, and what selection and TTA scored on OOF."""
    if manifest.format_version < 2 or manifest.distilled_from:  # one trial (format 1), or a student
        return ""
    rows = pd.DataFrame(
        [
            {
                "trial": m.trial,
                "weight": round(m.weight, 3),
                "backbone": m.config.backbone,
                "resolution": m.config.resolution,
                "cv score": round(m.cv_score, 4) if m.cv_score is not None else "",
                "oof score": round(m.oof_score, 4) if m.oof_score is not None else "",
            }
            for m in manifest.members
        ]
    ).set_index("trial")
    metric = manifest.scores.metric
    tta = list(manifest.tta) or ["none"]
    selection = manifest.selection
    if selection is None:  # written before refit recorded its selection
        return "<h2>Members</h2>" + _table(rows) + f"<p>test-time views: {escape(', '.join(tta))}.</p>"
    criterion = selection.criterion
    on = (
        f" (members and weights chosen on out-of-fold {escape(criterion)}: "
        f"{selection.oof_criterion_selected:.4f} against {selection.oof_criterion_best_trial:.4f})"
        if criterion != metric
        else ""
    )
    note = (
        f"<p>chosen on out-of-fold predictions among trials {list(selection.candidates)}: selected ensemble "
        f"{selection.oof_score_selected:.4f}, best trial alone "
        f"{selection.oof_score_best_trial:.4f}{on}; test-time views: {escape(', '.join(tta))} "
        f"(out-of-fold {escape(metric)} after each: {escape(describe_steps(selection.oof_score_tta))}).</p>"
    )
    return "<h2>Members</h2>" + _table(rows) + note


def _near_duplicates_across_classes(model_dir: Path, decode_size: int, top: int = 8) -> str:
    """Pairs of training images under different labels that are copies of each other (resized or
    re-encoded: see :mod:`autocls.report.neardup`): one of the two labels is likely wrong."""
    train = training_features(model_dir, decode_size)
    oof = train.table
    pairs = near_duplicates(train.directions, oof["true_label"].to_numpy(), top=top)
    figures = []
    for pair in pairs.closest:
        a, b = oof.iloc[pair.first], oof.iloc[pair.second]
        figures.append(
            "".join(
                f"<figure>{thumbnail(row['path'])}<figcaption>{escape(str(row['true_label']))}<br>"
                f"{escape(Path(row['path']).name)}</figcaption></figure>"
                for row in (a, b)
            )
            + f"<p>similarity {pair.similarity:.3f}</p>"
        )
    return (
        f"<p>{pairs.count} pairs of images labelled differently are copies of each other, resized or re-encoded "
        f"(centred thumbnails at least {SIMILARITY} similar); the {len(pairs.closest)} closest:</p>"
        f'<div class="grid">{"".join(figures)}</div>'
    )


def _distilled(manifest: Manifest) -> str:
    """What a distilled student was trained from; its out-of-fold tables below are the teacher's."""
    source = manifest.distilled_from
    if not source:
        return ""
    return (
        f"<p>trained on the soft targets of {escape(source.model)} (members "
        f"{escape(str([m.trial for m in source.members]))}, label weight {source.label_weight}); on the "
        f"training images it agrees with the teacher on {source.agreement_on_training_images:.1%} and takes "
        f"{source.student_ms_per_image:.2f} ms per image against the teacher's "
        f"{source.teacher_ms_per_image:.2f}. "
        "A student has no out-of-fold predictions of its own: the confusion matrix, per-class table, calibration "
        "and likely mislabelled images below are the teacher's out-of-fold predictions (properties of the data "
        "as the teacher saw it); score the student on held-out images with autocls evaluate.</p>"
    )


def _calibration(oof: pd.DataFrame, names: list[str], manifest: Manifest) -> str:
    """Reliability of the out-of-fold confidences with and without the temperature refit fitted."""
    fitted = manifest.calibration
    if not fitted:
        return ""
    probs = oof[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    labels = oof["true_label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    temperature = fitted.temperature
    raw = scale(probs, 1.0 / temperature)  # the saved out-of-fold probabilities are the calibrated ones
    curves = {
        f"before (ECE {fitted.ece_before:.3f})": reliability(raw, labels),
        f"after (ECE {fitted.ece_after:.3f})": reliability(probs, labels),
    }
    return (
        "<h2>Calibration</h2>"
        f"<p>temperature {temperature:.3f}, fitted on the out-of-fold predictions; negative log-likelihood "
        f"{fitted.nll_before:.4f} -> {fitted.nll_after:.4f}.</p>"
        + plots.reliability_diagram(curves, "out-of-fold reliability")
    )


def _multilabel_sections(oof: pd.DataFrame, names: list[str], thresholds: np.ndarray, labels: np.ndarray) -> list[str]:
    """A multi-label model's out-of-fold scores at its ``thresholds``: the per-label table, how often
    labels occur together, and which labels are predicted on images that do not have them."""
    probs = oof[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    tables = multilabel_tables(labels, probs, thresholds, names)
    confusions = tables["confusions"].head(10)
    blocks = []
    for row in confusions.head(4).itertuples(index=False):
        true, extra = names.index(row[0]), names.index(row[1])
        hit = oof[(labels[:, true] == 1) & (labels[:, extra] == 0) & (probs[:, extra] >= thresholds[extra])]
        thumbs = "".join(f"<figure>{thumbnail(p)}</figure>" for p in hit.nlargest(4, f"prob_{row[1]}")["path"])
        blocks.append(f"<h3>{escape(row[1])} predicted on {escape(row[0])} images: {row[2]}</h3>")
        blocks.append(f'<div class="grid">{thumbs}</div>')
    return [
        "<h2>Per-label precision, recall, F1, average precision</h2>",
        f"<p>out-of-fold mAP <b>{tables['mAP']:.4f}</b>, macro F1 {tables['macro_f1']:.4f}, micro F1 "
        f"{tables['micro_f1']:.4f}, Hamming loss {tables['hamming']:.4f}, exact label sets {tables['exact_match']:.4f} "
        "at the thresholds chosen on these predictions (so slightly optimistic; evaluate scores held-out images).</p>",
        _table(tables["per_label"]),
        "<h2>Label co-occurrence</h2>",
        plots.confusion_matrix(
            tables["co_occurrence"].to_numpy(), names, "images with both labels", axes="labels (rows: labels)"
        ),
        "<h2>Most confused labels</h2>",
        _table(confusions.set_index("true label")) if not confusions.empty else "<p>No label predicted wrongly.</p>",
        "".join(blocks),
    ]


def _member_figures(manifest: Manifest, study: optuna.Study, store: ArtifactStore) -> str:
    """The SVG figures the search uploaded for each member trial (learning curves, confusion matrix)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    blocks = []
    for member in manifest.members:
        trial = trials.get(member.trial) if member.trial is not None else None
        if trial is None:
            continue
        figures = []
        for meta in get_all_artifact_meta(trial, storage=study._storage):
            if meta.mimetype != "image/svg+xml":
                continue
            try:
                figures.append(read_bytes(store, meta.artifact_id).decode("utf-8"))
            except ArtifactNotFound:  # removed in the dashboard, or uploaded to another store
                continue
        if figures:
            blocks.append(f'<h3>trial {trial.number}</h3><div class="figs">{"".join(figures)}</div>')
    return "<h2>Member trials' figures from the search</h2>" + "".join(blocks) if blocks else ""


def build_report(
    model_dir: str | Path, study: optuna.Study | None = None, artifacts: ArtifactStore | None = None
) -> str:
    """The report's HTML for the ensemble in ``model_dir`` (and its study and artifact store, if given)."""
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).is_file() or not (model_dir / OOF_FILE).is_file():
        raise AutoclsError(f"{model_dir}: not a model folder written by autocls refit (no {MANIFEST}/{OOF_FILE}).")
    manifest = Manifest.read(model_dir / MANIFEST)
    oof = pd.read_csv(
        model_dir / OOF_FILE,
        dtype={"label": str, "true_label": str},
        keep_default_na=False,  # a multi-label image with no label has an empty cell, not a missing one
        encoding_errors="surrogateescape",
    )
    config = manifest.lead.config
    names = list(manifest.class_names)
    multilabel = manifest.multilabel
    scores, origin = manifest.scores, manifest.provenance
    curves = learning_curves([[asdict(e) for e in fold] for fold in scores.history], scores.metric)
    title = f"autocls report: {config.backbone} ensemble of {len(scores.folds)} folds"
    if manifest.distilled_from:
        title = f"autocls report: {config.backbone} student distilled from an ensemble"
    if multilabel:
        truth = parse_label_sets(list(oof["true_label"]), names)
        counts = pd.Series(truth.sum(axis=0), index=names)
        oof_score = scores.oof_score if scores.oof_score is not None else float("nan")
        score = f"out-of-fold {escape(scores.metric)} <b>{oof_score:.4f}</b>"
        evaluation = _multilabel_sections(oof, names, np.asarray(manifest.thresholds.values), truth)
    else:
        truth = None
        index = {n: i for i, n in enumerate(names)}
        tables = evaluation_tables(oof["true_label"].map(index).to_numpy(), oof["label"].map(index).to_numpy(), names)
        counts = oof["true_label"].value_counts().reindex(names, fill_value=0)
        score = (
            f"out-of-fold accuracy <b>{tables['accuracy']:.4f}</b>, balanced accuracy {tables['balanced_accuracy']:.4f}"
        )
        evaluation = [
            "<h2>Out-of-fold confusion matrix</h2>",
            plots.confusion_matrix(tables["confusion_matrix"].to_numpy(), names, "out-of-fold confusion matrix"),
            _calibration(oof, names, manifest),
            "<h2>Per-class precision, recall, F1</h2>",
            _table(tables["per_class"].rename_axis("class")),
            "<h2>Most confused class pairs</h2>",
            _confused_pairs(oof),
        ]
    body = [
        f"<h1>{escape(title)}</h1>",
        _distilled(manifest),
        f"<p>study {escape(str(origin.study))}, trial {origin.trial}; {score}, {len(oof)} images; "
        f"fold models {origin.fold_models or ''}.</p>",
        _members(manifest),
        "<h2>Label distribution</h2>" if multilabel else "<h2>Class distribution</h2>",
        plots.bar_chart(
            {n: float(c) for n, c in counts.items()},
            "images per label" if multilabel else "images per class",
            value_format="{:.0f}",
        ),
        "<h2>Augmented training samples</h2>",
        f"<p>augmentation {escape(config.augmentation)}, random erasing {config.random_erasing} "
        "(MixUp/CutMix mix whole batches and are not shown)</p>",
        _augmented_grid(oof, config, manifest.decode_size),
        "<h2>Learning curves</h2>",
        f'<div class="figs">{"".join(curves.values())}</div>',
        *evaluation,
        "<h2>Images most likely mislabelled (confident learning)</h2>",
        _likely_mislabelled(oof, names, truth=truth),
        "<h2>Near-duplicate images in different classes</h2>",
        _near_duplicates_across_classes(model_dir, manifest.decode_size),
    ]
    if study is not None:
        body.append(_study_sections(study))
        if artifacts is not None:
            body.append(_member_figures(manifest, study, artifacts))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(
    model_dir: str | Path, out: str | Path, study: optuna.Study | None = None, artifacts: ArtifactStore | None = None
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(model_dir, study, artifacts), encoding="utf-8")
    return out
