"""Token sampling and incremental detokenization."""
