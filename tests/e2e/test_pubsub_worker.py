"""`python -m tq.pubsub subscribe` as its own process against the Pub/Sub emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import tq
import tq.pubsub
from tests._services.pubsub import PubSubEmulator
from tests.testpb import payloads_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0

CONSUMER = """
import os
import tq
from tests.testpb import payloads_pb2 as pb

disp = tq.Dispatcher(cloud_project=os.environ["TEST_PROJECT"])

@disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL,
                 topic=os.environ["TEST_TOPIC"])
def greet(p):
    with open(os.environ["TEST_OUT"], "a") as f:
        f.write(f"{p.name} {tq.execution_info().subscription}\\n")
"""


def test_worker_process_handles_messages_and_stops_on_sigterm(
    pubsub_emulator: PubSubEmulator, tmp_path: Path
) -> None:
    topic = pubsub_emulator.create_topic("proc")
    sub = pubsub_emulator.create_subscription(topic, "proc")
    (tmp_path / "consumer_mod.py").write_text(textwrap.dedent(CONSUMER))
    out = tmp_path / "seen.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "TEST_PROJECT": pubsub_emulator.project,
        "TEST_TOPIC": topic.rsplit("/", 1)[-1],
        "TEST_OUT": str(out),
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tq.pubsub", "subscribe", "--dispatcher", "consumer_mod:disp",
             "--subscription", sub, "--endpoint", pubsub_emulator.endpoint],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with tq.pubsub.Publisher(endpoint=pubsub_emulator.endpoint) as publisher:
            producer = tq.Dispatcher(cloud_project=pubsub_emulator.project, submitter=publisher)
            producer.register_task_class(
                tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL,
                             topic=topic)
            )  # fmt: skip
            for name in ("a", "b", "c"):
                producer.add_task(tq.Task(payload=pb.Greet(name=name)))
        ev = threading.Event()
        for _ in range(int(WAIT_S / 0.05)):
            if out.exists() and len(out.read_text().splitlines()) >= 3:
                break
            ev.wait(0.05)  # poll interval, bounded by WAIT_S
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text(errors="replace")
    assert code == 0, log
    assert sorted(out.read_text().splitlines()) == [f"{n} proc-{sub.rsplit('-', 1)[-1]}"
                                                    for n in "abc"], log  # fmt: skip
    assert pubsub_emulator.pull(sub, wait_s=1.0) == []  # all acked
