"""Message corpora for the robustness tests (malformed and hostile input)."""
