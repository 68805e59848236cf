"""Pure relay decisions: values in, a typed Verdict out (no pymilter, Redis or PostgreSQL)."""
