"""txrelay: a transactional e-mail relay that plugs into Postfix."""

__version__ = "0.1.0"
