"""Input formats -> canonical `Conversation` / `PreferencePair` (one small module per format).

`files.iter_raw(path)` streams raw records (dicts) with their origin from JSON, JSONL,
parquet, arrow and Hugging Face dataset folders; `parse(record, origin, options)` turns
one raw record into a canonical example, choosing the reader by `options.format` or,
for `auto`, by the record's keys. Readers raise `RecordError` for bad records; they know
nothing about models or tokenizers.
"""

from .base import FORMATS, ReaderOptions, parse, parse_columns

__all__ = ["FORMATS", "ReaderOptions", "parse", "parse_columns"]
