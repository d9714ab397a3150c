# One state for both runners: when a run ends (finished or failed), every stage Snakemake
# finished is recorded in dvc.lock, so `dvc status` and `dvc exp run` see it. After a kill
# (no handler runs) `clipdistill sync` does the same. --touch runs (what sync itself calls)
# only reorder timestamps of what DVC already verified: nothing to record.
import os


def _record_in_dvc():
    if workflow.touch or os.environ.get("CLIPDISTILL_NO_RECORD"):
        return
    try:
        from clipdistill.state import record_after_run
    except ImportError:  # Snakemake outside the project's environment (e.g. --sdm conda)
        print("clipdistill not importable here; run `clipdistill sync` to record this run in dvc.lock")
        return
    record_after_run(os.getcwd())  # the working directory, where dvc.yaml lives


onsuccess:
    _record_in_dvc()


onerror:
    _record_in_dvc()
