"""The pymilter daemon: the only package that imports Milter (thin adapters over policy/store)."""
