"""The exception hierarchy: every error txrelay raises on purpose is a TxRelayError."""


class TxRelayError(Exception):
    """An expected failure with a message fit to show a mail admin, one line."""


class ConfigError(TxRelayError):
    """The configuration file or an environment override is unreadable or invalid."""


class NotFound(TxRelayError):
    """An account, domain or connection named on the command line does not exist."""


class Conflict(TxRelayError):
    """The thing to create exists already, or the change breaks a rule of the data."""


class InvalidInput(TxRelayError):
    """A value given by the admin is malformed (domain name, List-Help, amount…)."""


class CheckFailed(TxRelayError):
    """A check (domain check, a key switch waiting for DNS) found something to fix: exit 1,
    whether a record is missing, different or DNS did not answer (the message says which)."""


class ServiceUnavailable(TxRelayError):
    """PostgreSQL or Redis cannot be reached or did not answer in time."""
