"""`skyform local` on multi-node and workdir examples: every node of a 2-node replica runs with
its own rank and the group's IPs, only the head is routed to; the SkyServe tutorial's
workdir service serves its index.html."""

from __future__ import annotations

from pathlib import Path

import httpx
from test_local_examples import ROOT, Local


def test_multinode_example_gives_each_node_its_rank_and_the_ips(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "multinode.yaml", tmp_path)
    try:
        local.wait_ready()
        status = [e for e in local.events if e.get("event") == "status"][-1]
        assert len(status["replicas"]) == 1  # the group of 2 nodes is one replica
        r = httpx.get(f"http://127.0.0.1:{local.port}/", timeout=10)
        assert r.status_code == 200
        assert r.text.strip() == "rank=0 nodes=2 ips=127.0.0.1,127.0.0.1 gpus=0"
        worker = tmp_path / "logs" / "local-1" / "node-1" / "index.html"
        assert worker.read_text().strip() == "rank=1 nodes=2 ips=127.0.0.1,127.0.0.1 gpus=0"
    finally:
        code = local.stop()
    assert code == 0 and local.events[-1] == {"event": "stopped", "exit_code": 0}


def test_hello_workdir_tutorial_serves_its_index_html(tmp_path: Path) -> None:
    local = Local(ROOT / "examples" / "hello-workdir" / "service.yaml", tmp_path)
    try:
        local.wait_ready()
        r = httpx.get(f"http://127.0.0.1:{local.port}/", timeout=10)
        assert r.status_code == 200
        assert "<h1>Hello, SkyServe!</h1>" in r.text
        assert r.text == (ROOT / "examples" / "hello-workdir" / "index.html").read_text()
    finally:
        code = local.stop()
    assert code == 0


async def test_a_failing_worker_fails_the_replica_and_removal_ends_every_node(
        tmp_path: Path) -> None:
    from test_deployer_local import PY, alive, service, until

    from lb_agent.control.deployers.local import LocalDeployer
    from lb_agent.control.registry import Registry
    from lb_agent.control.states import ReplicaState as S
    from lb_agent.control.store import StateStore

    reg = Registry(StateStore(":memory:"))
    run = (f'if [ "$SKYPILOT_NODE_RANK" = 2 ]; then sleep 0.5; exit 3; fi\n'
           f"exec {PY} -m http.server 8080 --bind 127.0.0.1")
    dep = LocalDeployer(reg, service(run, num_nodes=3), log_dir=str(tmp_path),
                        grace_seconds=2)
    await dep.start()
    rid = await dep.scale_up(None)
    rep = dep.replicas[rid]
    assert [w.rank for w in rep.workers] == [1, 2]
    assert len({rep.port, *(w.port for w in rep.workers)}) == 3  # a port per node
    assert [r.replica_id for r in reg.list()] == [rid]  # only the head is registered
    await until(lambda: all(n.run_proc is not None for n in (rep, *rep.workers)))
    pids = [p for p in dep.pids() if p > 0]
    assert len(pids) == 3  # no setup: one run process group per node
    await until(lambda: (dep.poll(), reg.get(rid).state is S.FAILED)[1])  # type: ignore[union-attr]
    assert dep.crashed == 1
    await dep.remove(rid)
    await until(lambda: not any(alive(p) for p in pids))
    await dep.close()
