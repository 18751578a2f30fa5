"""`make bench`: run every benchmarks/bench_*.py (each writes benchmarks/results/<name>.json)."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = f"benchmarks.{path.stem}"
        print(f"== {name}", flush=True)
        try:
            result = importlib.import_module(name).main()
            print(json.dumps(result, indent=2, default=str))
        except Exception as e:  # keep going: one broken benchmark should not hide the others
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
    print(f"results in {HERE / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
