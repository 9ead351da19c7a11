"""The RabbitMQ transport's I/O: frames written straight to the socket, the I/O lock that lets
other threads call pika without waking the I/O thread, and (on RabbitMQ) that they do."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any

import pytest

from dtq.transport import Delivery, Outgoing, queue_name
from transports import rabbitmq
from transports.rabbitmq import RabbitTransport, _Connection, _Unlocking, delete_namespace


class _Socket:
    """Takes at most `room` bytes per send (None: all of them), or raises `error`."""

    def __init__(self, room: int | None = None, error: OSError | None = None) -> None:
        self.room, self.error = room, error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = data if self.room is None else data[:self.room]
        self.sent.append(taken)
        return len(taken)


class _Loop:
    def __init__(self) -> None:
        self.writers: list[int] = []

    def set_writer(self, fd: int, _callback: Any) -> None:
        self.writers.append(fd)


def _connection(sock: _Socket, *, buffered: bytes = b"") -> tuple[_Connection, Any]:
    """A `_Connection` over a plain pika transport whose socket is `sock` (nothing else of the
    connection is set up: these tests only write)."""
    transport = rabbitmq._AsyncPlaintextTransport.__new__(rabbitmq._AsyncPlaintextTransport)
    transport._sock = sock
    transport._sock.fileno = lambda: 7  # type: ignore[attr-defined]
    transport._state = transport._STATE_ACTIVE
    transport._tx_buffers = deque([buffered] if buffered else [])
    transport._tx_buffered_byte_count = len(buffered)
    transport._nbio = _Loop()
    conn = _Connection.__new__(_Connection)
    conn._transport = transport
    conn.bytes_sent = conn.frames_sent = 0
    return conn, transport


def test_a_write_goes_straight_to_the_socket_when_nothing_waits() -> None:
    sock = _Socket()
    conn, transport = _connection(sock)
    conn._adapter_emit_data(b"frame")
    assert sock.sent == [b"frame"]
    assert list(transport._tx_buffers) == [] and transport._nbio.writers == []


def test_what_the_socket_does_not_take_waits_for_writability() -> None:
    sock = _Socket(room=3)
    conn, transport = _connection(sock)
    conn._adapter_emit_data(b"abcdef")
    assert sock.sent == [b"abc"]
    assert list(transport._tx_buffers) == [b"def"]
    assert transport._tx_buffered_byte_count == 3
    assert transport._nbio.writers == [7]


def test_a_socket_error_leaves_the_data_to_the_buffered_path() -> None:
    conn, transport = _connection(_Socket(error=BlockingIOError()))
    conn._adapter_emit_data(b"abc")
    assert list(transport._tx_buffers) == [b"abc"] and transport._nbio.writers == [7]


def test_data_behind_buffered_data_queues_behind_it() -> None:
    sock = _Socket()
    conn, transport = _connection(sock, buffered=b"first")
    conn._adapter_emit_data(b"second")
    assert sock.sent == []
    assert list(transport._tx_buffers) == [b"first", b"second"]


def test_the_frames_of_a_message_leave_in_one_write() -> None:
    sock = _Socket()
    conn, _ = _connection(sock)
    conn._output_marshaled_frames([b"method", b"header", b"body"])
    assert sock.sent == [b"methodheaderbody"]
    assert (conn.frames_sent, conn.bytes_sent) == (3, 16)


def test_the_loop_lets_go_of_the_io_lock_only_while_it_waits() -> None:
    lock = threading.RLock()
    seen: list[bool] = []

    class Poll:
        def poll(self, timeout: float) -> list[tuple[int, int]]:
            # Another thread can take the lock while the loop waits here...
            got = threading.Event()
            t = threading.Thread(target=lambda: lock.acquire(blocking=False) and (
                got.set(), lock.release()))
            t.start()
            t.join()
            seen.append(got.is_set())
            return [(3, 1)]

        def register(self, fd: int, events: int) -> str:
            return f"registered {fd}"

    poll = _Unlocking(Poll(), lock)
    with lock:
        assert poll.poll(0.5) == [(3, 1)]
        # ...and the loop holds it again once the wait is over.
        other = threading.Thread(target=lambda: seen.append(lock.acquire(blocking=False)))
        other.start()
        other.join()
    assert seen == [True, False]
    assert poll.register(3, 1) == "registered 3"


@pytest.mark.rabbitmq
def test_other_threads_publish_and_ack_without_waking_the_io_thread(rabbitmq_url: str) -> None:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    got: list[Delivery] = []
    arrived = threading.Semaphore(0)

    def on_delivery(d: Delivery) -> None:
        got.append(d)
        arrived.release()

    t = RabbitTransport(rabbitmq_url, namespace=ns, name="direct", on_delivery=on_delivery)
    t.start()
    try:
        assert t._direct
        t.consume("box", 50)
        conn = t._conn
        handed: list[Any] = []
        through_loop = conn.ioloop.add_callback_threadsafe
        conn.ioloop.add_callback_threadsafe = lambda fn: (handed.append(fn), through_loop(fn))
        confirmed = threading.Semaphore(0)
        for i in range(20):
            t.publish([Outgoing(queue=queue_name(ns, "box"), body=f'{{"n":{i}}}'.encode())],
                      then=confirmed.release)
        for _ in range(20):
            assert confirmed.acquire(timeout=10) and arrived.acquire(timeout=10)
        for d in got:
            t.ack(d)
        assert sorted(d.body for d in got) == sorted(f'{{"n":{i}}}'.encode() for i in range(20))
        assert handed == []
        t.close()  # after the acks on the same socket: none of the 20 goes back to the queue
        assert t.queue_depths(["box"]) == {"box": 0}
    finally:
        t.close()
        delete_namespace(rabbitmq_url, ns, ["box"])


@pytest.mark.rabbitmq
def test_the_broker_holds_the_connection_to_the_heartbeat_timeout(rabbitmq_url: str) -> None:
    """What bounds a frozen node's hold on its unacked deliveries is the timeout the broker
    agreed to, as the broker itself reports it."""
    import subprocess

    ns = f"test-{uuid.uuid4().hex[:8]}"
    t = RabbitTransport(rabbitmq_url, namespace=ns, name="beating")
    t.start()
    try:
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "timeout", "client_properties"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        ours = [line.split("\t", 1)[0] for line in listing.splitlines()
                if rabbitmq.connection_name(ns, "beating") in line]
        assert ours == [str(rabbitmq.HEARTBEAT_S)] and rabbitmq.HEARTBEAT_S == 5
    finally:
        t.close()


@pytest.mark.rabbitmq
def test_an_ack_after_the_channel_began_closing_is_dropped_not_raised(rabbitmq_url: str) -> None:
    """A batch confirmed as its node stops acks on a closing channel: the delivery goes back to
    its queue anyway, and the I/O thread must not die of it (pika raises
    ChannelWrongStateError on a closing channel)."""
    ns = f"test-{uuid.uuid4().hex[:8]}"
    arrived: list[Delivery] = []
    ready = threading.Event()
    failures: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda a: failures.append(a.exc_value)

    def on_delivery(d: Delivery) -> None:
        arrived.append(d)
        ready.set()

    t = RabbitTransport(rabbitmq_url, namespace=ns, name="closing", on_delivery=on_delivery)
    t.start()
    try:
        t.consume("box", 5)
        sent = threading.Event()
        t.publish([Outgoing(queue=queue_name(ns, "box"), body=b'{"n":1}')], then=sent.set)
        assert sent.wait(10) and ready.wait(10)
        done = threading.Event()

        def close_then_ack() -> None:  # on the I/O thread, as the loop runs its calls
            assert t._channel is not None
            t._channel.close()
            t._ack_now(arrived[0].generation, arrived[0].tag, False)
            done.set()

        t._call(close_then_ack)
        assert done.wait(10), failures
        assert failures == []
    finally:
        threading.excepthook = hook
        t.close()
        delete_namespace(rabbitmq_url, ns, ["box"])
