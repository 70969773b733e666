#!/usr/bin/env bash
# Set up (if needed), then the whole loop offline on scikit-learn's bundled digits:
# write them as an image folder, search, refit the best trial as a fold ensemble, predict held-out images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
python examples/prepare_digits.py examples/data/digits
autocls search examples/data/digits/train --space fast --trials ${TRIALS:-4} --folds 3 --study digits --workdir autocls-runs
autocls refit --best --study digits --workdir autocls-runs
autocls predict autocls-runs/digits/model examples/data/digits/test --out autocls-runs/digits-test-predictions.csv --overwrite
python - <<'PY'
import pandas as pd
from pathlib import Path
table = pd.read_csv("autocls-runs/digits-test-predictions.csv", dtype={"label": str})
truth = table["path"].map(lambda p: Path(p).parent.name)
print(f"held-out accuracy on {len(table)} digits: {(truth == table['label']).mean():.4f}")
PY
