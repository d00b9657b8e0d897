"""Typed Parquet export of recordings: schema, flattening of the IME envelope, dataset writer, CLI glue."""
