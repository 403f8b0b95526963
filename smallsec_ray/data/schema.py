"""The canonical row schema every shard is read into. One source of truth for column names."""

import pyarrow as pa

ID, TEXT, LABEL, SOURCE, GROUP = "id", "text", "label", "source", "group"
CANONICAL = (ID, TEXT, LABEL, SOURCE, GROUP)

# Added by the prepare stage and later stages.
SPLIT = "split"  # "train" | "validation" | "test"
TRUE_LABEL = "true_label"  # the label before injected noise (experiments)
PROBS = "probs"  # teacher class probabilities, list<float32>, one per class, sums to 1
TRUNCATED = "truncated"  # the teacher saw a truncated text
REASON = "reason"  # why a quarantined row was set aside
WEIGHT = "weight"  # optional per-row loss weight

SPLITS = ("train", "validation", "test")
# Column names the tool writes itself: an input column of one of these names is renamed input_<name>.
RESERVED = (*CANONICAL, SPLIT, PROBS, TRUNCATED, REASON, WEIGHT)

CANONICAL_SCHEMA = pa.schema([
    pa.field(ID, pa.string(), nullable=False),
    pa.field(TEXT, pa.string()),
    pa.field(LABEL, pa.string()),
    pa.field(SOURCE, pa.string()),
    pa.field(GROUP, pa.string()),
])

# Shard file metadata keys (Parquet key-value metadata).
META_CLASSES = b"smallsec.classes"  # JSON list of class names, in the order of `probs`
META_TEACHER = b"smallsec.teacher"  # JSON object naming the teacher (model, backend, fingerprint)
