"""The JSON Schema of the apply file (txrelay apply -f FILE)."""
