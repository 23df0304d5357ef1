"""Print the mutation score of the last `mutmut run` and the mutants no test killed (`make mutate` calls it).

score = (killed + timeout) / (every mutant except those mutmut skipped). A mutant "without tests" (no unit
test runs the function it changes) counts as not killed, like a survivor: a function whose mistakes no test
can see is exactly what the score is for. Exit status 1 when the score is below --min.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=90.0, help="fail below this score in percent (default 90)")
    parser.add_argument("--mutmut", default="mutmut", help="the mutmut executable")
    parser.add_argument("--show", action="store_true", help="print the diff of every mutant that was not killed")
    args = parser.parse_args(argv)

    subprocess.run([args.mutmut, "export-cicd-stats"], check=True, capture_output=True)
    stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
    killed = stats["killed"] + stats["timeout"]
    considered = stats["total"] - stats["skipped"]
    score = 100.0 * killed / max(considered, 1)

    listing = subprocess.run([args.mutmut, "results"], check=True, capture_output=True, text=True).stdout
    alive = [line.strip() for line in listing.splitlines() if ":" in line]
    print("\n".join(alive) if alive else "no surviving mutants")
    if args.show:
        for line in alive:
            name = line.split(":")[0].strip()
            print(subprocess.run([args.mutmut, "show", name], capture_output=True, text=True).stdout)
    print(f"\nmutation score {score:.1f} %: {killed} of {considered} mutants killed "
          f"({stats['survived']} survived, {stats['no_tests']} without tests, {stats['suspicious']} suspicious, "
          f"{stats['timeout']} timed out (counted as killed), {stats['skipped']} skipped)")
    return 0 if score >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
