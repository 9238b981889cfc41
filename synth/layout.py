"""The run folder's layout: the names synth writes in it, and nothing else. Pure.

RUN_DIR/  spec.yaml  plan.parquet  run.json  README.md  .synth.lock
          data/        the dataset's shards (the shard format: synth.shards)
          rejected/    renders the curation gate rejected, as shards, kept for audit
          qc/          the curation judge: weights, record and the real train features
          untrained/   the random-weight baseline's model/ and its own data/ shards
          eval/        the evaluation's outputs
"""

from __future__ import annotations

DATA_DIR = "data"
REJECTED_DIR = "rejected"
QC_DIR = "qc"
UNTRAINED_DIR = "untrained"
EVAL_DIR = "eval"  # a later `synth run` of the same spec keeps it
RUN_RECORD = "run.json"  # synth.run_record
RUN_FILES = ("spec.yaml", "plan.parquet", RUN_RECORD, "README.md")
LOCK_FILE = ".synth.lock"
# A saved curation judge (synth/curate/judge.py): weights, record, real reference features.
JUDGE_WEIGHTS, JUDGE_RECORD, JUDGE_REFERENCE = (
    "judge.safetensors",
    "judge.json",
    "reference.safetensors",
)
JUDGE_FILES = (JUDGE_WEIGHTS, JUDGE_RECORD, JUDGE_REFERENCE)
# What a synth run folder may hold, so a run that crashed before run.json existed can resume.
RUN_ENTRIES = {*RUN_FILES, DATA_DIR, UNTRAINED_DIR, EVAL_DIR, LOCK_FILE, QC_DIR, REJECTED_DIR}
TEMP_PREFIX = ".tmp-"  # a write in progress (synth.storage): a crash can leave one


def is_run_entry(name: str) -> bool:
    """A name synth writes in a run folder, or the temporary file of one that a crash left."""
    return name in RUN_ENTRIES or name.removeprefix(TEMP_PREFIX) in RUN_ENTRIES
