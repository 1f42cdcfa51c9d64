"""Pipeline stages: each a plain function over typed records, reading and writing JSONL in the run folder."""
