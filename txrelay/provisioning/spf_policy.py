"""SPF (RFC 7208) as far as txrelay needs it: does a domain's record authorise the relay?

Evaluates a record for one of the relay's addresses (or networks) the way a receiver's
check_host() would, following include:, redirect=, a, mx, ip4, ip6, exists and all within
the RFC's limits (10 terms that cost a DNS lookup, 2 void lookups, 10 MX hosts). What
depends on the sender or the message (macros, ptr) cannot be decided for "the relay" and
gives `unknown`. With only [dns] spf_include configured, the target is that include: the
record authorises the relay when evaluation reaches `include:<it>` before anything matches.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from txrelay.provisioning.dns_lookup import Lookup, LookupFailed

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2
MAX_MX_HOSTS = 10
DEFAULT_ALL = "~all"
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_DNS_MECHANISMS = ("include", "a", "mx", "ptr", "exists")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Target = Network | str  # one relay address/network, or the relay's include host name


class SpfSyntaxError(ValueError):
    """A record receivers would reject with permerror."""


@dataclass(frozen=True)
class Term:
    qualifier: str
    mechanism: str
    argument: str = ""
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class SpfRecord:
    terms: tuple[Term, ...]
    redirect: str | None


@dataclass(frozen=True)
class Evaluation:
    """result: pass | fail | softfail | neutral | none | permerror | temperror | unknown."""

    result: str
    reason: str


def is_spf(value: str) -> bool:
    return value.lower() == "v=spf1" or value.lower().startswith("v=spf1 ")


def spf_records(txt_values: list[str]) -> list[str]:
    return [value for value in txt_values if is_spf(value)]


def parse(value: str) -> SpfRecord:
    terms: list[Term] = []
    redirect = None
    for word in value.split()[1:]:
        name, sep, modifier_value = word.partition("=")
        if sep and ":" not in name and "/" not in name:
            if name.lower() == "redirect":
                redirect = modifier_value
            continue  # exp= and unknown modifiers do not change the result
        terms.append(_parse_term(word))
    return SpfRecord(tuple(terms), redirect)


def _parse_term(word: str) -> Term:
    qualifier = word[0] if word[0] in QUALIFIERS else "+"
    body = word[1:] if word[0] in QUALIFIERS else word
    mechanism, _, argument = body.partition(":")
    mechanism = mechanism.lower()
    cidr4, cidr6 = 32, 128
    if "/" in mechanism:  # a/24, mx/24//64
        mechanism, _, lengths = mechanism.partition("/")
        argument = ""
        cidr4, cidr6 = _cidr_lengths("/" + lengths, word)
    elif mechanism in ("a", "mx") and "/" in argument:
        argument, _, lengths = argument.partition("/")
        cidr4, cidr6 = _cidr_lengths("/" + lengths, word)
    if mechanism not in MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {word!r}")
    if mechanism in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(argument, strict=False)
        except ValueError:
            raise SpfSyntaxError(f"{word!r} is not a valid address") from None
        if (mechanism == "ip4") != (network.version == 4):
            raise SpfSyntaxError(f"{word!r}: wrong address family")
        argument = str(network)
    elif mechanism in ("include", "exists") and not argument:
        raise SpfSyntaxError(f"{word!r} needs a domain")
    return Term(qualifier, mechanism, argument, cidr4, cidr6)


def _cidr_lengths(text: str, word: str) -> tuple[int, int]:
    """'/24' or '/24//64' or '//64' → (ip4 length, ip6 length)."""
    four, _, six = text.partition("//")
    try:
        cidr4 = int(four[1:]) if four[1:] else 32
        cidr6 = int(six) if six else 128
    except ValueError:
        raise SpfSyntaxError(f"bad prefix length in {word!r}") from None
    if not (0 <= cidr4 <= 32 and 0 <= cidr6 <= 128):
        raise SpfSyntaxError(f"bad prefix length in {word!r}")
    return cidr4, cidr6


def target_text(target: Target) -> str:
    if isinstance(target, str):
        return f"include:{target}"
    return str(target.network_address) if target.num_addresses == 1 else str(target)


@dataclass
class SpfEvaluator:
    """One evaluation (one target): the DNS-term and void-lookup counters are its own."""

    lookup: Lookup
    target: Target
    dns_terms: int = 0
    void_lookups: int = 0

    def check_host(self, domain: str) -> Evaluation:
        try:
            found = spf_records(self.lookup.txt(domain))
        except LookupFailed as exc:
            return Evaluation("temperror", str(exc))
        if not found:
            return Evaluation("none", f"{domain} has no SPF record")
        if len(found) > 1:
            return Evaluation("permerror", f"{domain} has {len(found)} SPF records")
        try:
            record = parse(found[0])
        except SpfSyntaxError as exc:
            return Evaluation("permerror", f"{domain}: {exc}")
        return self._evaluate(domain, record)

    def _evaluate(self, domain: str, record: SpfRecord) -> Evaluation:
        for term in record.terms:
            if term.mechanism in _DNS_MECHANISMS:
                self.dns_terms += 1
                if self.dns_terms > MAX_DNS_TERMS:
                    return Evaluation(
                        "permerror",
                        f"more than {MAX_DNS_TERMS} DNS lookups "
                        "(include, a, mx, ptr, exists, redirect)",
                    )
            if "%" in term.argument or term.mechanism == "ptr":
                return Evaluation(
                    "unknown",
                    f"{domain} uses {_show(term)}, which depends on "
                    "the sender or the relay's reverse DNS",
                )
            try:
                matched = self._matches(domain, term)
            except LookupFailed as exc:
                return Evaluation("temperror", str(exc))
            if isinstance(matched, Evaluation):
                return matched
            if matched:
                return Evaluation(QUALIFIERS[term.qualifier], f"{domain}: {_show(term)}")
        if record.redirect:
            return self._redirect(domain, record.redirect)
        return Evaluation("neutral", f"{domain}: no term matches (and no redirect=)")

    def _redirect(self, domain: str, target_domain: str) -> Evaluation:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            return Evaluation("permerror", f"more than {MAX_DNS_TERMS} DNS lookups")
        if "%" in target_domain:
            return Evaluation("unknown", f"{domain} redirects with a macro")
        result = self.check_host(target_domain)
        if result.result == "none":
            return Evaluation("permerror", f"redirect={target_domain} has no SPF record")
        return result

    def _matches(self, domain: str, term: Term) -> bool | Evaluation:
        target = self.target
        name = term.argument or domain
        if term.mechanism == "all":
            return True
        if term.mechanism in ("ip4", "ip6"):
            return not isinstance(target, str) and _within(target, term.argument)
        if term.mechanism == "include":
            return self._include(term.argument)
        if term.mechanism == "exists":
            return bool(self._addresses(name, "A"))
        if isinstance(target, str):
            return False  # a, mx name hosts, never the relay's include
        if term.mechanism == "a":
            return self._host_matches(name, term)
        hosts = self._counted(name, self.lookup.mx(name))
        if len(hosts) > MAX_MX_HOSTS:
            return Evaluation("permerror", f"mx of {name} names more than {MAX_MX_HOSTS} hosts")
        return any(self._host_matches(host, term) for host in hosts)

    def _include(self, name: str) -> bool | Evaluation:
        if isinstance(self.target, str) and _same_name(name, self.target):
            return True
        result = self.check_host(name)
        if result.result == "pass":
            return True
        if result.result in ("fail", "softfail", "neutral"):
            return False
        if result.result == "none":
            return Evaluation("permerror", f"include:{name} has no SPF record")
        return result

    def _host_matches(self, host: str, term: Term) -> bool:
        if isinstance(self.target, str):
            return False
        rtype, length = ("A", term.cidr4) if self.target.version == 4 else ("AAAA", term.cidr6)
        return any(
            _within(self.target, f"{address}/{length}") for address in self._addresses(host, rtype)
        )

    def _addresses(self, host: str, rtype: str) -> list[str]:
        return self._counted(host, self.lookup.addresses(host, rtype))

    def _counted(self, name: str, answer: list[str]) -> list[str]:
        if not answer:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _VoidLimit(name)
        return answer


class _VoidLimit(Exception):
    """More void lookups than RFC 7208 allows: a permerror, not a DNS failure."""


def evaluate(lookup: Lookup, domain: str, target: Target) -> Evaluation:
    """The SPF result DOMAIN's record gives the relay's address (or include) `target`."""
    evaluator = SpfEvaluator(lookup, target)
    try:
        return evaluator.check_host(domain)
    except _VoidLimit as exc:
        return Evaluation(
            "permerror", f"more than {MAX_VOID_LOOKUPS} lookups found nothing (the last: {exc})"
        )


def _within(target: Network, network_text: str) -> bool:
    network = ipaddress.ip_network(network_text, strict=False)
    return target.version == network.version and target.subnet_of(network)  # type: ignore[arg-type]


def _same_name(left: str, right: str) -> bool:
    return left.rstrip(".").lower() == right.rstrip(".").lower()


def _show(term: Term) -> str:
    qualifier = "" if term.qualifier == "+" else term.qualifier
    argument = f":{term.argument}" if term.argument else ""
    return f"{qualifier}{term.mechanism}{argument}"


def relay_terms(spf_include: str, networks: list[Network]) -> list[str]:
    """The mechanisms a shop's record needs for the relay: its include, else its addresses."""
    if spf_include:
        return [f"include:{spf_include.rstrip('.')}"]
    return [f"ip{n.version}:{target_text(n)}" for n in networks]


def suggested_record(terms: list[str]) -> str:
    return " ".join(["v=spf1", *terms, DEFAULT_ALL])


def merged_record(existing: list[str], terms: list[str]) -> str:
    """One record holding every existing record's mechanisms and the relay's, ending with the
    first record's all (or redirect=): what to publish instead of two SPF records."""
    kept: list[str] = []
    final = ""
    for value in existing:
        for word in value.split()[1:]:
            lowered = word.lower()
            if lowered.lstrip("+-~?") == "all" or lowered.startswith("redirect="):
                final = final or word
            elif lowered not in (k.lower() for k in kept):
                kept.append(word)
    kept += [t for t in terms if t.lower() not in (k.lower() for k in kept)]
    return " ".join(["v=spf1", *kept, final or DEFAULT_ALL])
