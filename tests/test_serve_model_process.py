"""`sidrec serve MODEL_DIR model_process=true`: the model in a child process, answering
as the in-process model does, replaced when it dies or hangs, and given up on (503,
/readyz "failed") once `model_restarts` new processes in a row answered nothing. The
server is TIGER on the tiny run, started on 127.0.0.1; a child is killed or frozen with
real signals."""

from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path

import httpx
import pytest
from serving import copy_of, running

from sidrec.api import Recommendations
from sidrec.errors import ItemError, SidrecError
from sidrec.serve.model_process import ModelProcess, plain

HISTORY = ["i01", "i03", "i05"]
BODY = {"history": HISTORY, "k": 5}


@pytest.fixture(scope="module")
def tiger(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_of(served_run, tmp_path_factory.mktemp("model-process")) / "models" / "tiger"


def model_processes(pid: int) -> list[int]:
    """The multiprocessing children of `pid` that run a target (not its resource tracker),
    started by any of its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in _read(task / "children").split():
            if b"spawn_main" in _read(Path(f"/proc/{child}/cmdline")).encode():
                found.append(int(child))
    return found


def _read(path: Path) -> str:
    """A /proc file's text, empty when its thread or process ended meanwhile (a batch's
    watchdog thread, a model process being replaced)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def readyz(client: httpx.Client, status: str, seconds: float) -> dict:
    """Poll GET /readyz (bounded: `seconds`, every 0.1 s) until its status is `status`."""
    deadline = time.monotonic() + seconds
    while (r := client.get("/readyz").json())["status"] != status \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r["status"] == status, r
    return r


def test_with_a_model_process_the_server_answers_alike(tiger: Path, tmp_path: Path) -> None:
    answers = []
    for setting in ("model_process=true", "model_process=false"):
        with running(tiger, setting, log=tmp_path / f"{setting}.log") as s:
            assert len(model_processes(s.process.pid)) == (setting == "model_process=true")
            answers.append(httpx.post(f"{s.url}/v1/recommend", json=BODY, timeout=30).json())
    assert [i["id"] for i in answers[0]["items"]] == [i["id"] for i in answers[1]["items"]]
    for a, b in zip(answers[0]["items"], answers[1]["items"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_a_model_process_that_dies_is_replaced(tiger: Path, tmp_path: Path) -> None:
    with running(tiger, "model_process=true", log=tmp_path / "serve.log") as s, \
            httpx.Client(base_url=s.url, timeout=30) as c:
        before = c.post("/v1/recommend", json=BODY).json()
        (first,) = model_processes(s.process.pid)
        os.kill(first, signal.SIGKILL)
        # /readyz notices without a request having met the dead process
        restarting = readyz(c, "restarting", 10)
        assert "the model process stopped (exit code -9)" in restarting["error"]
        assert c.get("/readyz").status_code == 503
        readyz(c, "ready", 60)
        after = c.post("/v1/recommend", json=BODY)
        assert after.status_code == 200 and after.json()["items"] == before["items"]
        (second,) = model_processes(s.process.pid)
        assert second != first
        assert "starting a new one (1 of 3 in a row)" in s.logs()


def test_a_model_process_that_hangs_is_killed_and_replaced(tiger: Path, tmp_path: Path) -> None:
    with running(tiger, "model_process=true", "model_timeout_s=3",
                 log=tmp_path / "serve.log") as s, \
            httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.post("/v1/recommend", json=BODY).status_code == 200
        (first,) = model_processes(s.process.pid)
        os.kill(first, signal.SIGSTOP)  # alive, and never answers
        try:
            hung = c.post("/v1/recommend", json=BODY)
            assert hung.status_code == 503, hung.text  # after model_timeout_s, not timeout_s
            assert "answered no batch within 3 s" in hung.json()["error"]
            readyz(c, "ready", 60)
            assert c.post("/v1/recommend", json=BODY).status_code == 200
            assert first not in model_processes(s.process.pid)
        finally:
            if Path(f"/proc/{first}").exists():
                os.kill(first, signal.SIGKILL)
        assert "the model process answered no batch within 3 s" in s.logs()


def test_the_server_gives_up_after_model_restarts(tiger: Path, tmp_path: Path) -> None:
    with running(tiger, "model_process=true", "model_restarts=0",
                 log=tmp_path / "serve.log") as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.post("/v1/recommend", json=BODY).status_code == 200
        (model,) = model_processes(s.process.pid)
        os.kill(model, signal.SIGKILL)
        failed = readyz(c, "failed", 10)
        assert "(model_restarts=0); restart sidrec serve" in failed["error"]
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/recommend", json=BODY)
        assert r.status_code == 503 and "restart sidrec serve" in r.json()["error"]
        assert c.get("/healthz").status_code == 200  # the process itself is up
        assert model_processes(s.process.pid) == []


def test_a_new_model_process_that_does_not_load_counts_as_a_restart(served_run: Path,
                                                                      tmp_path: Path) -> None:
    tiger = copy_of(served_run, tmp_path) / "models" / "tiger"
    with running(tiger, "model_process=true", "model_restarts=1",
                 log=tmp_path / "serve.log") as s, httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.post("/v1/recommend", json=BODY).status_code == 200
        (tiger / "model.safetensors").unlink()  # what the next model process would load
        (model,) = model_processes(s.process.pid)
        os.kill(model, signal.SIGKILL)
        failed = readyz(c, "failed", 60)
        assert "a new model process did not load" in failed["error"]
        assert "(model_restarts=1); restart sidrec serve" in failed["error"]
        assert c.post("/v1/recommend", json=BODY).status_code == 503


def _never_loads() -> None:
    time.sleep(3600)


def test_a_model_process_that_does_not_load_in_time_is_killed() -> None:
    model = ModelProcess(_never_loads, threads=1)
    with pytest.raises(SidrecError, match="the model process did not load within 1 s"):
        model.wait_ready(1.0)
    model.stop(5.0)
    assert not model.alive


def test_answers_cross_the_pipe_whatever_their_exceptions_hold() -> None:
    class Local(Exception):  # a class pickle cannot find again
        pass

    answers = [Recommendations([("i01", 0.5)]), ItemError(3, ": no text"),
               Local("boom"), SidrecError("k too large")]
    back = pickle.loads(pickle.dumps([plain(a) for a in answers]))
    assert back[0] == [("i01", 0.5)]
    assert isinstance(back[1], SidrecError) and str(back[1]) == "items[3]: no text"
    assert isinstance(back[2], RuntimeError) and str(back[2]) == "Local: boom"
    assert isinstance(back[3], SidrecError) and str(back[3]) == "k too large"
