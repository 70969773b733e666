"""What each ``autocls`` command does with its parsed arguments, and the checks on what it will write."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autocls.runtime.environment import WEIGHTS_ENV
from autocls.runtime.errors import AutoclsError


def check_output(
    out: Path, inputs: Sequence[str | Path] = (), models: Sequence[Path] = (), overwrite: bool = False
) -> None:
    """An output file is never one of the command's inputs, nor a file inside a model folder (the
    model would no longer load), nor an existing folder; an existing file is replaced only with
    ``--overwrite`` (autocls cannot tell whether it wrote it)."""
    target = out.expanduser().resolve()
    if target.is_dir():
        raise AutoclsError(f"--out {out} is a folder; give a file name.")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if target == source or (source.is_dir() and target.is_relative_to(source)):
            raise AutoclsError(f"--out {out} would write over the input {item}; give another file name.")
    for model in models:
        if target.is_relative_to(Path(model).expanduser().resolve()):
            raise AutoclsError(f"--out {out} is inside the model folder {model}; write it elsewhere.")
    if target.exists() and not overwrite:
        raise AutoclsError(f"--out {out} exists; add --overwrite to replace it, or give another file name.")


EVALUATION_FILES = (
    "metrics.json",
    "per_class.csv",
    "confusion_matrix.csv",
    "predictions.csv",
    "per_label.csv",  # a multi-label model's
    "label_confusions.csv",
)


def check_output_folder(folder: Path, names: Sequence[str], models: Sequence[Path], overwrite: bool) -> None:
    """A folder autocls writes ``names`` into: not a file, not a model folder, and none of those
    files replaced without ``--overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise AutoclsError(f"--out-dir {folder} is a file; give a folder.")
    for model in models:
        if folder.expanduser().resolve().is_relative_to(Path(model).expanduser().resolve()):
            raise AutoclsError(f"--out-dir {folder} is inside the model folder {model}; write it elsewhere.")
    present = [name for name in names if (folder / name).exists()]
    if present and not overwrite:
        raise AutoclsError(f"--out-dir {folder} already holds {', '.join(present)}; add --overwrite to replace them.")


def _search_request(args: argparse.Namespace):
    from autocls.data.discover import DataSpec
    from autocls.study.setup import SearchRequest

    return SearchRequest(
        data=DataSpec.of(
            args.data,
            args.labels,
            file_column=args.file_column,
            label_column=args.label_column,
            label_delimiter=args.label_delimiter,
        ),
        workdir=args.workdir,
        storage=args.storage,
        study_name=args.study,
        space=args.space,
        trials=args.trials,
        timeout=args.timeout,
        folds=args.folds,
        seed=args.seed,
        metric=args.metric,
        sampler=args.sampler,
        pruning=not args.no_pruning,
        warm_start=not args.no_warm_start,
        keep_trials=args.keep_trials,
        artifacts=args.artifacts,
        max_latency_ms=args.max_latency_ms,
        max_params=args.max_params,
        device=args.device,
        weights=args.weights or os.environ.get(WEIGHTS_ENV),
    )


def search_command(args: argparse.Namespace) -> int:
    import torch

    from autocls.runtime.control import resolve_device, stop_on_ctrl_c
    from autocls.runtime.threads import configure_threads
    from autocls.study.driver import run_search
    from autocls.study.progress import Reporter

    if args.workers > 1:
        from autocls.study.workers import run_workers

        return run_workers(_search_request(args), args.workers, quiet=args.quiet)
    configure_threads()
    reporter = Reporter(quiet=args.quiet)
    device = resolve_device(args.device)
    if device.type == "cuda" and (gpus := torch.cuda.device_count()) > 1:
        reporter.print(
            f"{gpus} GPUs visible, this search uses one: --workers {gpus} "
            "with a journal: or postgresql:// --storage runs one trial per GPU."
        )
    with stop_on_ctrl_c():
        study = run_search(_search_request(args), device, reporter)
    try:
        best = study.best_trial
    except ValueError:
        return 1
    print(f"best trial {best.number}: cv {study.metric_names[0] if study.metric_names else 'score'} {best.value:.4f}")
    print(f"next: autocls refit --best --study {study.study_name}")
    return 0


def refit_command(args: argparse.Namespace) -> int:
    from autocls.final.refit import refit
    from autocls.model.ensemble import check_model_destination
    from autocls.runtime.control import resolve_device
    from autocls.runtime.threads import configure_threads
    from autocls.storage.artifacts import study_artifacts
    from autocls.storage.trials import study_trial_store
    from autocls.storage.workdir import Workdir
    from autocls.study.progress import Reporter
    from autocls.study.setup import StudySetup, open_study
    from autocls.study.studydata import relocated

    configure_threads()
    if args.labels and not args.data:
        raise AutoclsError("--labels goes with --data: give the folder of the images too.")
    workdir = Workdir(args.workdir)
    if not args.storage and not workdir.database.is_file():
        raise AutoclsError(
            f"nothing was searched in {args.workdir} (no {workdir.database.name} there); run autocls search first, "
            "or point --workdir (or --storage) at the search."
        )
    storage = args.storage or workdir.storage_url()
    study = open_study(storage, args.study)
    out = args.out or workdir.model(study.study_name)
    overwrite = args.overwrite or args.out is None  # the default folder is autocls's own: refit replaces it
    store = study_trial_store(study, study_artifacts(study, args.artifacts, workdir), workdir)
    reporter = Reporter(quiet=args.quiet)
    check_model_destination(Path(out), overwrite, "--overwrite")  # in the CLI's words, before any work
    result = refit(
        study,
        out,
        trial_number=args.trial,
        device=resolve_device(args.device),
        reporter=reporter,
        store=store,
        retrain=args.retrain,
        workdir=workdir,
        overwrite=overwrite,
        best=args.best,
        max_views=args.views,
        data_source=relocated(StudySetup.from_study(study).data, args.data, args.labels) if args.data else None,
    )
    manifest = result.ensemble.manifest
    metric = result.cv.metric
    members = manifest.members
    tta = f" with test-time views {', '.join(manifest.tta)}" if manifest.tta else ""
    if len(members) > 1:
        parts = ", ".join(f"trial {m.trial} x{m.weight:.2f}" for m in members)
        print(f"saved an ensemble of {len(members)} trials ({parts}){tta} to {result.directory}")
    else:
        folds = " ".join(f"{f.best.val_score:.4f}" for f in result.cv.folds)
        trial = manifest.provenance.trial
        print(f"saved {len(result.cv.folds)}-fold ensemble of trial {trial}{tta} to {result.directory}")
        print(f"fold {metric}: {folds}; mean {result.cv.mean_score:.4f}")
    accuracy = f"; out-of-fold accuracy: {manifest.scores.oof_accuracy:.4f}" if metric != "accuracy" else ""
    if manifest.thresholds:
        f1 = manifest.thresholds
        accuracy = (
            f"; at the label thresholds, out-of-fold macro F1 {f1.oof_macro_f1:.4f}, micro F1 {f1.oof_micro_f1:.4f}"
        )
    print(f"out-of-fold {metric}: {result.oof_score:.4f}{accuracy}")
    return 0


def distill_command(args: argparse.Namespace) -> int:
    from autocls.final.distill import distill
    from autocls.runtime.threads import configure_threads
    from autocls.study.progress import Reporter

    configure_threads()
    weights = args.weights or os.environ.get(WEIGHTS_ENV)
    result = distill(
        args.model,
        args.out,
        data=args.data,
        labels_csv=args.labels,
        backbone=args.backbone,
        epochs=args.epochs,
        label_weight=args.label_weight,
        weights_dir=Path(weights) if weights else None,
        device=args.device,
        seed=args.seed,
        reporter=Reporter(quiet=args.quiet),
        overwrite=args.overwrite,
    )
    print(f"saved the student {result.student.config.backbone} to {result.directory} ({result.seconds:.0f} s)")
    print(
        f"on the training images: student agrees with the teacher on {result.agreement:.1%}; accuracy "
        f"{result.student_accuracy:.4f} (teacher {result.teacher_accuracy:.4f}); "
        f"{result.student_ms_per_image:.2f} ms per image (teacher {result.teacher_ms_per_image:.2f})"
    )
    print(f"held-out comparison: autocls evaluate {result.directory} TEST_DATA, and the same for {args.model}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from autocls.model.predict import predict
    from autocls.runtime.threads import configure_threads

    configure_threads()
    if args.out:
        check_output(args.out, args.inputs, [args.model], args.overwrite)
    frame = predict(args.model, args.inputs, args.device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False, errors="surrogateescape")  # file names as the OS has them
        if not args.quiet:
            print(f"wrote {len(frame)} predictions to {args.out}")
    else:
        text = frame.to_csv(index=False)  # a name that is not UTF-8 is printed escaped
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from autocls.report.evaluate import MultilabelEvaluation, evaluate, print_evaluation, write_evaluation
    from autocls.runtime.threads import configure_threads

    configure_threads()
    result = evaluate(args.model, args.data, args.labels, args.device, label_delimiter=args.label_delimiter)
    print_evaluation(result, Console())
    if args.out_dir:
        check_output_folder(args.out_dir, EVALUATION_FILES, [args.model], args.overwrite)
        write_evaluation(result, args.out_dir)
        if not args.quiet:
            tables = "per_label.csv" if isinstance(result, MultilabelEvaluation) else "per_class.csv"
            print(f"wrote metrics.json, {tables}, predictions.csv and more to {args.out_dir}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from autocls.model.manifest import MANIFEST, Manifest
    from autocls.report.html import write_report
    from autocls.storage.artifacts import study_artifacts
    from autocls.storage.rdb import open_storage
    from autocls.storage.workdir import Workdir
    from autocls.study.setup import open_study, study_names

    check_output(args.out, models=[args.model], overwrite=args.overwrite)
    manifest_path = args.model / MANIFEST
    name = args.study or (Manifest.read(manifest_path).provenance.study if manifest_path.is_file() else None)
    study = artifacts = None
    workdir = Workdir(args.workdir)
    if args.storage or workdir.database.is_file():  # the study's history, where it can be found
        url = args.storage or workdir.storage_url()
        if name in study_names(open_storage(url)):
            study = open_study(url, name)
            artifacts = study_artifacts(study, args.artifacts, workdir).store  # the members' figures
    out = write_report(args.model, args.out, study, artifacts)
    print(f"wrote {out}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from autocls.model.export import export

    check_output(args.out, models=[args.model], overwrite=args.overwrite)
    out = export(args.model, args.out, args.format)
    print(f"wrote {args.format} ensemble to {out}")
    return 0


def dashboard_command(args: argparse.Namespace) -> int:
    import socket

    from optuna_dashboard import run_server

    from autocls.storage.artifacts import dashboard_store
    from autocls.storage.rdb import open_storage, redact
    from autocls.storage.workdir import Workdir

    workdir = Workdir(args.workdir)
    url = args.storage or workdir.storage_url()
    with socket.socket() as probe:  # a port in use is one line now, not a traceback after "Listening"
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise AutoclsError(
                f"cannot serve on {args.host}:{args.port} ({err.strerror}); choose another --port."
            ) from None
    storage = open_storage(url)
    store, urls = dashboard_store(storage, args.artifacts, workdir)
    print(f"optuna-dashboard for {redact(url)} at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    print(f"trial figures from {', '.join(urls)}")
    run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0


def space_command(args: argparse.Namespace) -> int:
    from autocls.study.space import load_space

    space = load_space(args.name, check_backbones=False)  # the table needs no torch; a search checks the names
    table = Table(title=f"search space {space.name}: {space.description}")
    for column in ("dimension", "type", "choices or range", "condition"):
        table.add_column(column, overflow="fold")
    for dim in space.dimensions:
        condition = " and ".join(f"{k} in {list(v)}" for k, v in dim.when.items())
        table.add_row(dim.name, dim.kind, dim.describe(), condition)
    for name, value in space.fixed.items():
        table.add_row(name, "fixed", str(value), "")
    Console().print(table)
    return 0


HANDLERS = {
    "search": search_command,
    "refit": refit_command,
    "distill": distill_command,
    "predict": predict_command,
    "evaluate": evaluate_command,
    "report": report_command,
    "export": export_command,
    "dashboard": dashboard_command,
    "space": space_command,
}
