"""The txrelay command line: click commands split by noun."""
