"""The Arrow types of JSONL fields carried into Parquet, inferred while the rows are validated:
inference.py holds `FieldTypes`, the scan's side; tree.py the tree of types a field's values have
been seen to hold and how a value widens it; signatures.py the scan's fast path for nested values;
arrow.py the Arrow types and columns a tree is written as."""
