"""Events: the schema, the records, the per-process event files."""
