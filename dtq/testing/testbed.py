"""A local cluster testbed: a Redis primary + replica + 3 Sentinels and a 3-node RabbitMQ cluster.

The rule: everything listens on loopback, on the ports its `Layout` names (a block from
`base_port`, never the shared 6379/5672/4369), and keeps its data, logs and configuration under
one state directory; `up` is ready only when every service says so itself (PING, the replica's
link, the Sentinels seeing each other and the replica, `rabbitmqctl await_startup` and
`cluster_status`), polled, never a fixed sleep; `down` stops exactly the processes `up` recorded
in `testbed.json`.

    dtq testbed up        # prints DTQ_BROKER_URL (a comma list) and DTQ_STORE_URL
    dtq testbed status
    dtq testbed down
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from dtq.errors import ConfigurationError

SERVICE = "mymaster"
DEFAULT_BASE_PORT = 27100
STATE_FILE = "testbed.json"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The Debian package's scripts that run as the calling user (the /usr/sbin wrappers switch to
the `rabbitmq` user and its shared home)."""


def default_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dtq" / "testbed"


def _tool(name: str) -> str | None:
    local = RABBIT_BIN / name
    return str(local) if local.exists() else shutil.which(name)


SENTINEL_TIMING = {"INFO-PERIOD": 1000, "TILT-PERIOD": 5000, "PUBLISH-PERIOD": 500}
"""Sentinel's internal periods for the testbed (`SENTINEL DEBUG`, Redis 7). A Sentinel turns an
old primary into a replica four hello periods after it first saw its role (8 s by default), and
sees it only when it asks (every 10 s by default); and a Sentinel whose timer ran 2 s late, as
on a loaded machine, stops acting for 30 s (TILT), again at each late tick. Together they put a
demotion anywhere from 20 s to over a minute. With one replica and writes that wait for it, no
write counts from a promotion until the old primary follows the new one: with these periods
that comes 2-3 s after its role is seen, and a late tick costs 5 s. A test that must catch an
old primary still writable holds the demotion back (`Testbed.demotion_held`)."""


def _tune_sentinel(port: int) -> None:
    until(f"the Sentinel on {port}", lambda: bool(_redis(port).ping()))
    pairs = [str(x) for item in SENTINEL_TIMING.items() for x in item]
    _redis(port).execute_command("SENTINEL", "DEBUG", *pairs)


def have_redis() -> bool:
    return shutil.which("redis-server") is not None


def have_rabbitmq() -> bool:
    return _tool("rabbitmq-server") is not None and _tool("rabbitmqctl") is not None


@attrs.frozen
class Layout:
    """Where everything of one testbed lives: ports from `base_port`, files under `dir`."""

    dir: Path
    base_port: int = DEFAULT_BASE_PORT
    rabbit: bool = True
    """False: only Redis and its Sentinels (fast, for the store's tests)."""
    nodes: int = 3

    @property
    def redis_ports(self) -> tuple[int, int]:
        """The first primary's port, the first replica's."""
        return self.base_port, self.base_port + 1

    @property
    def sentinel_ports(self) -> tuple[int, ...]:
        return tuple(self.base_port + 2 + i for i in range(3))

    @property
    def amqp_ports(self) -> tuple[int, ...]:
        return tuple(self.base_port + 10 + i for i in range(self.nodes))

    @property
    def dist_ports(self) -> tuple[int, ...]:
        return tuple(self.base_port + 20 + i for i in range(self.nodes))

    @property
    def epmd_port(self) -> int:
        return self.base_port + 30

    def node_name(self, i: int) -> str:
        return f"dtq-testbed-{self.base_port}-{i + 1}@localhost"

    def ports(self) -> list[int]:
        ports = [*self.redis_ports, *self.sentinel_ports]
        if self.rabbit:
            ports += [*self.amqp_ports, *self.dist_ports, self.epmd_port]
        return ports

    @property
    def store_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    @property
    def durable_store_url(self) -> str:
        """`store_url` with every write waiting until the replica holds it (`wait_replicas=1`):
        what a client is told survives a failover."""
        return f"{self.store_url}?wait_replicas=1&wait_ms=1000"

    @property
    def broker_urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{p}/%2F" for p in self.amqp_ports]


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(start: int = 20000, stop: int = 32000, width: int = 31) -> int:
    """A base port whose whole block (`width` ports) is free now, for tests: below Linux's
    ephemeral range (32768 up), so no outgoing connection takes one before a server binds it;
    where the search starts depends on the process id, so parallel test processes differ."""
    slots = (stop - start) // 40
    first = os.getpid() % slots
    for k in range(slots):
        base = start + (first + k) % slots * 40
        if all(_free(p) for p in range(base, base + width)):
            return base
    raise ConfigurationError("no free block of ports for a testbed")


def until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll `check` (a question to a service) until it answers yes; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet: a refused connection, a failing command
            last = exc
        time.sleep(0.1)
    raise ConfigurationError(f"testbed: timed out waiting for {what}"
                             + (f" (last error: {last})" if last else ""))


class Testbed:
    """Start, inspect and stop the services of one `Layout`; pids kept in `dir/testbed.json`."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.dir
        self.pids: dict[str, int] = {}

    # state ------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _save(self, **extra: Any) -> None:
        state = {"base_port": self.layout.base_port, "rabbit": self.layout.rabbit,
                 "nodes": self.layout.nodes, "pids": self.pids,
                 "store_url": self.layout.store_url,
                 "broker_urls": self.layout.broker_urls if self.layout.rabbit else [], **extra}
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Testbed | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        bed = cls(Layout(directory, base_port=int(state["base_port"]),
                         rabbit=bool(state["rabbit"]), nodes=int(state["nodes"])))
        bed.pids = {k: int(v) for k, v in state["pids"].items()}
        return bed

    # up ---------------------------------------------------------------------------------------
    def up(self) -> float:
        """Start every service and wait until each answers; the seconds it took."""
        started = time.monotonic()
        if self.state_path.exists():
            raise ConfigurationError(f"a testbed is recorded in {self.dir}; "
                                     f"`dtq testbed down --dir {self.dir}` first")
        if not have_redis():
            raise ConfigurationError("redis-server is not installed")
        if self.layout.rabbit and not have_rabbitmq():
            raise ConfigurationError("rabbitmq-server is not installed (use --redis-only)")
        taken = [p for p in self.layout.ports() if not _free(p)]
        if taken:
            raise ConfigurationError(f"ports in use: {taken}; choose another --base-port")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            if self.layout.rabbit:
                self._start_rabbit()
            self.wait_redis()
            if self.layout.rabbit:
                self._cluster_rabbit()
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.dir / f"{name}.out").open("ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.dir, env=env,
                                start_new_session=True)
        log.close()
        self.pids[name] = proc.pid
        self._save()

    def _start_redis(self) -> None:
        primary, replica = self.layout.redis_ports
        for name, port in (("redis-primary", primary), ("redis-replica", replica)):
            data = self.dir / name
            data.mkdir(exist_ok=True)
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {data}", "appendonly yes",
                     "appendfsync everysec", "save \"\"", f"logfile {data / 'redis.log'}"]
            if port == replica:
                lines.append(f"replicaof 127.0.0.1 {primary}")
            conf = data / "redis.conf"
            conf.write_text("\n".join(lines) + "\n")
            self._spawn(name, ["redis-server", str(conf)])
        until(f"the Redis primary on {primary}", lambda: _redis(primary).ping())
        for i, port in enumerate(self.layout.sentinel_ports):
            data = self.dir / f"sentinel-{i + 1}"
            data.mkdir(exist_ok=True)
            conf = data / "sentinel.conf"  # Sentinel rewrites it: it must be writable
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {data}",
                f"logfile {data / 'sentinel.log'}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1"]) + "\n")
            self._spawn(f"sentinel-{i + 1}", ["redis-server", str(conf), "--sentinel"])
        for port in self.layout.sentinel_ports:
            _tune_sentinel(port)

    def wait_redis(self, timeout_s: float = 60.0) -> None:
        """Until the primary the Sentinels name has a replica linked to it, and every Sentinel
        sees it, the replica and the two other Sentinels."""
        until("Sentinels that agree on a primary with a linked replica", self.redis_ready,
              timeout_s)

    def redis_ready(self) -> bool:
        primary = self.primary_port()
        if primary is None:
            return False
        replicas = [int(r["port"]) for r in _redis(primary).info("replication").values()
                    if isinstance(r, dict) and r.get("state") == "online"]
        if not replicas:
            return False
        for port in self.layout.sentinel_ports:
            m = _redis(port).sentinel_master(SERVICE)
            if (int(m["port"]) != primary or int(m["num-other-sentinels"]) < 2
                    or int(m["num-slaves"]) < 1 or m.get("is_sdown") or m.get("is_odown")):
                return False
        return True

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels say (the first that answers), if any."""
        for port in self.layout.sentinel_ports:
            with contextlib.suppress(Exception):
                return int(_redis(port).sentinel_get_master_addr_by_name(SERVICE)[1])
        return None

    def failover(self, timeout_s: float = 60.0) -> tuple[int, int]:
        """`SENTINEL FAILOVER`, then wait until every Sentinel names a new primary and it answers
        as one. (old, new) ports. The old primary is reconfigured as a replica only later (the
        Sentinels wait for its role to settle, about 2 s on the testbed): see `wait_demoted`."""
        old = self._primary()
        _redis(self.layout.sentinel_ports[0]).execute_command("SENTINEL FAILOVER", SERVICE)
        return old, self._promoted(old, timeout_s)

    def kill_redis_primary(self, timeout_s: float = 60.0) -> tuple[int, int]:
        """kill -9 the primary, then wait until the Sentinels agree it is down and name a
        promoted replica. (old, new) ports; `restart(redis_name(old))` brings the old back."""
        old = self._primary()
        self.kill(self.redis_name(old))
        return old, self._promoted(old, timeout_s)

    def redis_name(self, port: int) -> str:
        return "redis-primary" if port == self.layout.redis_ports[0] else "redis-replica"

    def _primary(self) -> int:
        port = self.primary_port()
        if port is None:
            raise ConfigurationError("no Sentinel names a primary")
        return port

    def _promoted(self, old: int, timeout_s: float) -> int:
        news: list[int] = []

        def promoted() -> bool:
            ports = {int(_redis(p).sentinel_get_master_addr_by_name(SERVICE)[1])
                     for p in self.layout.sentinel_ports}
            if len(ports) != 1 or old in ports:
                return False
            news[:] = ports
            return bool(_redis(news[0]).info("replication")["role"] == "master")

        until(f"the Sentinels to promote a replica of {old}", promoted, timeout_s)
        return news[0]

    def kill(self, name: str) -> None:
        """kill -9 one recorded process (its process group), and wait until it is gone."""
        pid = self.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        until(f"{name} to die", lambda: not alive(pid), 10)

    def restart(self, name: str) -> None:
        """Start a process `kill` stopped again, with its own configuration and data, and wait
        until it answers (a Redis server: PING; a RabbitMQ node: await_startup, back in the
        cluster)."""
        if name.startswith("rabbit-"):
            i = int(name.rpartition("-")[2]) - 1
            self._spawn(name, [str(_tool("rabbitmq-server"))], self._rabbit_env(i))
            until(f"RabbitMQ node {self.layout.node_name(i)}", functools.partial(self._booted, i))
            until("every RabbitMQ node running", self.rabbit_ready)
            return
        sentinel = name.startswith("sentinel-")
        conf = self.dir / name / ("sentinel.conf" if sentinel else "redis.conf")
        self._spawn(name, ["redis-server", str(conf), *(["--sentinel"] if sentinel else [])])
        port = int(next(line.split()[1] for line in conf.read_text().splitlines()
                        if line.startswith("port ")))
        until(f"{name} on {port}", lambda: bool(_redis(port).ping()))
        if sentinel:
            _tune_sentinel(port)

    def broker_node_of(self, connection: str) -> int | None:
        """The index of the RabbitMQ node a connection named `connection` is on (by the server
        port of the connection; every node lists the cluster's connections), if any is."""
        ports = {p: i for i, p in enumerate(self.layout.amqp_ports)}
        running = next((i for i in range(len(self.layout.amqp_ports))
                        if (pid := self.pids.get(f"rabbit-{i + 1}")) and alive(pid)), None)
        if running is None:
            return None
        listing = self.ctl(running, "-q", "--no-table-headers", "list_connections",
                           "client_properties", "port")
        for line in listing.splitlines():
            props, _, port = line.rpartition("\t")
            found = re.search(r'"connection_name","([^"]*)"', props)
            if found and found.group(1) == connection and port.strip().isdigit() \
                    and int(port) in ports:
                return ports[int(port)]
        return None

    @contextlib.contextmanager
    def demotion_held(self, hello_ms: int = 15_000) -> Iterator[None]:
        """While inside, the Sentinels leave an old primary writable for 4 x `hello_ms` after
        they first see its role (their hello period, `SENTINEL DEBUG PUBLISH-PERIOD`), instead
        of the testbed's 2 s: for a test that must catch the old primary still accepting writes on
        a machine too loaded to be sure of 2 s. A failover still spreads at once (the Sentinel
        that made it announces it without waiting for the period)."""
        default = SENTINEL_TIMING["PUBLISH-PERIOD"]
        for port in self.layout.sentinel_ports:
            _redis(port).execute_command("SENTINEL", "DEBUG", "PUBLISH-PERIOD", hello_ms)
        try:
            yield
        finally:
            for port in self.layout.sentinel_ports:
                with contextlib.suppress(Exception):  # a Sentinel a test stopped
                    _redis(port).execute_command("SENTINEL", "DEBUG", "PUBLISH-PERIOD", default)

    def wait_demoted(self, port: int, timeout_s: float = 120.0) -> None:
        """Until the server on `port` is a replica linked to the current primary."""
        def linked() -> bool:
            info = _redis(port).info("replication")
            return bool(info["role"] == "slave" and info.get("master_link_status") == "up"
                        and int(info["master_port"]) == self.primary_port())

        until(f"the server on {port} to follow the new primary", linked, timeout_s)

    # RabbitMQ ---------------------------------------------------------------------------------
    def _rabbit_env(self, i: int) -> dict[str, str]:
        lay = self.layout
        home = self.dir / "rabbit-home"  # the shared Erlang cookie
        node = self.dir / f"rabbit-{i + 1}"
        settings = {
            "RABBITMQ_NODENAME": lay.node_name(i),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(lay.amqp_ports[i]),
            "RABBITMQ_DIST_PORT": str(lay.dist_ports[i]),
            "RABBITMQ_MNESIA_BASE": str(node / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node / "log"),
            "RABBITMQ_CONFIG_FILE": str(node / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(node / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(lay.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        return {**os.environ, **settings, "HOME": str(home),
                "RABBITMQ_CONF_ENV_FILE": str(node / "rabbitmq-env.conf"),
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def _start_rabbit(self) -> None:
        home = self.dir / "rabbit-home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)
        for i in range(self.layout.nodes):
            node = self.dir / f"rabbit-{i + 1}"
            node.mkdir(exist_ok=True)
            env = self._rabbit_env(i)
            (node / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{self.layout.amqp_ports[i]}\n")
            (node / "advanced.config").write_text("[].\n")
            (node / "enabled_plugins").write_text("[].\n")  # no management plugin
            (node / "rabbitmq-env.conf").write_text("".join(
                f"{k}={v}\n" for k, v in env.items()
                if k.startswith(("RABBITMQ_", "ERL_EPMD")) and k != "RABBITMQ_CONF_ENV_FILE"))
            self._spawn(f"rabbit-{i + 1}", [str(_tool("rabbitmq-server"))], env)

    def ctl(self, i: int, *args: str, timeout_s: float = 60.0) -> str:
        """`rabbitmqctl -n NODE args` for node i; its output. Raises on failure."""
        done = subprocess.run([str(_tool("rabbitmqctl")), "-n", self.layout.node_name(i), *args],
                              env=self._rabbit_env(i), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise ConfigurationError(f"rabbitmqctl -n {self.layout.node_name(i)} "
                                     f"{' '.join(args)}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def _cluster_rabbit(self) -> None:
        """Every node booted (await_startup), then every other node joins the first; nodes are
        asked in parallel (each rabbitmqctl call starts an Erlang VM: seconds each)."""
        nodes = range(self.layout.nodes)
        with ThreadPoolExecutor(max_workers=self.layout.nodes) as pool:
            list(pool.map(lambda i: until(f"RabbitMQ node {self.layout.node_name(i)}",
                                          functools.partial(self._booted, i)), nodes))
            list(pool.map(self._join, nodes[1:]))
        until("a RabbitMQ cluster with every node running", self.rabbit_ready)

    def _join(self, i: int) -> None:
        self.ctl(i, "stop_app")
        self.ctl(i, "join_cluster", self.layout.node_name(0))
        self.ctl(i, "start_app")

    def _booted(self, i: int) -> bool:
        self.ctl(i, "await_startup", "--timeout", "60")
        return True

    def running_nodes(self) -> list[str]:
        status = json.loads(self.ctl(0, "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def rabbit_ready(self) -> bool:
        want = sorted(self.layout.node_name(i) for i in range(self.layout.nodes))
        return self.running_nodes() == want

    # status and down --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What is up: every recorded process alive or not, the primary, the cluster's nodes."""
        states = {name: alive(pid) for name, pid in self.pids.items()}
        out: dict[str, Any] = {"dir": str(self.dir), "processes": states,
                               "store_url": self.layout.store_url,
                               "redis_primary_port": self.primary_port()}
        if self.layout.rabbit:
            out["broker_url"] = ",".join(self.layout.broker_urls)
            try:
                out["rabbit_running_nodes"] = self.running_nodes()
            except (ConfigurationError, subprocess.TimeoutExpired) as exc:
                out["rabbit_running_nodes"] = f"unknown: {exc}"
        return out

    def down(self, timeout_s: float = 30.0) -> list[str]:
        """Stop every recorded process (SIGTERM to its group, SIGKILL after `timeout_s`) and the
        cluster's epmd; the names stopped. Data stays in `dir` unless removed."""
        stopped = []
        for name, pid in self.pids.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + timeout_s
        for pid in self.pids.values():
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        if self.layout.rabbit and shutil.which("epmd"):
            subprocess.run(["epmd", "-port", str(self.layout.epmd_port), "-kill"],
                           capture_output=True, check=False, timeout=10)
        self.pids = {}
        self.state_path.unlink(missing_ok=True)
        return stopped


def _redis(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                       socket_timeout=2.0, decode_responses=True)


def alive(pid: int) -> bool:
    """Whether `pid` runs (an exited process not yet reaped by its parent does not)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _reap(pid: int) -> None:
    """Collect `pid` if it is our exited child (started by this process), so it is gone."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def running(layout: Layout) -> Iterator[Testbed]:
    """A testbed for the duration of a `with` block (tests): up on entry, down on exit."""
    bed = Testbed(layout)
    bed.up()
    try:
        yield bed
    finally:
        bed.down()


# the `dtq testbed` command ------------------------------------------------------------------
def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start the services and print their URLs",
                        description="Start a Redis primary + replica + 3 Sentinels and a 3-node "
                        "RabbitMQ cluster on loopback, wait until each answers, and print "
                        "`export` lines for DTQ_BROKER_URL and DTQ_STORE_URL (stdout; progress "
                        "goes to stderr), so `eval \"$(dtq testbed up)\"` sets them.")
    up.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                    help=f"first port of the block used (default {DEFAULT_BASE_PORT}: Redis "
                    "+0/+1, Sentinels +2..+4, AMQP +10.., Erlang distribution +20.., epmd +30)")
    up.add_argument("--redis-only", action="store_true",
                    help="only Redis, its replica and the Sentinels")
    status = sub.add_parser("status", help="what is running, the primary, the cluster's nodes")
    down = sub.add_parser("down", help="stop every process the testbed started")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    for s in (up, status, down):
        s.add_argument("--dir", type=Path, default=None,
                       help="state directory (default $XDG_STATE_HOME/dtq/testbed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = args.dir or default_dir()
    if args.action == "up":
        bed = Testbed(Layout(directory, base_port=args.base_port, rabbit=not args.redis_only))
        took = bed.up()
        print(f"dtq testbed: up in {took:.1f} s; state in {directory}", file=sys.stderr)
        if bed.layout.rabbit:
            print(f"export DTQ_BROKER_URL={','.join(bed.layout.broker_urls)}")
        print(f"export DTQ_STORE_URL={bed.layout.store_url}")
        return 0
    found = Testbed.load(directory)
    if found is None:
        print(f"dtq testbed: nothing recorded in {directory}", file=sys.stderr)
        if args.action == "down" and args.purge:
            shutil.rmtree(directory, ignore_errors=True)
        return 0 if args.action == "down" else 1
    if args.action == "status":
        state = found.status()
        print(json.dumps(state, indent=2))
        return 0 if all(state["processes"].values()) else 1
    stopped = found.down()
    if args.purge:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"dtq testbed: stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
    return 0
