"""Data: the JSONL record kinds (records) and importers for other published preference layouts (importers)."""

from .importers import FORMATS, UNPAIRED_FORMATS, ImportReport, import_preferences, import_records
from .records import (
    KINDS,
    PreferencePair,
    PromptRecord,
    Record,
    SFTExample,
    UnpairedExample,
    detect_kind,
    load_records,
    parse_record,
    read_jsonl,
    record_to_dict,
    write_jsonl,
)

__all__ = [
    "FORMATS",
    "KINDS",
    "ImportReport",
    "UNPAIRED_FORMATS",
    "import_records",
    "PreferencePair",
    "PromptRecord",
    "Record",
    "SFTExample",
    "UnpairedExample",
    "detect_kind",
    "import_preferences",
    "load_records",
    "parse_record",
    "read_jsonl",
    "record_to_dict",
    "write_jsonl",
]
