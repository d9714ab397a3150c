"""Score per module of the last `mutmut run` (run from the project root after `make mutants`).

A mutant counts as killed when a test failed on it (or it timed out); survivors and mutants
that no test reaches both count against the module, and are listed so each can be read with
`mutmut show NAME` and either get a test or a reason it is equivalent."""

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

GOAL = 0.85
KILLED = {"killed", "timeout"}


def main() -> int:
    out = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"],
                         capture_output=True, text=True, check=True).stdout
    by_module: dict[str, Counter] = defaultdict(Counter)
    open_ones: dict[str, list[str]] = defaultdict(list)
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.rsplit(".", 1)[0]
        by_module[module][status] += 1
        if status == "no tests":  # usually whole functions: one line each
            function = name.rsplit("__mutmut_", 1)[0]
            open_ones[module].append(f"{function}: every mutant (no test reaches it)")
        elif status not in KILLED | {"not checked", "skipped"}:
            open_ones[module].append(f"{name} ({status})")
    if not by_module:
        print("no mutants: run `make mutants` first")
        return 1
    print(f"{'module':45s} {'killed':>7s} {'total':>6s} {'score':>6s}  (goal {GOAL:.0%})")
    for module, counts in sorted(by_module.items()):
        total = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
        killed = sum(counts[s] for s in KILLED)
        score = f"{killed / total:.0%}" if total else "-"
        pending = f"  ({counts['not checked']} not checked)" if counts["not checked"] else ""
        print(f"{module:45s} {killed:7d} {total:6d} {score:>6s}{pending}")
    for module, names in sorted(open_ones.items()):
        print(f"\n{module}: {len(names)} not killed")
        print("\n".join(f"  {n}" + (f" ×{names.count(n)}" if names.count(n) > 1 else "")
                        for n in dict.fromkeys(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
