"""Unit tests of nntune's executor pieces on tiny local git repositories: experiment refs
are created once and never overwritten, claims are read without being taken or created,
and records survive a round trip (the end-to-end tests are in test_executor_e2e.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nntune.executor import pool, records, runner
from nntune.experiments.repo import ExperimentError


def _git_repo(path: Path) -> str:
    subprocess.run(["git", "init", "--quiet", str(path)], check=True)
    for key, value in (("user.email", "t@nntune.invalid"), ("user.name", "t")):
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "--quiet", "--allow-empty", "-m", "x"])
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True)
    return out.stdout.decode().strip()


def test_an_experiment_ref_is_created_once_and_an_existing_one_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rev = _git_repo(tmp_path)
    ref = "refs/exps/ab/cdef/trial"
    runner.create_ref(tmp_path, ref, rev)

    def no_retry(seconds: float) -> None:
        raise AssertionError("an existing ref is not git's lock: it must not be retried")

    monkeypatch.setattr(runner.time, "sleep", no_retry)
    with pytest.raises(ExperimentError, match="already exists"):
        runner.create_ref(tmp_path, ref, rev)
    runner.create_ref(tmp_path, "refs/nntune/failed/x", rev, force=True)
    runner.create_ref(tmp_path, "refs/nntune/failed/x", rev, force=True)  # overwrites


def test_a_ref_locked_by_another_process_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rev = _git_repo(tmp_path)
    ref = "refs/exps/ab/cdef/locked"
    lock = tmp_path / ".git" / f"{ref}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # as a concurrent `git update-ref` holds it
    waits: list[float] = []

    def released_after_a_wait(seconds: float) -> None:
        waits.append(seconds)
        lock.unlink(missing_ok=True)

    monkeypatch.setattr(runner.time, "sleep", released_after_a_wait)
    runner.create_ref(tmp_path, ref, rev)
    assert len(waits) == 1


HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.lockf(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_claim_is_seen_held_without_being_taken_or_created(tmp_path: Path) -> None:
    stash = "f" * 40
    path = records.claim_path(tmp_path, stash)
    assert not pool.is_claimed(tmp_path, stash)
    assert not path.exists()  # reading a claim never creates its file
    path.parent.mkdir(parents=True)
    path.write_text("")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            assert pool.is_claimed(tmp_path, stash)
            assert pool.is_claimed(tmp_path, stash)  # still held: the test took nothing
        finally:
            holder.kill()
    deadline = time.monotonic() + 10
    while pool.is_claimed(tmp_path, stash):  # the kernel drops it with the process
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_records_round_trip_and_unreadable_ones_are_skipped(tmp_path: Path) -> None:
    done = records.EntryRecord("t1", "a" * 40, "b" * 40, True, exp_rev="c" * 40)
    failed = records.EntryRecord("t2", "d" * 40, "b" * 40, False, error="E: boom")
    done.write(tmp_path)
    failed.write(tmp_path)
    (records.state_dir(tmp_path) / "done" / "junk.json").write_text("{not json")
    assert {r.name: r.ok for r in records.read_records(tmp_path)} == {"t1": True, "t2": False}
    assert records.read_record(tmp_path, "d" * 40) == failed
    records.forget_record(tmp_path, "d" * 40)
    assert records.read_record(tmp_path, "d" * 40) is None
    assert records.safe_label("a/b c:d") == "a_b_c_d"


def _chain_project(path: Path) -> None:
    """A git + DVC project of three chained stages (a -> b -> c) and a fourth that never
    changes, each copying its input; its baseline reproduced and committed."""
    _git_repo(path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=path, check=True)
    (path / "params.yaml").write_text("n: 1\nfixed: 0\n")
    (path / "dvc.yaml").write_text(
        "stages:\n"
        "  a:\n    cmd: grep '^n:' params.yaml > a.txt\n"
        "    params: [n]\n    outs: [a.txt]\n"
        "  b:\n    cmd: cp a.txt b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n"
        "  c:\n    cmd: cp b.txt c.txt && cat tool.txt b.txt > c.json\n"
        "    deps: [b.txt, tool.txt, note.txt]\n    outs: [c.txt, c.json: {cache: false}]\n"
        "  fixed:\n    cmd: echo fixed > fixed.txt\n    params: [fixed]\n    outs: [fixed.txt]\n"
    )
    (path / "tool.txt").write_text("a file git tracks that a stage depends on\n")
    (path / "note.txt").write_text("a file git does not track that a stage depends on\n")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "--quiet"], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "--quiet", "-m", "baseline"], cwd=path, check=True)


def _ours_and_theirs(
    tmp_path: Path, params: str, untracked: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """Two copies of the chain project, ``ours`` (``untracked`` removed from git first) and
    its clone ``theirs``, both with ``params`` written and ``theirs`` reproduced by
    ``dvc repro``: what ``ours`` must equal after the code under test reproduces it."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _chain_project(ours)
    if untracked:
        subprocess.run(["git", "rm", "-q", "--cached", *untracked], cwd=ours, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "untracked"], cwd=ours, check=True)
    subprocess.run(["git", "clone", "--quiet", str(ours), str(theirs)], check=True)
    shutil.copy(ours / "note.txt", theirs / "note.txt")
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "--quiet"], cwd=theirs, check=False)
    for project in (ours, theirs):
        (project / "params.yaml").write_text(params)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "--quiet"], cwd=theirs, check=True)
    return ours, theirs


def _tree_of(project: Path, paths: list[str]) -> str:
    """The tree an experiment commit of ``project`` would hold: ``paths`` staged, then every
    tracked file's change (as the executor's commit does), as git's tree id."""
    subprocess.run(["git", "add", "--", *paths], cwd=project, check=True)
    subprocess.run(["git", "add", "--update"], cwd=project, check=True)
    return subprocess.run(
        ["git", "write-tree"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()


# DVC's outputs trie calls pygtrie's deprecated _NoneStep.value (DVC's, not ours)
@pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")
def test_deferred_lock_repro_writes_what_dvc_repro_writes_with_one_lock_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor's repro_fn: the same dvc.lock as DVC's own `dvc repro` for a change that
    re-runs three of four stages, in one rewrite of dvc.lock and without DVC's round-trip
    load of it; its staged files give the same commit as DVC's listing of every stage's."""
    import dvc.utils.serialize
    from dvc.dvcfile import Lockfile
    from dvc.fs.dvc import DVCFileSystem
    from dvc.repo import Repo
    from dvc.stage.utils import _get_stage_files

    from nntune.experiments.dvc_internals import DeferredLockRepro

    # Files git does not track, which the commit must pick up: a stage's dependency and its
    # output that DVC does not cache.
    ours, theirs = _ours_and_theirs(tmp_path, "n: 2\nfixed: 0\n", ("note.txt", "c.json"))

    writes: list[str] = []
    dumps_yaml = dvc.utils.serialize.dumps_yaml

    def counted(data: dict) -> str:
        writes.append(",".join(data["stages"]))
        return dumps_yaml(data)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("DVC's round-trip dump_stages was used")

    asked: list[str] = []
    isdvc = DVCFileSystem.isdvc

    def asking(self: DVCFileSystem, path: str, **kwargs: object) -> bool:
        asked.append(Path(path).name)
        return isdvc(self, path, **kwargs)

    monkeypatch.setattr(DVCFileSystem, "isdvc", asking)
    monkeypatch.setattr(dvc.utils.serialize, "dumps_yaml", counted)
    monkeypatch.setattr(Lockfile, "dump_stages", refused)
    monkeypatch.chdir(ours)
    with Repo(str(ours)) as dvc_repo:
        repro = DeferredLockRepro()
        ran = dvc_repo.reproduce(repro_fn=repro)
        staged = repro.flush()
    assert [stage.name for stage in ran] == ["a", "b", "c"]
    assert writes == ["a,b,c,fixed"]  # one rewrite, after the last stage
    assert (ours / "dvc.lock").read_text() == (theirs / "dvc.lock").read_text()
    assert (ours / "c.txt").read_text() == "n: 2\n"
    assert {"dvc.yaml", "dvc.lock", "tool.txt", "note.txt", "c.json"} <= set(staged)
    assert not repro.ran and not repro.visited  # flushed once
    assert asked == ["note.txt"]  # neither git's nor an output: only it needs DVC's index

    monkeypatch.chdir(theirs)
    with Repo(str(theirs)) as dvc_repo:
        listed = [path for stage in dvc_repo.index.stages for path in _get_stage_files(stage)]
    assert _tree_of(ours, staged) == _tree_of(theirs, listed)


class _Failing:
    """A repo whose reproduce fails in a stage, with a repro_fn whose lock write fails too."""

    def __init__(self) -> None:
        self.flushes = 0

    def reproduce(self, *args: object, **kwargs: object) -> list:
        raise RuntimeError("stage 'train' failed")

    def flush(self) -> list[str]:
        self.flushes += 1
        raise OSError("dvc.lock: no space left on device")


def test_a_failed_stage_is_the_error_raised_even_when_the_lock_write_after_it_fails() -> None:
    failing = _Failing()
    with pytest.raises(RuntimeError, match="stage 'train' failed"):
        runner.reproduce(failing, failing, (), {})  # type: ignore[arg-type]
    assert failing.flushes == 1  # the stages that ran before it still get their lock entries


def test_worker_trials_comes_from_the_environment_and_a_bad_value_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(pool.TRIALS_ENV, raising=False)
    assert pool.WorkerPool(Path(), 1).max_trials == pool.DEFAULT_TRIALS
    monkeypatch.setenv(pool.TRIALS_ENV, "100")
    assert pool.WorkerPool(Path(), 1).max_trials == 100
    for bad in ("0", "ten", "-3"):
        monkeypatch.setenv(pool.TRIALS_ENV, bad)
        with pytest.raises(ExperimentError, match=r"whole number >= 1.*or unset it"):
            pool.WorkerPool(Path(), 1)


def _sleeper(cwd: Path) -> subprocess.Popen[bytes]:
    """A process working in ``cwd`` in a session of its own: as a stage left behind when
    both its worker and ``nntune run`` were killed."""
    return subprocess.Popen(["sleep", "60"], cwd=cwd, start_new_session=True)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_stage_left_in_a_worktree_is_ended_before_the_next_worker_uses_it(
    tmp_path: Path,
) -> None:
    from nntune.executor.worktrees import ensure_worktree, worktree_dir

    root = tmp_path / "project"
    root.mkdir()
    for args in (["init", "--quiet"], ["commit", "--quiet", "--allow-empty", "-m", "base"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    worktree = ensure_worktree(root, 1, tmp_path / "cache")
    assert worktree == worktree_dir(root.resolve(), 1)
    (worktree / "models").mkdir()
    stray, bystander = _sleeper(worktree / "models"), _sleeper(tmp_path)
    try:
        assert ensure_worktree(root, 1, tmp_path / "cache") == worktree  # the next worker's
        assert stray.wait(timeout=10) == -9
        assert bystander.poll() is None  # working elsewhere: not touched
    finally:
        for proc in (stray, bystander):
            proc.kill()
            proc.wait()


@pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")
def test_lean_bookkeeping_parses_each_yaml_text_once_takes_no_stage_locks_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a worker's own worktree, reproduce parses each distinct YAML text once (DVC parses
    dvc.yaml, dvc.lock and params.yaml again for every stage) and edits no stage lock file;
    the dvc.lock and outputs are still `dvc repro`'s, and DVC's functions come back after."""
    import dvc.rwlock
    import dvc.utils.strictyaml
    from dvc.repo import Repo
    from dvc.utils.serialize import _yaml

    from nntune.experiments import dvc_internals

    ours, theirs = _ours_and_theirs(tmp_path, "n: 3\nfixed: 0\n")

    parsed: list[str] = []
    parse = _yaml.parse_yaml

    def counted(text: str, path: str, typ: str = "safe") -> object:
        if typ == "safe":
            parsed.append(text)
        return parse(text, path, typ=typ)

    edits: list[str] = []
    edit = dvc.rwlock._edit_rwlock

    def edit_counted(*args: object, **kwargs: object) -> object:
        edits.append(str(args[0]))
        return edit(*args, **kwargs)

    monkeypatch.setattr(_yaml, "parse_yaml", counted)
    monkeypatch.setattr(dvc.utils.strictyaml, "parse_yaml", counted)
    monkeypatch.setattr(dvc.rwlock, "_edit_rwlock", edit_counted)
    dvc_internals._PARSED.clear()
    rwlock = dvc.rwlock.rwlock
    monkeypatch.chdir(ours)
    with dvc_internals.lean_bookkeeping(), Repo(str(ours)) as dvc_repo:
        repro = dvc_internals.DeferredLockRepro()
        ran = dvc_repo.reproduce(repro_fn=repro)
        repro.flush()
        first = _yaml.parse_yaml("a: {b: [1]}\n", "x.yaml")
        first["a"]["b"].append(2)  # a caller changing what it got changes no later parse
        assert _yaml.parse_yaml("a: {b: [1]}\n", "x.yaml") == {"a": {"b": [1]}}
    assert [stage.name for stage in ran] == ["a", "b", "c"]
    assert (ours / "dvc.lock").read_text() == (theirs / "dvc.lock").read_text()
    assert (ours / "c.txt").read_text() == "n: 3\n"
    assert not edits  # no stage lock taken in the worktree
    assert len(parsed) == len(set(parsed)) >= 3  # dvc.yaml, dvc.lock, params.yaml: once each
    assert dvc.rwlock.rwlock is rwlock
    assert _yaml.parse_yaml is counted and dvc.utils.strictyaml.parse_yaml is counted

    parsed.clear()
    with Repo(str(ours)) as dvc_repo:  # outside: DVC's own locks and parses again
        assert dvc_repo.status() == {}
    assert edits and len(parsed) > len(set(parsed))


def test_a_watcher_waiting_for_news_wakes_when_a_trial_is_recorded(tmp_path: Path) -> None:
    """`nntune run`'s view and the study driver wait between looks; a trial's record ends
    the wait (the driver queues the next trial then, not at its next look), and so does
    Ctrl-C; without either the wait lasts its time."""
    import threading

    workers = pool.WorkerPool(tmp_path, 1)
    stop = threading.Event()
    workers.wait_for_news(stop, 0.0)  # a watcher's first look is news: the state is new
    started = time.monotonic()
    assert workers.wait_for_news(stop, 0.3) is False  # nothing happened: the whole wait
    assert time.monotonic() - started >= 0.3
    record = records.EntryRecord("t1", "a" * 40, "b" * 40, True)
    timer = threading.Timer(0.3, record.write, args=(tmp_path,))
    timer.start()
    started = time.monotonic()
    assert workers.wait_for_news(stop, 60.0) is False
    assert time.monotonic() - started < 30.0  # woken by the record, long before 60 s
    assert records.read_record(tmp_path, "a" * 40) is not None
    timer.join()
    # A second record in the folder that exists now, and one that lands between two waits
    # (after the watcher last looked at the state): each ends the wait that follows it.
    second = records.EntryRecord("t2", "c" * 40, "b" * 40, True)
    threading.Timer(0.3, second.write, args=(tmp_path,)).start()
    assert workers.wait_for_news(stop, 60.0) is False
    assert records.read_record(tmp_path, "c" * 40) is not None
    records.EntryRecord("t3", "d" * 40, "b" * 40, True).write(tmp_path)
    started = time.monotonic()
    assert workers.wait_for_news(stop, 60.0) is False
    assert time.monotonic() - started < 30.0
    threading.Timer(0.3, stop.set).start()
    assert workers.wait_for_news(stop, 60.0) is True


def test_an_entry_with_its_record_is_not_pending_while_it_leaves_dvcs_queue(
    tmp_path: Path,
) -> None:
    """A worker writes an entry's record, then takes it off DVC's queue and lets go of its
    claim: in between the entry has ended (the watcher woken by the record must not wait
    for the next look to see the queue drained)."""
    from nntune.experiments.repo import open_repo

    _chain_project(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "--queue", "-S", "n=2", "-n", "t1", "-q"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    with open_repo(tmp_path) as repo:
        (entry,) = list(repo.experiments.celery_queue.iter_queued())
        assert pool.executor_state(repo).queued == ["t1"]
        records.EntryRecord("t1", entry.stash_rev, entry.baseline_rev, True, "e" * 40).write(
            tmp_path
        )
        assert list(repo.experiments.celery_queue.iter_queued()) == [entry]  # still DVC's
        state = pool.executor_state(repo)
        assert (state.pending, state.running, state.queued) == (0, [], [])
        assert state.succeeded == {"t1": "e" * 40}


def test_queued_trials_keep_the_workspace_and_share_one_index_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nntune grid`` queues its entries in batches under one repository lock, as DVC queues
    a sweep: each entry still gets the workspace's uncommitted change and its own override,
    the workspace is left as it was, and DVC builds its index once per batch."""
    from dataclasses import dataclass

    from dvc.repo.index import Index
    from project import scaffold

    from nntune.experiments import queue

    @dataclass
    class Point:
        name: str
        overrides: dict[str, object]

    project = scaffold(tmp_path / "project")
    monkeypatch.chdir(project)  # as `nntune grid` runs
    params = project / "params.yaml"
    edited = params.read_text().replace("  seed: 42", "  seed: 7")
    assert edited != params.read_text()
    params.write_text(edited)  # uncommitted: every queued entry must carry it
    builds = []
    original = Index.from_repo.__func__  # type: ignore[attr-defined]

    def counted(cls: type, *args: object, **kwargs: object) -> object:
        builds.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Index, "from_repo", classmethod(counted))
    trials = [Point(f"q{i}", {"model.units": 20 + i}) for i in range(queue.QUEUE_BATCH + 2)]
    assert queue.queue_trials(project, trials) == [t.name for t in trials]
    assert len(builds) <= 2 * 2, builds  # two batches; one entry at a time built 2 each
    assert params.read_text() == edited
    with queue.open_repo(project) as repo:
        queued = dict(queue.queued_trials(repo))
    assert queued == {
        t.name: [f"model.units={20 + i}", "runtime.seed=7"] for i, t in enumerate(trials)
    }


def test_records_being_written_or_removed_while_listed_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher lists the records while workers write them (a hidden temporary file, then
    a rename) and retries remove them: neither may stop it (it ended `nntune search`)."""
    records.EntryRecord("t1", "a" * 40, "b" * 40, True).write(tmp_path)
    folder = records.record_path(tmp_path, "a" * 40).parent
    whole = records.record_path(tmp_path, "a" * 40).read_text().replace('"t1"', '"t2"')
    (folder / f".{'c' * 40}.x1y2.tmp.json").write_text(whole)  # written, not yet renamed
    gone = folder / f"{'d' * 40}.json"  # listed, then removed before its stat
    listed = [*folder.glob("*.json"), gone]
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed))
    assert [r.name for r in records.read_records(tmp_path)] == ["t1"]
