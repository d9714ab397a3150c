"""Mutation scores per module.

    python tests/helpers/mutation_scores.py
        the score of the last `mutmut run` in the current directory (after `make mutants`);
    python tests/helpers/mutation_scores.py --module report.stats [--tests T ...] [MUTANT ...]
        one module alone: mutmut runs in a scratch copy of the committed tree (HEAD, so edits in
        progress in the checkout cannot break it), with only that module mutated and only the fast
        tests that reach it selected (MODULE_TESTS), then prints its score. The copy's mutants/
        is kept, so a second run after new tests are committed checks only what changed; naming
        mutants reruns them.
    python tests/helpers/mutation_scores.py --module report.stats --sample 300 --seed 0
        a seeded uniform sample of the module's mutants (when the whole module does not fit the
        time there is): its score with a 95% Clopper-Pearson interval, counting the sample only.
    python tests/helpers/mutation_scores.py --module losses.zoo losses.registry --sample 30 --seed 0
        several modules with the same test selection in one copy (one stats run for all of them;
        a sample is drawn per module).

A mutant counts as killed when a test failed on it (or it timed out); survivors and mutants
that no test reaches both count against the module, and are listed so each can be read with
`mutmut show NAME` and either get a test or a reason it is equivalent (docs/mutation.md)."""

import argparse
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

GOAL = 0.85
KILLED = {"killed", "timeout"}
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The fast tests that reach each module (the whole selection's stats run costs minutes per test file).
MODULE_TESTS = {
    "report.stats": ["tests/test_stats.py", "tests/test_stats_components.py", "tests/test_report.py", "tests/test_report_tables.py",
                     "tests/test_properties.py"],
    "report.study": ["tests/test_report.py", "tests/test_report_tables.py"],
    "evaluate.cka": ["tests/test_evaluate.py"],
    "evaluate.clip_eval": ["tests/test_evaluate.py"],
    "distill.train": ["tests/test_distill.py"],
    "losses.region": ["tests/test_region_loss.py"],
    "vqa.metrics": ["tests/test_vqa_metrics.py", "tests/test_vqa_holes.py", "tests/test_properties.py"],
}
LOSS_TESTS = ["tests/test_loss_zoo.py", "tests/test_loss_backends.py", "tests/test_properties.py"]


def scores(cwd: Path = Path("."), only: set[str] | None = None) -> int:
    out = subprocess.run([str(BIN / "mutmut"), "results", "--all", "true"], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    by_module: dict[str, Counter] = defaultdict(Counter)
    open_ones: dict[str, list[str]] = defaultdict(list)
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name or (only is not None and name not in only):
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
        if only is not None and total:
            from scipy.stats import binomtest

            ci = binomtest(killed, total).proportion_ci(0.95, method="exact")
            drawn = sum(n.rsplit(".", 1)[0] == module for n in only)
            print(f"{'':45s} sample of {drawn}: 95% CI [{ci.low:.1%}, {ci.high:.1%}] (Clopper-Pearson)")
    for module, names in sorted(open_ones.items()):
        print(f"\n{module}: {len(names)} not killed")
        print("\n".join(f"  {n}" + (f" ×{names.count(n)}" if names.count(n) > 1 else "")
                        for n in dict.fromkeys(names)))
    return 0


def sample_of(copy: Path, source: str, env: dict, size: int, seed: int) -> list[str]:
    """`size` mutant names drawn uniformly (seeded) from the module's; a first call generates the
    mutants and collects the tests' stats (a name that matches nothing makes mutmut stop there)."""
    meta = copy / "mutants" / f"{source}.meta"
    if not meta.exists():
        subprocess.run([str(BIN / "mutmut"), "run", "--max-children", "1", "no_such_mutant"], cwd=copy, env=env,
                       check=False)
    names = sorted(json.loads(meta.read_text())["exit_code_by_key"])
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def unchecked(copy: Path, source: str, names: list[str]) -> list[str]:
    """The names without a result yet (a rerun of the same sample resumes it)."""
    done = json.loads((copy / "mutants" / f"{source}.meta").read_text())["exit_code_by_key"]
    return [n for n in names if done.get(n) is None]


def run_modules(modules: list[str], tests: list[str] | None, mutants: list[str], root: Path, children: int,
               sample: int | None = None, seed: int = 0) -> int:
    selections = {m: tests or MODULE_TESTS.get(m) or (LOSS_TESTS if m.startswith("losses.") else None)
                  for m in modules}
    if None in selections.values():
        sys.exit(f"no test selection known for {[m for m, t in selections.items() if t is None]}: pass --tests")
    if len({tuple(t) for t in selections.values()}) > 1:
        sys.exit(f"{modules} have different test selections: run them one at a time")
    tests = selections[modules[0]]
    copy = root / "+".join(modules)
    copy.mkdir(parents=True, exist_ok=True)
    # the committed tree over the previous copy (mutants/ and its cached results stay)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    present = [t for t in tests if (copy / t).exists()]
    sources = ["src/clipdistill/" + m.replace(".", "/") + ".py" for m in modules]
    pyproject = (copy / "pyproject.toml").read_text()
    narrowed = (f"only_mutate = {json.dumps(sources)}\n"
                f"pytest_add_cli_args_test_selection = {json.dumps([*present, '-m', 'not slow'])}\n")
    pyproject = re.sub(r"only_mutate = \[.*?\]\n", "", pyproject, flags=re.DOTALL)
    pyproject = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]\n", narrowed, pyproject, flags=re.DOTALL)
    (copy / "pyproject.toml").write_text(pyproject)
    # the session fixtures built once and reused by the mutants they cannot hide (tests/fixture_cache.py)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "CLIPDISTILL_FIXTURE_CACHE": str(copy / "mutants" / ".fixture-cache")}
    drawn = [n for source in sources for n in sample_of(copy, source, env, sample, seed)] if sample else None
    to_run = [n for source in sources for n in unchecked(copy, source, drawn)] if drawn else mutants
    if to_run or not drawn:
        subprocess.run(["nice", str(BIN / "mutmut"), "run", "--max-children", str(children), *to_run],
                       cwd=copy, env=env, check=False)
    return scores(copy, set(drawn) if drawn else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", nargs="+", help="e.g. report.stats (under src/clipdistill/); several share one copy")
    ap.add_argument("--tests", nargs="+", help="the test files to select (default: MODULE_TESTS)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/clipdistill-mutants"), help="where the copies live")
    ap.add_argument("--children", type=int, default=1)
    ap.add_argument("--sample", type=int, help="check a seeded uniform sample of this many mutants only")
    ap.add_argument("--seed", type=int, default=0, help="the sample's seed")
    ap.add_argument("mutants", nargs="*", help="mutant names or globs to (re)run")
    args = ap.parse_args()
    if args.module:
        return run_modules(args.module, args.tests, args.mutants, args.dir, args.children, args.sample, args.seed)
    return scores()


if __name__ == "__main__":
    sys.exit(main())
