"""Everything one benchmark run brings up and tears down: database, Dovecot, smtp-sink,
OpenDKIM (unix and inet), the txrelay milter (unix and inet) and a Postfix instance."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import backing
from bench.checks import Signer
from bench.measure import PgWaits, Watched
from bench.opendkim import SELECTOR as OPENDKIM_SELECTOR
from bench.opendkim import OpenDkim, make_key
from bench.postfix import BenchPostfix
from bench.procs import (
    BenchFailure,
    ManagedProcess,
    free_port,
    port_open,
    run,
    tail,
    unix_socket_open,
    wait_until,
)
from bench.sink import SmtpSink
from txrelay.config import Config
from txrelay.provisioning.dovecot import dovecot_config_path, write_dovecot_config

# Targets, in the order the report lists them.
NONE, ODK_UNIX, ODK_INET, TX_UNIX, TX_INET = (
    "postfix-only", "opendkim-unix", "opendkim-inet", "txrelay-unix", "txrelay-inet")
# The submission scenarios' ceiling: txrelay's service (STARTTLS + AUTH via Dovecot), no milter.
SUBMIT_NONE = "postfix+dovecot"
SUBMIT_ODK = "submission-opendkim"  # the same service with OpenDKIM (unix) as its milter


@dataclass(frozen=True)
class Target:
    """A plain-SMTP listener of the bench Postfix and the milter behind it."""

    name: str
    port: int
    watched: Watched
    signer: Signer | None


@dataclass
class Stack:
    root: Path
    config: Config
    config_file: Path
    sender: backing.Sender
    postfix: BenchPostfix
    sink: SmtpSink
    targets: dict[str, Target]
    milters: dict[str, ManagedProcess]
    opendkim_pids: tuple[int, ...] = ()
    shared_pids: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def submission_port(self) -> int:
        return self.postfix.submission_port

    @property
    def submission_ceiling_port(self) -> int:
        return self.postfix.listeners[SUBMIT_NONE].port

    @property
    def submission_opendkim_port(self) -> int:
        return self.postfix.listeners[SUBMIT_ODK].port

    def cpu_groups(self) -> dict[str, tuple[int, ...]]:
        """The processes whose CPU each scenario reports per message (procs.trees_cpu_ms):
        every part the mail goes through, and the bench itself (smtp-source and the Python
        client are its children and threads). Read after start: Postfix's master writes its
        pid file then."""
        master = self.postfix.queue_directory / "pid" / "master.pid"
        return {
            "postfix": (int(master.read_text().split()[0]),),
            "txrelay": tuple(m.pid for m in self.milters.values()),
            "opendkim": self.opendkim_pids,
            "dovecot": (self.dovecot_master_pid(),),
            **self.shared_pids,
            "smtp-sink": (self.sink.daemon.pid,),
            "bench": (os.getpid(),),
        }

    def dovecot_master_pid(self) -> int:
        """The bench Dovecot's master: its auth processes are its children."""
        return int((Path(self.config.dovecot.base_dir) / "master.pid").read_text().split()[0])


class TxrelayMilter:
    """`txrelay milter` on a socket, with its metrics endpoint on a port of its own."""

    def __init__(self, config_file: Path, log_path: Path, socket: str | None,
                 node_name: str = "") -> None:
        """node_name: the node it records mail as (default: the configuration's, the host
        name)."""
        self.metrics_port = free_port()
        self.socket = socket
        argv = [backing.TXRELAY, "--config", str(config_file), "milter"]
        if socket:
            argv += ["--socket", socket]
        env = dict(os.environ, TXRELAY_METRICS_MILTER_LISTEN=f"127.0.0.1:{self.metrics_port}")
        if node_name:
            env["TXRELAY_MILTER_NODE_NAME"] = node_name
        self.daemon = ManagedProcess(argv, log_path, env=env)

    def start(self, config: Config) -> None:
        self.daemon.start()
        spec = self.socket or config.milter.socket

        def ready() -> bool:
            if not self.daemon.running:
                raise BenchFailure(f"the txrelay milter exited\n{self.daemon.log()}")
            if spec.startswith("inet:"):
                return port_open(int(spec[5:].split("@")[0]))
            return unix_socket_open(Path(spec.split(":", 1)[1]))

        wait_until(ready, 30, f"txrelay milter on {spec}", self.daemon.log)
        wait_until(lambda: port_open(self.metrics_port), 10, "milter metrics endpoint")


@contextlib.contextmanager
def bench_stack(root: Path) -> Iterator[Stack]:
    """Bring the whole stack up; whatever happens, take down what was started."""
    with contextlib.ExitStack() as cleanup:
        db = backing.BenchDatabase()
        db.create()
        cleanup.callback(db.drop)
        config_file, config = backing.write_config(root, db.url)
        cleanup.callback(backing.clean_redis, config.redis.key_prefix)
        sender = backing.provision(config_file)
        _start_dovecot(config, cleanup)
        sink = SmtpSink(root)
        sink.start()
        cleanup.callback(sink.stop)
        odk = _start_opendkim(root, sender.domain, cleanup)
        tx_unix = TxrelayMilter(config_file, root / "milter-unix.log", None)
        inet_port = free_port()
        tx_inet = TxrelayMilter(config_file, root / "milter-inet.log",
                                f"inet:{inet_port}@127.0.0.1")
        for milter in (tx_unix, tx_inet):
            cleanup.callback(milter.daemon.stop)
            milter.start(config)
        tx_signer = Signer(sender.domain, sender.selector,
                           db.public_key(sender.domain, sender.selector), list_help=True)
        postfix = BenchPostfix(root / "postfix", sink_port=sink.port,
                               submission_port=config.smtp.port, config_file=config_file,
                               txrelay=backing.TXRELAY)
        unix_socket = "unix:" + config.milter.socket.split(":", 1)[1]
        postfix.prepare_listeners([
            (NONE, "", ""),
            (ODK_UNIX, odk[0].postfix_socket, ""),
            (ODK_INET, odk[1].postfix_socket, ""),
            (TX_UNIX, unix_socket, sender.username),
            (TX_INET, f"inet:127.0.0.1:{inet_port}", sender.username),
        ])
        postfix.add_submission_copy(SUBMIT_NONE)
        postfix.add_submission_copy(SUBMIT_ODK, odk[0].postfix_socket)
        cleanup.callback(postfix.stop)
        postfix.start()
        odk_signer = odk[2]
        pg_waits = PgWaits(backing.ADMIN_DSN, db.name)
        targets = {
            NONE: Target(NONE, postfix.listeners[NONE].port, Watched(), None),
            ODK_UNIX: Target(ODK_UNIX, postfix.listeners[ODK_UNIX].port,
                             Watched(odk[0].daemon.pid), odk_signer),
            ODK_INET: Target(ODK_INET, postfix.listeners[ODK_INET].port,
                             Watched(odk[1].daemon.pid), odk_signer),
            TX_UNIX: Target(TX_UNIX, postfix.listeners[TX_UNIX].port,
                            Watched(tx_unix.daemon.pid, tx_unix.daemon.log_path,
                                    tx_unix.metrics_port, pg_waits), tx_signer),
            TX_INET: Target(TX_INET, postfix.listeners[TX_INET].port,
                            Watched(tx_inet.daemon.pid, tx_inet.daemon.log_path,
                                    tx_inet.metrics_port, pg_waits), tx_signer),
            SUBMIT_NONE: Target(SUBMIT_NONE, postfix.listeners[SUBMIT_NONE].port, Watched(),
                                None),
        }
        yield Stack(root, config, config_file, sender, postfix, sink, targets,
                    {TX_UNIX: tx_unix.daemon, TX_INET: tx_inet.daemon},
                    (odk[0].daemon.pid, odk[1].daemon.pid), backing.shared_service_pids())


def _start_dovecot(config: Config, cleanup: contextlib.ExitStack) -> None:
    write_dovecot_config(config)
    conf = dovecot_config_path(config)
    run(["dovecot", "-c", str(conf)])
    cleanup.callback(run, ["doveadm", "-c", str(conf), "stop"], check=False)
    wait_until(lambda: unix_socket_open(Path(config.dovecot.auth_socket)), 15,
               "Dovecot auth socket", lambda: tail(Path(config.dovecot.log_path)))


def _start_opendkim(root: Path, domain: str,
                    cleanup: contextlib.ExitStack) -> tuple[OpenDkim, OpenDkim, Signer]:
    directory = root / "opendkim"
    directory.mkdir(mode=0o750)
    os.chown(directory, _uid("opendkim"), _gid("postfix"))
    key_file, public = make_key(directory)
    unix = OpenDkim(directory, "unix", domain=domain, key_file=key_file,
                    socket=f"local:{directory}/opendkim.sock")
    inet = OpenDkim(directory, "inet", domain=domain, key_file=key_file,
                    socket=f"inet:{free_port()}@127.0.0.1")
    for server in (unix, inet):
        cleanup.callback(server.stop)
        server.start()
    return unix, inet, Signer(domain, OPENDKIM_SELECTOR, public, list_help=False)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid
