"""The ``autocls`` command line: search, refit, predict, space."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autocls import __version__
from autocls.errors import AutoclsError

STORAGE_ENV = "AUTOCLS_STORAGE"
WEIGHTS_ENV = "AUTOCLS_WEIGHTS"  # also named in autocls.backbones' missing-weights message


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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


EVALUATION_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "predictions.csv")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocls",
        description="Find the best image classifier for a folder of labelled images by transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"autocls {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, study: bool = True) -> None:
        p.add_argument("--quiet", action="store_true", help="print only warnings, errors and results")
        p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
        if study:
            p.add_argument("--workdir", type=Path, default=Path("autocls-runs"), help="default: ./autocls-runs")
            p.add_argument(
                "--storage",
                default=os.environ.get(STORAGE_ENV),
                help=f"Optuna storage URL (default: ${STORAGE_ENV}, else sqlite:///WORKDIR/autocls.db)",
            )
            p.add_argument("--study", help="study name (search: default from the data folder's name)")

    search = commands.add_parser("search", help="run (or continue) a hyperparameter search")
    search.add_argument("data", help="folder of class sub-folders, or a CSV of file,label rows")
    search.add_argument("--labels", help="CSV of file,label rows for the images under DATA")
    search.add_argument("--file-column", help="CSV column of image paths (default: detected)")
    search.add_argument("--label-column", help="CSV column of labels (default: detected)")
    search.add_argument(
        "--space", help="search space name (default, fast) or .toml file; default: default on a GPU, fast on a CPU"
    )
    search.add_argument("--trials", type=_positive_int, default=20, help="target number of finished trials")
    search.add_argument("--timeout", type=_seconds, help="stop starting trials after this many seconds")
    search.add_argument("--folds", type=_positive_int, help="folds of stratified cross-validation (default 5)")
    search.add_argument("--seed", type=int, help="seed for sampling, folds and training (default 0)")
    search.add_argument(
        "--metric",
        choices=["accuracy", "balanced_accuracy", "macro_f1", "log_loss"],
        help="what trials are scored by (default accuracy; balanced_accuracy when classes are 5:1 imbalanced)",
    )
    search.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes on this machine sharing the study, one GPU each when several are visible "
        "(needs a journal: or postgresql:// storage)",
    )
    search.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="default: tpe")
    search.add_argument("--no-pruning", action="store_true", help="train every trial to the end")
    search.add_argument("--no-warm-start", action="store_true", help="do not enqueue the known-good recipes first")
    search.add_argument("--weights", help="folder of pretrained checkpoints by model name ($AUTOCLS_WEIGHTS)")
    common(search)

    refit = commands.add_parser("refit", help="retrain a trial on every fold and save the fold ensemble")
    which = refit.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best completed trial (the default)")
    which.add_argument("--trial", type=int, help="this trial number instead of the best")
    refit.add_argument("--out", type=Path, help="model folder (default: WORKDIR/STUDY/model)")
    refit.add_argument(
        "--retrain", action="store_true", help="train the fold models again even if the search kept them"
    )
    refit.add_argument(
        "--overwrite", action="store_true", help="replace the autocls model in --out (the default folder: always)"
    )
    common(refit)

    predict = commands.add_parser("predict", help="predict images with a saved ensemble")
    predict.add_argument("model", type=Path, help="model folder written by autocls refit")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", type=Path, help="write the table as CSV here (default: print it)")
    predict.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    common(predict, study=False)

    evaluate = commands.add_parser("evaluate", help="score a saved ensemble on a labelled folder or CSV")
    evaluate.add_argument("model", type=Path, help="model folder written by autocls refit")
    evaluate.add_argument("data", help="folder of class sub-folders, or a CSV of file,label rows")
    evaluate.add_argument("--labels", help="CSV of file,label rows for the images under DATA")
    evaluate.add_argument("--out-dir", type=Path, help="also write metrics.json, per_class.csv, confusion_matrix.csv")
    evaluate.add_argument("--overwrite", action="store_true", help="replace those files in --out-dir if they exist")
    common(evaluate, study=False)

    report = commands.add_parser("report", help="write a self-contained HTML report about a saved ensemble")
    report.add_argument("model", type=Path, help="model folder written by autocls refit")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="default: report.html")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    report.add_argument("--workdir", type=Path, default=Path("autocls-runs"), help="default: ./autocls-runs")
    report.add_argument("--storage", default=os.environ.get(STORAGE_ENV), help="add the study's history from here")
    report.add_argument("--study", help="the study (default: the one the model was refit from)")

    export = commands.add_parser("export", help="write a saved ensemble as one TorchScript or ONNX graph")
    export.add_argument("model", type=Path, help="model folder written by autocls refit")
    export.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    export.add_argument("--out", type=Path, required=True, help="output file (.pt or .onnx)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the study storage and figures")
    dashboard.add_argument("--workdir", type=Path, default=Path("autocls-runs"), help="default: ./autocls-runs")
    dashboard.add_argument("--storage", default=os.environ.get(STORAGE_ENV), help="default as for search")
    dashboard.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    dashboard.add_argument("--port", type=int, default=8080)

    space = commands.add_parser("space", help="inspect search spaces")
    space_commands = space.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    show = space_commands.add_parser("show", help="print a search space as a table")
    show.add_argument("name", help="built-in name or .toml path")
    return parser


def _search_request(args: argparse.Namespace):
    from autocls.data import DataSpec
    from autocls.studysetup import SearchRequest

    return SearchRequest(
        data=DataSpec.of(args.data, args.labels, file_column=args.file_column, label_column=args.label_column),
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
        device=args.device,
        weights=args.weights or os.environ.get(WEIGHTS_ENV),
    )


def run_search(args: argparse.Namespace) -> int:
    from autocls.progress import Reporter
    from autocls.runtime import resolve_device, stop_on_ctrl_c
    from autocls.study import run_search
    from autocls.threads import configure_threads

    if args.workers > 1:
        return run_workers(args)
    configure_threads()
    reporter = Reporter(quiet=args.quiet)
    device = resolve_device(args.device)
    if device.type == "cuda" and torch_gpu_count() > 1:
        reporter.print(
            f"{torch_gpu_count()} GPUs visible, this search uses one: --workers {torch_gpu_count()} "
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


def run_workers(args: argparse.Namespace) -> int:
    """Create the study here, then run ``--workers`` search processes on it and wait for them all."""
    import subprocess

    from autocls.cost import CostModel
    from autocls.prepare import DATA_INDEX_FILE, check_same_data
    from autocls.progress import Reporter
    from autocls.runtime import resolve_device
    from autocls.storage import allows_several_processes, default_url, open_storage
    from autocls.studysetup import CACHE_DIR, create_or_continue
    from autocls.threads import available_cpus
    from autocls.workers import recover_dead_local_trials

    url = args.storage or default_url(args.workdir)
    if not allows_several_processes(url):
        raise AutoclsError(
            f"--workers {args.workers} needs a storage several processes can share, not SQLite: "
            f"--storage journal:{args.workdir / 'autocls.journal'} (this machine) or postgresql://... (any machine)."
        )
    request = _search_request(args)
    cost = CostModel(resolve_device(args.device), args.workdir / CACHE_DIR / "speeds.json")
    study, setup = create_or_continue(open_storage(url), request.study_name or request.data.name, request, cost)
    check_same_data(study, setup.data.discover(), args.workdir / study.study_name / DATA_INDEX_FILE)
    recover_dead_local_trials(study)  # once, here: workers started together would race for the same trials
    cores = available_cpus()
    base = dict(os.environ)
    if args.storage:
        base["AUTOCLS_STORAGE"] = args.storage  # the URL (and its password) stays out of argv and ps
    command = [sys.executable, "-m", "autocls.cli", "search", str(args.data), "--study", study.study_name, "--quiet"]
    for flag, value in (
        ("--workdir", args.workdir),
        ("--trials", args.trials),
        ("--timeout", args.timeout),
        ("--sampler", args.sampler),
        ("--device", args.device),
    ):
        if value is not None:
            command += [flag, str(value)]
    command += ["--no-pruning"] if args.no_pruning else []
    gpus = torch_gpu_count() if args.device != "cpu" else 0
    envs = worker_envs(args.workers, cores, gpus, base)
    workers = [subprocess.Popen(command, env=env) for env in envs]
    codes = [w.wait() for w in workers]
    Reporter(quiet=args.quiet).best_trials_table(study, study.metric_names[0] if study.metric_names else "score")
    failed = [c for c in codes if c not in (0, 1)]
    if failed:
        print(f"autocls: {len(failed)} of {args.workers} workers exited with errors ({failed}).", file=sys.stderr)
    return 0 if not failed else 1


def torch_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_envs(workers: int, cores: int, gpus: int, base: dict[str, str]) -> list[dict[str, str]]:
    """Each worker's environment: its share of the cores, its sampler seed and, with several GPUs,
    one GPU (round robin over ``CUDA_VISIBLE_DEVICES`` when set), so each trial has a GPU to itself."""
    visible = base.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = [g.strip() for g in visible.split(",")] if visible else [str(g) for g in range(gpus)]
    envs = []
    for i in range(workers):
        # each worker seeds its sampler differently, or all would propose the same first trials
        env = {**base, "AUTOCLS_THREADS": str(max(1, cores // workers)), "AUTOCLS_WORKER": str(i)}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % len(gpu_ids)]
        envs.append(env)
    return envs


def run_refit(args: argparse.Namespace) -> int:
    from autocls.progress import Reporter
    from autocls.refitter import refit
    from autocls.runtime import resolve_device
    from autocls.storage import default_url
    from autocls.studysetup import CACHE_DIR, open_study
    from autocls.threads import configure_threads
    from autocls.trialstore import TrialStore

    configure_threads()
    if not args.storage and not (args.workdir / "autocls.db").is_file():
        raise AutoclsError(
            f"nothing was searched in {args.workdir} (no autocls.db there); run autocls search first, "
            "or point --workdir (or --storage) at the search."
        )
    storage = args.storage or default_url(args.workdir)
    study = open_study(storage, args.study)
    out = args.out or args.workdir / study.study_name / "model"
    overwrite = args.overwrite or args.out is None  # the default folder is autocls's own: refit replaces it
    store = TrialStore(args.workdir / study.study_name / "trials")
    reporter = Reporter(quiet=args.quiet)
    cache = args.workdir / CACHE_DIR
    result = refit(study, out, args.trial, resolve_device(args.device), reporter, store, args.retrain, cache, overwrite)
    folds = " ".join(f"{f.best.val_score:.4f}" for f in result.cv.folds)
    metric = result.cv.metric
    trial = result.ensemble.manifest["trial"]
    print(f"saved {len(result.cv.folds)}-fold ensemble of trial {trial} to {result.directory}")
    print(f"fold {metric}: {folds}; mean {result.cv.mean_score:.4f}")
    accuracy = f"; out-of-fold accuracy: {result.cv.oof_score('accuracy'):.4f}" if metric != "accuracy" else ""
    print(f"out-of-fold {metric}: {result.cv.oof_score():.4f}{accuracy}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from autocls.predict import predict
    from autocls.threads import configure_threads

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


def run_evaluate(args: argparse.Namespace) -> int:
    from autocls.evaluate import evaluate, print_evaluation, write_evaluation
    from autocls.threads import configure_threads

    configure_threads()
    result = evaluate(args.model, args.data, args.labels, args.device)
    print_evaluation(result, Console())
    if args.out_dir:
        check_output_folder(args.out_dir, EVALUATION_FILES, [args.model], args.overwrite)
        write_evaluation(result, args.out_dir)
        if not args.quiet:
            print(f"wrote metrics.json, per_class.csv and confusion_matrix.csv to {args.out_dir}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    import json

    from autocls.htmlreport import write_report
    from autocls.storage import default_url, open_storage
    from autocls.studysetup import open_study, study_names

    check_output(args.out, models=[args.model], overwrite=args.overwrite)
    manifest_path = args.model / "manifest.json"
    name = args.study or (json.loads(manifest_path.read_text())["study"] if manifest_path.is_file() else None)
    study = None
    if args.storage or (args.workdir / "autocls.db").is_file():  # the study's history, where it can be found
        url = args.storage or default_url(args.workdir)
        if name in study_names(open_storage(url)):
            study = open_study(url, name)
    out = write_report(args.model, args.out, study)
    print(f"wrote {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from autocls.export import export

    check_output(args.out, models=[args.model], overwrite=args.overwrite)
    out = export(args.model, args.out, args.format)
    print(f"wrote {args.format} ensemble to {out}")
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    import socket

    from optuna_dashboard import run_server

    from autocls.artifacts import artifact_store
    from autocls.storage import default_url, open_storage, redact

    url = args.storage or default_url(args.workdir)
    with socket.socket() as probe:  # a port in use is one line now, not a traceback after "Listening"
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise AutoclsError(
                f"cannot serve on {args.host}:{args.port} ({err.strerror}); choose another --port."
            ) from None
    print(f"optuna-dashboard for {redact(url)} at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    run_server(open_storage(url), host=args.host, port=args.port, artifact_store=artifact_store(args.workdir))
    return 0


def run_space(args: argparse.Namespace) -> int:
    from autocls.space import load_space

    space = load_space(args.name)
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
    "search": run_search,
    "refit": run_refit,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "report": run_report,
    "export": run_export,
    "dashboard": run_dashboard,
    "space": run_space,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from autocls.progress import setup_logging

    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        with warnings.catch_warnings():
            # Optuna's ExperimentalWarning (heartbeats, TPE's group option, artifacts), matched by its
            # text so that predict and export need not import Optuna to silence it
            # (an ExperimentalWarning derives from Warning, not UserWarning; its texts say "X is
            # experimental (supported from v...)" or "Argument ``x`` is an experimental feature")
            warnings.filterwarnings("ignore", message=r".*\bis (an )?experimental\b", category=Warning)
            return HANDLERS[args.command](args)
    except AutoclsError as err:
        print(f"autocls: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autocls: interrupted; finished trials are saved, run the same command to continue.", file=sys.stderr)
        return 130
    except PermissionError as err:  # a read-only work folder or --out
        print(
            f"autocls: error: cannot write {err.filename or 'a file'}: permission denied; "
            "choose a folder you can write (--workdir, --out).",
            file=sys.stderr,
        )
        return 2
    except Exception as err:
        if args.debug:
            raise
        print(f"autocls: unexpected error: {err.__class__.__name__}: {err} (rerun with --debug)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
