"""The ``autocls`` command line: its arguments, and errors turned into one line and an exit code.

What each command does is in :mod:`autocls.cli.commands`; modules are imported when a command runs,
so ``autocls predict`` never imports the search stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autocls import __version__
from autocls.runtime.environment import ARTIFACTS_ENV, STORAGE_ENV
from autocls.runtime.errors import SettingError, run_guarded
from autocls.train.config import check_setting, constraint

# the commands that open a study (and so import Optuna, whose log lines are turned down to errors);
# predict, evaluate, export and space never import it
STUDY_COMMANDS = frozenset({"search", "refit", "distill", "report", "dashboard"})


def _setting(name: str) -> Callable[[str], Any]:
    """An argparse type for setting ``name``: the flag's text read as the setting's type and checked
    against its constraint (:func:`autocls.train.config.check_setting`), so that a flag and the Python
    API refuse a value in the same words (argparse puts "argument --folds:" before them)."""
    kind = constraint(name).kind

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = text  # not a number: refused below as it was typed
        try:
            check_setting(name, value)
        except SettingError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = name  # argparse's name for the type in its own messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    # long, and one function on purpose: the declarations are a table of every command's flags,
    # read top to bottom (docs/cli.md is generated from it)
    parser = argparse.ArgumentParser(
        prog="autocls",
        description="Find the best image classifier for a folder of labelled images by transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"autocls {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, study: bool = True) -> None:
        p.add_argument("--quiet", action="store_true", help="print only warnings, errors and results")
        p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
        if study:
            p.add_argument("--workdir", type=Path, default=Path("autocls-runs"), help="default: ./autocls-runs")
            p.add_argument(
                "--storage",
                default=os.environ.get(STORAGE_ENV),
                help=f"Optuna storage URL (default: ${STORAGE_ENV}, else sqlite:///WORKDIR/autocls.db)",
            )
            p.add_argument("--study", help="study name (search: default from the data folder's name)")
            artifacts_option(p)

    def artifacts_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--artifacts",
            metavar="URL",
            default=os.environ.get(ARTIFACTS_ENV),
            help="the study's store of kept fold models and figures, shared by every machine: a folder or "
            f"s3://BUCKET/PREFIX (credentials from AWS_* variables); default ${ARTIFACTS_ENV}, else the store "
            "recorded on the study by the first search given one, else WORKDIR/artifacts",
        )

    search = commands.add_parser("search", help="run (or continue) a hyperparameter search")
    search.add_argument("data", help="folder of class sub-folders, or a CSV of file,label rows")
    search.add_argument("--labels", help="CSV of file,label rows for the images under DATA")
    search.add_argument("--file-column", help="CSV column of image paths (default: detected)")
    search.add_argument("--label-column", help="CSV column of labels (default: detected)")
    search.add_argument(
        "--label-delimiter",
        help="separator of an image's labels in a multi-label CSV (default ';', detected where a cell holds it)",
    )
    search.add_argument(
        "--space", help="search space name (default, fast) or .toml file; default: default on a GPU, fast on a CPU"
    )
    search.add_argument("--trials", type=_setting("trials"), default=20, help="target number of finished trials")
    search.add_argument(
        "--keep-trials",
        type=_setting("keep_trials"),
        metavar="N",
        help="keep the fold models of the study's best N trials for refit's ensemble selection, recorded on the "
        "study for every machine (default: the study's, else 5; disk: ~70 MB each for Lite0 x 5 folds)",
    )
    search.add_argument("--timeout", type=_setting("timeout"), help="stop starting trials after this many seconds")
    search.add_argument("--folds", type=_setting("folds"), help="folds of stratified cross-validation (default 5)")
    search.add_argument("--seed", type=_setting("seed"), help="seed for sampling, folds and training (default 0)")
    search.add_argument(
        "--metric",
        choices=["accuracy", "balanced_accuracy", "macro_f1", "log_loss"],
        help="what trials are scored by (default accuracy; balanced_accuracy when classes are 5:1 imbalanced)",
    )
    search.add_argument(
        "--workers",
        type=_setting("workers"),
        default=1,
        help="processes on this machine sharing the study, one GPU each when several are visible "
        "(needs a journal: or postgresql:// storage)",
    )
    search.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="default: tpe")
    search.add_argument("--no-pruning", action="store_true", help="train every trial to the end")
    search.add_argument("--no-warm-start", action="store_true", help="do not enqueue the known-good recipes first")
    search.add_argument("--weights", help="folder of pretrained checkpoints by model name ($AUTOCLS_WEIGHTS)")
    search.add_argument(
        "--max-latency-ms",
        type=_setting("max_latency_ms"),
        help="the delivered model's time per image (batch 1, this device, all fold models and views together); "
        "configurations that cannot keep it are not trained",
    )
    search.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic cuDNN and cuBLAS algorithms on a GPU, so that refit --retrain with it too trains "
        "the search's fold models again, bit for bit, on the same GPU model and software; slower training "
        "(see docs/gpu.md). Nothing changes on a CPU, which is deterministic already",
    )
    search.add_argument(
        "--max-params",
        type=_setting("max_params"),
        help="the delivered model's parameters, all fold models together; configurations over it are not trained",
    )
    common(search)

    refit = commands.add_parser(
        "refit",
        help="save the model the search recommends: an ensemble selected across the kept trials when it beats "
        "the best trial on out-of-fold predictions, else the best trial's fold ensemble",
    )
    which = refit.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best completed trial's k-fold ensemble")
    which.add_argument("--trial", type=int, help="this trial number instead of the best")
    refit.add_argument("--out", type=Path, help="model folder (default: WORKDIR/STUDY/model)")
    refit.add_argument(
        "--data",
        help="where the study's images are on this machine, if not where the search found them "
        "(another machine's mount, a moved folder: the same files under any path)",
    )
    refit.add_argument("--labels", help="with --data: the CSV of file,label rows, if not beside the data as before")
    refit.add_argument(
        "--retrain",
        action="store_true",
        help="train the fold models again even if the search kept them (all k folds, where a short "
        "budget's search trained fewer)",
    )
    refit.add_argument(
        "--overwrite", action="store_true", help="replace the autocls model in --out (the default folder: always)"
    )
    refit.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic cuDNN and cuBLAS algorithms on a GPU (as search --deterministic); slower training",
    )
    refit.add_argument(
        "--views",
        type=int,
        default=1,  # autocls.final.testtime.MAX_VIEWS (not imported here: --help stays fast)
        metavar="N",
        help="keep at most N test-time views (the horizontal flip) where they raise the out-of-fold score; "
        "each costs a forward pass per fold model when predicting; 0: none (default 1)",
    )
    common(refit)

    distill = commands.add_parser(
        "distill", help="train one student model on a saved ensemble's soft targets (one forward pass per image)"
    )
    distill.add_argument("model", type=Path, help="the teacher: a model folder written by autocls refit")
    distill.add_argument("data", nargs="?", help="training images (default: the data the teacher was trained on)")
    distill.add_argument("--labels", help="CSV of file,label rows for the images under DATA")
    distill.add_argument("--out", type=Path, required=True, help="folder for the student model")
    distill.add_argument("--backbone", help="timm model name for the student (default: the teacher's)")
    distill.add_argument("--epochs", type=_setting("epochs"), help="training epochs (default: the teacher's)")
    distill.add_argument(
        "--label-weight",
        type=_setting("label_weight"),
        default=0.0,
        help="weight of the one-hot labels in the targets, the rest being the teacher's probabilities (default 0)",
    )
    distill.add_argument("--weights", help="folder of pretrained checkpoints by model name ($AUTOCLS_WEIGHTS)")
    distill.add_argument("--seed", type=_setting("seed"), default=0, help="default 0")
    distill.add_argument("--overwrite", action="store_true", help="replace the autocls model in --out")
    common(distill, study=False)

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
    evaluate.add_argument(
        "--label-delimiter", help="separator of an image's labels, for a multi-label model (default: the model's)"
    )
    evaluate.add_argument(
        "--out-dir",
        type=Path,
        help="also write metrics.json, predictions.csv, per_class.csv, confusion_matrix.csv "
        "(multi-label: per_label.csv, label_confusions.csv)",
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace those files in --out-dir if they exist")
    common(evaluate, study=False)

    report = commands.add_parser("report", help="write a self-contained HTML report about a saved ensemble")
    report.add_argument("model", type=Path, help="model folder written by autocls refit")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="default: report.html")
    report.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    report.add_argument("--workdir", type=Path, default=Path("autocls-runs"), help="default: ./autocls-runs")
    report.add_argument("--storage", default=os.environ.get(STORAGE_ENV), help="add the study's history from here")
    report.add_argument("--study", help="the study (default: the one the model was refit from)")
    artifacts_option(report)

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
    artifacts_option(dashboard)

    space = commands.add_parser("space", help="inspect search spaces")
    space_commands = space.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    show = space_commands.add_parser("show", help="print a search space as a table")
    show.add_argument("name", help="built-in name or .toml path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from autocls.cli import commands
    from autocls.runtime.logs import setup_logging  # rich: not needed for --help and --version

    setup_logging(quiet=getattr(args, "quiet", False), optuna_errors_only=args.command in STUDY_COMMANDS)
    if getattr(args, "deterministic", False):
        from autocls.runtime.control import ask_for_determinism

        ask_for_determinism()  # before anything touches CUDA; --workers children inherit it
    interrupted = (
        "interrupted; finished trials are saved, run the same command to continue."
        if args.command == "search"
        else "interrupted before the command finished; a model folder is only ever replaced whole."
    )
    return run_guarded(lambda: commands.HANDLERS[args.command](args), debug=args.debug, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
