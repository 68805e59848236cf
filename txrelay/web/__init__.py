"""The read-only web dashboard (`txrelay web`): Flask pages with pygal SVG charts."""
